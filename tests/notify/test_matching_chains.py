"""A chain in Subscription criteria only looks into what the subscriber may read.

A resource matches a Subscription exactly when a search with its criteria, by the
Subscription's owner, would return it; a search narrows a chain to the targets the
caller may read, so matching narrows it to those the owner may read.
"""

from __future__ import annotations

from pathlib import Path

from hub.access.apps import Snapshot, load_registry
from hub.access.matrix import load_matrix
from hub.access.policy import subscriber_origins
from hub.fhir.extract import extract
from hub.fhir.match import OriginsOf, matches
from hub.fhir.query import parse_criteria
from tests.fhir.corpus import instantiates, publisher, resource, targets_of
from tests.support.https_receiver import HttpsReceiver, LocalCA
from tests.support.hub import MATRIX, AppKeys, write_apps_file
from tests.support.subscriptions import (
    activity,
    correlation_ids,
    create,
    drained,
    notifying_hub,
    subscribe,
    task,
)


def snapshot(tmp_path: Path, keys: dict[str, AppKeys]) -> Snapshot:
    """The shipped matrix and the test applications (module: eHealthModule, admin: Beheer)."""
    matrix = load_matrix(MATRIX)
    return Snapshot(matrix, load_registry(write_apps_file(tmp_path / "apps.yaml", keys), matrix))


def test_a_subscriber_s_chain_only_matches_targets_it_may_read(
    tmp_path: Path, app_keys: dict[str, AppKeys]
) -> None:
    access = snapshot(tmp_path, app_keys)

    def readable(subscriber: str) -> OriginsOf:
        return lambda rtype: subscriber_origins(access, "test", subscriber, rtype)

    targets = targets_of(
        [
            resource(
                "ActivityDefinition", "by-admin", "2024", "admin", extension=[publisher("pubA")]
            ),
            resource(
                "ActivityDefinition", "by-module", "2024", "module", extension=[publisher("pubB")]
            ),
        ]
    )
    task = resource(
        "Task", "t1", "2024-01-01T00:00:00Z", "portal",
        extension=[instantiates("ActivityDefinition/by-admin"),
                   instantiates("ActivityDefinition/by-module")],
    )  # fmt: skip

    def match(criteria: str, subscriber: str) -> bool:
        return matches(
            parse_criteria(criteria),
            task,
            extract(task),
            resolve=lambda t, i: targets.get((t, i)),
            readable=readable(subscriber),
        )

    # eHealthModule: ActivityDefinition R(OWN); Clientportaal: R(ALL); an app gone: nothing.
    assert subscriber_origins(access, "test", "module", "ActivityDefinition") == frozenset(
        {"module"}
    )
    assert subscriber_origins(access, "test", "portal", "ActivityDefinition") is None
    assert subscriber_origins(access, "test", "gone", "ActivityDefinition") == frozenset()
    assert subscriber_origins(access, "test", "module", "Device") == frozenset()

    assert not match("Task?instantiates.publisherId=pubA", "module")
    assert match("Task?instantiates.publisherId=pubB", "module")
    assert match("Task?instantiates.publisherId=pubA,pubB", "module")
    assert match("Task?instantiates.publisherId=pubA", "portal")
    assert not match("Task?instantiates.publisherId=pubA", "gone")
    assert not match("Task?instantiates.publisherId=pubB", "gone")


async def test_a_chained_subscription_hears_nothing_of_targets_its_owner_may_not_read(
    tmp_path: Path, database_url: str, app_keys: dict[str, AppKeys], local_ca: LocalCA
) -> None:
    with (
        notifying_hub(tmp_path, database_url, app_keys, local_ca) as hub,
        HttpsReceiver(local_ca) as module_hidden,
        HttpsReceiver(local_ca) as module_own,
        HttpsReceiver(local_ca) as portal_hidden,
    ):
        async with (
            hub.client("admin") as admin,
            hub.client("module") as module,
            hub.client("portal") as portal,
        ):
            # The module may read its own ActivityDefinitions only, the portal all of them;
            # both may read the portal's Tasks.
            hidden = (await create(admin, activity("hidden-pub"))).json()["id"]
            own = (await create(module, activity("own-pub"))).json()["id"]
            assert (await module.get(f"/ActivityDefinition/{hidden}")).status_code == 403
            await subscribe(module, "Task?instantiates.publisherId=hidden-pub", module_hidden.url())
            await subscribe(module, "Task?instantiates.publisherId=own-pub", module_own.url())
            await subscribe(portal, "Task?instantiates.publisherId=hidden-pub", portal_hidden.url())

            await create(portal, task(hidden), trace="to-hidden")
            # A later write the module does hear of: its silence before is meaningful.
            await create(portal, task(own), trace="to-own")
            await drained(hub.settings.database_url)
            # The search the module would run when notified agrees.
            searched = await module.get("/Task", params={"instantiates.publisherId": "hidden-pub"})

    assert correlation_ids(module_hidden.requests) == []
    assert correlation_ids(module_own.requests) == ["to-own-w"]
    assert correlation_ids(portal_hidden.requests) == ["to-hidden-w"]
    assert searched.json()["total"] == 0
