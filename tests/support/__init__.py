"""Test helpers shared by test modules (real servers, certificates)."""

import pytest

# The helpers are also pytest plugins (`pytest_plugins = [...]`); registering them
# for assertion rewriting before they are imported lets both uses coexist.
pytest.register_assert_rewrite("tests.support.https_receiver")
