"""`hub keys new`, `hub token`, `hub worker` and `hub mail test`, run as commands.

The backend does not matter to these commands, so one hub on SQLite serves.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from examples.mailcatcher import MailCatcher
from tests.api.common import origin_of
from tests.support.hub import MATRIX, AppKeys, hub_settings, running_hub, write_apps_file

HUB = Path(sys.executable).with_name("hub")


def run(*args: str, public_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    if public_url is not None:
        env["HUB_PUBLIC_URL"] = public_url
    return subprocess.run(
        [str(HUB), *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


async def test_keys_new_then_token(
    tmp_path: Path, sqlite_template: Path, app_keys: dict[str, AppKeys]
) -> None:
    keys_dir = tmp_path / "app-keys"
    made = run("keys", "new", "--client-id", "cli-app", "--out", str(keys_dir))
    assert made.returncode == 0, made.stderr
    pem, jwks_file = keys_dir / "cli-app.pem", keys_dir / "cli-app.jwks.json"
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    jwks = json.loads(jwks_file.read_text())
    [key] = jwks["keys"]
    assert key["kid"] == "cli-app-1"
    assert key["kty"] == "RSA"
    assert "d" not in key
    # A second run never overwrites a private key.
    before = pem.read_bytes()
    again = run("keys", "new", "--client-id", "cli-app", "--out", str(keys_dir))
    assert again.returncode != 0
    assert pem.read_bytes() == before

    database = tmp_path / "hub.db"
    shutil.copyfile(sqlite_template, database)
    keys = {**app_keys, "cli-app": AppKeys("cli-app", "cli-app-1", pem.read_bytes(), jwks)}
    apps_file = write_apps_file(
        tmp_path / "apps.yaml", keys, roles={"cli-app": "Zorgondersteuning"}
    )
    settings = hub_settings(tmp_path, f"sqlite+aiosqlite:///{database}", apps_file)
    with running_hub(settings, keys) as hub:
        common = ("token", "--domain", "test", "--client-id", "cli-app", "--key", str(pem))
        plain = run(*common, public_url=hub.url)
        full = run(*common, "--json", "--scope", "system/Patient.rs", public_url=hub.url)
        explicit_url = run(*common, "--token-url", hub.token_url())
        # Signed with another app's key: the hub refuses, the command says so and fails.
        other_pem = tmp_path / "xis.pem"
        other_pem.write_bytes(app_keys["xis"].private_pem)
        refused = run(
            "token", "--domain", "test", "--client-id", "cli-app", "--key", str(other_pem),
            public_url=hub.url,
        )  # fmt: skip
        assert plain.returncode == 0, plain.stderr
        token = plain.stdout.strip()
        async with hub.client(headers={"Authorization": f"Bearer {token}"}) as client:
            created = await client.post("/Patient", json={"resourceType": "Patient"})
    assert created.status_code == 201, created.text
    assert origin_of(created.json()) == "cli-app"
    assert full.returncode == 0, full.stderr
    response = json.loads(full.stdout)
    assert response["token_type"] == "Bearer"
    assert response["scope"] == "system/Patient.rs?resource-origin=Device/cli-app"
    assert explicit_url.returncode == 0, explicit_url.stderr
    assert explicit_url.stdout.count(".") == 2  # a compact JWT
    assert refused.returncode == 1
    assert json.loads(refused.stderr)["error"] == "invalid_client"
    assert refused.stdout == ""


def test_hub_serve_refuses_the_worker_role_and_an_unknown_one() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    worker = subprocess.run(
        [str(HUB), "serve"], capture_output=True, text=True, timeout=60, check=False,
        env={**env, "HUB_ROLE": "worker"},
    )  # fmt: skip
    assert worker.returncode == 2
    assert "run `hub worker`" in worker.stderr
    unknown = subprocess.run(
        [str(HUB), "serve"], capture_output=True, text=True, timeout=60, check=False,
        env={**env, "HUB_ROLE": "delivery"},
    )  # fmt: skip
    assert unknown.returncode == 2
    assert "HUB_ROLE" in unknown.stderr
    flag = run("serve", "--role", "worker")
    assert flag.returncode == 2
    assert "invalid choice" in flag.stderr


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_hub_worker_starts_from_its_flags_and_stops_cleanly(
    tmp_path: Path, sqlite_template: Path, app_keys: dict[str, AppKeys], stop: signal.Signals
) -> None:
    database = tmp_path / "hub.db"
    shutil.copyfile(sqlite_template, database)
    apps_file = write_apps_file(tmp_path / "apps.yaml", app_keys)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    env |= {"HUB_KEYS_DIR": str(tmp_path / "keys"), "HUB_AUTHZ_MATRIX": str(MATRIX)}
    log = tmp_path / "worker.log"
    with log.open("wb") as output:
        worker = subprocess.Popen(
            [
                str(HUB), "worker",
                "--database-url", f"sqlite+aiosqlite:///{database}",
                "--apps", str(apps_file),
            ],
            env=env, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "worker ready" not in log.read_text():
            assert worker.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        # Its Devices are there (it ran the start-up), its wake-up socket is bound.
        [socket_file] = (tmp_path / "hub.db.wake").iterdir()
        assert socket_file.name.startswith(f"{worker.pid}-")
        worker.send_signal(stop)
        assert worker.wait(30) == 0, log.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
    output_text = log.read_text()
    assert output_text.count("worker ready") == 1
    assert "worker stopped" in output_text
    assert "Traceback" not in output_text
    assert not (tmp_path / "hub.db.wake").exists()  # its socket, and the directory it was alone in


# -- hub mail test ---------------------------------------------------------------------


def mail_test(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    return subprocess.run(
        [str(HUB), "mail", "test", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **env},
        check=False,
    )


def test_hub_mail_test_sends_through_starttls_with_a_login(tmp_path: Path) -> None:
    authority = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_tls)
    bundle = tmp_path / "mail-ca.pem"
    authority.cert_pem.write_to_path(str(bundle))

    def authenticator(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        return AuthResult(success=(data.login, data.password) == (b"ops", b"pw"), handled=False)

    with MailCatcher(
        tls_context=server_tls, require_starttls=True, authenticator=authenticator
    ) as catcher:
        url = f"smtp://ops:pw@127.0.0.1:{catcher.port}?starttls=true"
        sent = mail_test(
            "--to",
            "operator@example.nl",
            HUB_SMTP_URL=url,
            HUB_CA_BUNDLE=str(bundle),
            HUB_SMTP_FROM="Hub <hub@example.nl>",
        )
        [mail] = catcher.wait_for(1, timeout=10)
        # Without the CA the server's certificate is not trusted: nothing is sent.
        untrusted = mail_test("--to", "operator@example.nl", HUB_SMTP_URL=url)
        refused = mail_test(
            "--to",
            "operator@example.nl",
            "--smtp-url",
            url.replace(":pw@", ":wrong@"),
            HUB_CA_BUNDLE=str(bundle),
        )
        assert len(catcher.messages) == 1

    assert sent.returncode == 0, sent.stderr
    assert (
        sent.stdout.strip()
        == "sent a test mail to operator@example.nl (From: Hub <hub@example.nl>)"
    )
    assert mail.recipients == ("operator@example.nl",)
    assert mail.message["From"] == "Hub <hub@example.nl>"
    assert mail.message["Subject"] == "Testbericht / Test message (Koppeltaal Hub)"
    assert "e-mail to patients arrives" in mail.text
    for failed, reason in ((untrusted, "CERTIFICATE_VERIFY_FAILED"), (refused, "535")):
        assert failed.returncode == 1
        [line] = failed.stderr.splitlines()
        assert line.startswith("hub: the test mail was not sent: ")
        assert reason in line
        assert ":pw@" not in line and "wrong" not in line


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("--to", "a@example.nl"), {}, "hub: e-mail is off: set HUB_SMTP_URL"),
        (("--to", "not an address"), {"HUB_SMTP_URL": "smtp://127.0.0.1:1"}, "e-mail address"),
        (
            ("--to", "a@example.nl", "--smtp-url", "smtp://u:hunter2@h?starttls=maybe"),
            {},
            "HUB_SMTP_URL",
        ),
    ],
)
def test_hub_mail_test_refuses_what_it_cannot_use(
    args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    result = mail_test(*args, **env)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert message in line
    assert "hunter2" not in line


def test_hub_mail_test_says_when_the_server_is_down() -> None:
    with socket.socket() as reserved:  # bound, never listening: connections are refused
        reserved.bind(("127.0.0.1", 0))
        port = reserved.getsockname()[1]
        result = mail_test(
            "--to", "a@example.nl", HUB_SMTP_URL=f"submission://u:hunter2@127.0.0.1:{port}"
        )
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert f"could not send mail via smtp://127.0.0.1:{port}?starttls=true" in line
    assert "hunter2" not in line
