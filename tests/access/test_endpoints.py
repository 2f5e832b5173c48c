"""Authentication over HTTP against the real hub: the token endpoint and bearer tokens.

The token endpoint refuses every flawed client assertion with an RFC 6749 §5.2
error that says nothing about the flaw; the FHIR API refuses every token the hub
did not issue, for this domain, still valid, with 401 and a Bearer challenge.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from hub.access.assertion import CLIENT_ASSERTION_TYPE
from hub.access.keys import SigningKeys
from hub.access.tokens import (
    BAD_SIGNATURE,
    EXPIRED,
    MALFORMED,
    NOT_FOR_THIS_DOMAIN,
    issue_access_token,
)
from tests.support.hub import AppKeys, HubServer, hub_settings, running_hub, write_apps_file

# One hub per backend for the module (`module_hub`): keep the module on one xdist worker.
pytestmark = pytest.mark.xdist_group("test_endpoints")

PATIENT = {"resourceType": "Patient", "gender": "female"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: dict[str, Any]) -> str:
    return b64(json.dumps(value).encode())


def claims_for(hub: HubServer, client_id: str = "xis", **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": client_id,
        "sub": client_id,
        "aud": hub.token_url(),
        "iat": now,
        "exp": now + 60,
        "jti": str(uuid.uuid4()),
    }
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not None}


def signed(hub: HubServer, claims: dict[str, Any], *, key_of: str = "xis", **header: Any) -> str:
    """An RS512 assertion signed with `key_of`'s private key; header `kid` defaults to its own."""
    keys = hub.keys[key_of]
    fields = {"alg": "RS512", "kid": keys.kid, **header}
    fields = {name: value for name, value in fields.items() if value is not None}
    return jwt.encode(fields, claims, RSAKey.import_key(keys.private_pem), algorithms=["RS512"])


def alg_none(hub: HubServer) -> str:
    return f"{segment({'alg': 'none', 'kid': 'xis-1'})}.{segment(claims_for(hub))}."


def hs256_with_public_key(hub: HubServer) -> str:
    """The classic confusion attack: HMAC keyed with the app's PUBLIC key (which anyone has)."""
    public_pem = RSAKey.import_key(hub.keys["xis"].private_pem).as_pem(private=False)
    signing_input = f"{segment({'alg': 'HS256', 'kid': 'xis-1'})}.{segment(claims_for(hub))}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


@dataclass(frozen=True)
class Refusal:
    name: str
    assertion: Callable[[HubServer], str]


def now() -> int:
    return int(time.time())


BAD_ASSERTIONS = [
    Refusal("alg none", alg_none),
    Refusal("HS256 keyed with the public key", hs256_with_public_key),
    Refusal("unknown kid", lambda hub: signed(hub, claims_for(hub), kid="xis-2")),
    Refusal("no kid", lambda hub: signed(hub, claims_for(hub), kid=None)),
    Refusal("another app's kid", lambda hub: signed(hub, claims_for(hub), kid="module-1")),
    Refusal("another app's key",
            lambda hub: signed(hub, claims_for(hub), key_of="module", kid="xis-1")),
    Refusal("expired", lambda hub: signed(hub, claims_for(hub, iat=now() - 600, exp=now() - 120))),
    Refusal("exp too far ahead", lambda hub: signed(hub, claims_for(hub, exp=now() + 3600))),
    Refusal("no exp", lambda hub: signed(hub, claims_for(hub, exp=None))),
    Refusal("iat in the future", lambda hub: signed(hub, claims_for(hub, iat=now() + 600))),
    Refusal("aud of another domain",
            lambda hub: signed(hub, claims_for(hub, aud=hub.token_url("other")))),
    Refusal("aud the FHIR base", lambda hub: signed(hub, claims_for(hub, aud=hub.fhir()))),
    Refusal("unknown client", lambda hub: signed(hub, claims_for(hub, "nobody"))),
    Refusal("iss is not sub", lambda hub: signed(hub, claims_for(hub, sub="module"))),
    Refusal("no sub", lambda hub: signed(hub, claims_for(hub, sub=None))),
    Refusal("no jti", lambda hub: signed(hub, claims_for(hub, jti=None))),
    Refusal(
        "a client of another domain",
        lambda hub: signed(hub, claims_for(hub, "other-xis"), key_of="other-xis"),
    ),
    Refusal("not a JWT", lambda _hub: "not.a.jwt"),
    Refusal(
        "tampered claims",
        lambda hub: ".".join(
            [(parts := signed(hub, claims_for(hub)).split("."))[0],
             segment(claims_for(hub, "module")), parts[2]]
        ),
    ),
]  # fmt: skip


def form(assertion: str, **changes: str | None) -> dict[str, str]:
    fields: dict[str, str | None] = {
        "grant_type": "client_credentials",
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_assertion": assertion,
        **changes,
    }
    return {name: value for name, value in fields.items() if value is not None}


def assert_oauth_error(
    response: httpx.Response, error: str, status: int | None = None
) -> dict[str, str]:
    """An RFC 6749 §5.2 error response: JSON with `error`, never cached.

    Unless `status` says otherwise: a failed client authentication is 401, others 400.
    """
    expected = status or (401 if error == "invalid_client" else 400)
    assert response.status_code == expected, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    body: dict[str, str] = response.json()
    assert body["error"] == error
    assert set(body) <= {"error", "error_description", "error_uri"}
    return body


async def test_token_endpoint_refuses_bad_assertions(module_hub: HubServer) -> None:
    refusals: dict[str, bytes] = {}
    async with httpx.AsyncClient() as client:
        for refusal in BAD_ASSERTIONS:
            response = await client.post(
                module_hub.token_url(), data=form(refusal.assertion(module_hub))
            )
            assert_oauth_error(response, "invalid_client")
            refusals[refusal.name] = response.content
        # The control: the same construction, without the flaw, gets a token.
        good = await client.post(
            module_hub.token_url(), data=form(signed(module_hub, claims_for(module_hub)))
        )
    assert good.status_code == 200, good.text
    # One answer for every flaw: an attacker learns nothing about which check failed.
    assert len(set(refusals.values())) == 1, refusals
    description = json.loads(next(iter(refusals.values())))["error_description"]
    assert description == "client authentication failed"


async def test_token_endpoint_refuses_a_replayed_assertion(module_hub: HubServer) -> None:
    assertion = signed(module_hub, claims_for(module_hub))
    jti = uuid.uuid4().hex
    async with httpx.AsyncClient() as client:
        first = await client.post(module_hub.token_url(), data=form(assertion))
        replayed = await client.post(module_hub.token_url(), data=form(assertion))
        # A new assertion reusing the jti is a replay too; another client may use it.
        one = signed(module_hub, claims_for(module_hub, jti=jti))
        same_jti = signed(module_hub, claims_for(module_hub, jti=jti))
        mine = await client.post(module_hub.token_url(), data=form(one))
        again = await client.post(module_hub.token_url(), data=form(same_jti))
        theirs = await client.post(
            module_hub.token_url(),
            data=form(
                signed(module_hub, claims_for(module_hub, "module", jti=jti), key_of="module")
            ),
        )
    assert first.status_code == 200
    assert_oauth_error(replayed, "invalid_client")
    assert mine.status_code == 200
    assert_oauth_error(again, "invalid_client")
    assert theirs.status_code == 200


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"grant_type": "password"}, "unsupported_grant_type"),
        ({"grant_type": "authorization_code"}, "unsupported_grant_type"),
        ({"grant_type": None}, "invalid_request"),
        ({"client_assertion": None}, "invalid_request"),
        ({"client_assertion": ""}, "invalid_request"),
        ({"client_assertion_type": None}, "invalid_request"),
        ({"client_assertion_type": "urn:example:saml"}, "invalid_request"),
        ({"client_id": "module"}, "invalid_client"),
        ({"scope": "system/Device.rs"}, "invalid_scope"),
        ({"scope": "patient/*.read"}, "invalid_scope"),
    ],
)
async def test_token_request_errors(
    module_hub: HubServer, changes: dict[str, str | None], error: str
) -> None:
    data = form(signed(module_hub, claims_for(module_hub)), **changes)
    async with httpx.AsyncClient() as client:
        response = await client.post(module_hub.token_url(), data=data)
    body = assert_oauth_error(response, error)
    assert "xis" not in body.get("error_description", "")


async def test_token_request_shape(module_hub: HubServer) -> None:
    async with httpx.AsyncClient() as client:
        as_json = await client.post(
            module_hub.token_url(), json=form(signed(module_hub, claims_for(module_hub)))
        )
        unknown_domain = await client.post(
            f"{module_hub.url}/elsewhere/oauth2/token",
            data=form(signed(module_hub, claims_for(module_hub))),
        )
        extra_fields = await client.post(
            module_hub.token_url(),
            data=form(signed(module_hub, claims_for(module_hub)), client_id="xis", state="x"),
        )
    assert_oauth_error(as_json, "invalid_request")
    assert unknown_domain.status_code == 404
    assert unknown_domain.json()["error"] == "invalid_request"
    assert extra_fields.status_code == 200
    body = extra_fields.json()
    assert extra_fields.headers["cache-control"] == "no-store"
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == module_hub.settings.access_token_lifetime
    assert "system/Patient.crus?resource-origin=Device/xis" in body["scope"].split()


async def test_a_narrower_scope_limits_the_token(module_hub: HubServer) -> None:
    data = form(signed(module_hub, claims_for(module_hub)), scope="system/Patient.rs")
    async with httpx.AsyncClient() as client:
        response = await client.post(module_hub.token_url(), data=data)
    assert response.status_code == 200, response.text
    # The request's letters, the role's origin narrowing.
    assert response.json()["scope"] == "system/Patient.rs?resource-origin=Device/xis"
    headers = {"Authorization": f"Bearer {response.json()['access_token']}"}
    async with module_hub.client("xis") as full, module_hub.client(headers=headers) as narrow:
        created = (await full.post("/Patient", json=PATIENT)).json()
        assert (await narrow.get(f"/Patient/{created['id']}")).status_code == 200
        assert (await narrow.post("/Patient", json=PATIENT)).status_code == 403
        assert (await narrow.get("/Practitioner")).status_code == 403


def _hub_token(hub: HubServer, *, audience: str, lifetime: int, now: datetime) -> str:
    """An access token signed with the running hub's own key, as its token endpoint would."""
    key = SigningKeys.load_or_create(hub.settings).current_key()
    token, _ = issue_access_token(
        key=key,
        issuer=f"{hub.url}/test/oauth2",
        audience=audience,
        client_id="xis",
        scopes="system/Patient.crus?resource-origin=Device/xis",
        lifetime=lifetime,
        now=now,
    )
    return token


async def test_fhir_api_refuses_bad_tokens(module_hub: HubServer) -> None:
    real = module_hub.token("xis")
    header, payload, signature = real.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    moment = datetime.now(UTC)
    tokens = {
        "tampered claims": f"{header}.{segment({**claims, 'azp': 'admin'})}.{signature}",
        "tampered signature": f"{header}.{payload}.{flipped}",
        "no signature": f"{header}.{payload}.",
        "alg none": f"{segment({'alg': 'none'})}.{payload}.",
        "expired": _hub_token(
            module_hub, audience=module_hub.fhir(), lifetime=60, now=moment - timedelta(hours=1)
        ),
        "of domain test on other": module_hub.token("xis"),
        "signed by an app": signed(module_hub, claims, kid=json.loads(
            base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"]),
        "not a JWT": "not-a-jwt",
    }  # fmt: skip
    # RFC 6750 §3: the challenge says why, in one of a few fixed texts (never the detail).
    expected = {
        "tampered claims": BAD_SIGNATURE,
        "tampered signature": BAD_SIGNATURE,
        "no signature": BAD_SIGNATURE,
        "alg none": BAD_SIGNATURE,
        "expired": EXPIRED,
        "of domain test on other": NOT_FOR_THIS_DOMAIN,
        "signed by an app": BAD_SIGNATURE,
        "not a JWT": MALFORMED,
    }
    answers: dict[str, httpx.Response] = {}
    async with httpx.AsyncClient() as client:
        for name, token in tokens.items():
            domain = "other" if name == "of domain test on other" else "test"
            answers[name] = await client.get(
                f"{module_hub.fhir(domain)}/Patient", headers={"Authorization": f"Bearer {token}"}
            )
        # The controls: the hub's own fresh token works, as does one minted like the expired one.
        controls = [
            await client.get(
                f"{module_hub.fhir()}/Patient", headers={"Authorization": f"Bearer {token}"}
            )
            for token in (
                real,
                _hub_token(module_hub, audience=module_hub.fhir(), lifetime=60, now=moment),
            )
        ]
        other_domain = await client.get(
            f"{module_hub.fhir()}/Patient",
            headers={"Authorization": f"Bearer {module_hub.token('other-xis', 'other')}"},
        )
    for name, response in answers.items():
        assert response.status_code == 401, name
        assert response.headers["www-authenticate"] == (
            f'Bearer realm="koppeltaal", error="invalid_token", '
            f'error_description="{expected[name]}"'
        ), name
        [issue] = response.json()["issue"]
        assert issue["code"] == "login", name
        assert issue["diagnostics"].endswith(expected[name]), name
    # Nothing more than the category: no claim, key id or audience leaks into the answer.
    assert len({response.content for response in answers.values()}) == len(set(expected.values()))
    assert [response.status_code for response in controls] == [200, 200]
    assert other_domain.status_code == 401


async def test_a_key_rotated_by_another_process_is_used_and_accepted_at_once(
    tmp_path: Path, database_url: str, app_keys: dict[str, AppKeys]
) -> None:
    apps_file = write_apps_file(tmp_path / "apps.yaml", app_keys)
    # Housekeeping (which also re-reads the keys) out of the way: only the request path
    # can notice the rotation here.
    settings = hub_settings(tmp_path, database_url, apps_file, housekeeping_seconds=3600)
    with running_hub(settings, app_keys) as hub:
        before = hub.token("xis")
        # Another hub process (or `hub keys rotate`) makes the next key in the shared dir.
        rotated = SigningKeys.load_or_create(hub.settings).rotate()
        minted_elsewhere = _hub_token(hub, audience=hub.fhir(), lifetime=60, now=datetime.now(UTC))
        async with httpx.AsyncClient() as client:
            issued = await client.post(hub.token_url(), data=hub.token_form("xis", "test"))
            answers = [
                await client.get(f"{hub.fhir()}/Patient", headers={"Authorization": f"Bearer {t}"})
                for t in (minted_elsewhere, before)
            ]
    assert issued.status_code == 200, issued.text
    for token in (issued.json()["access_token"], minted_elsewhere):
        assert jwt.decode(token, rotated.key, algorithms=["RS512"]).header["kid"] == rotated.kid
    assert [answer.status_code for answer in answers] == [200, 200]


async def test_token_endpoint_limits_the_body(
    tmp_path: Path, database_url: str, app_keys: dict[str, AppKeys]
) -> None:
    """The token endpoint takes no token: it must not read an unbounded body either."""
    apps_file = write_apps_file(tmp_path / "apps.yaml", app_keys)
    settings = hub_settings(tmp_path, database_url, apps_file, max_body_bytes=4096)
    with running_hub(settings, app_keys) as hub:
        data = form(signed(hub, claims_for(hub)))
        async with httpx.AsyncClient() as client:
            padded = await client.post(hub.token_url(), data={**data, "padding": "x" * 8192})

            async def chunks() -> AsyncIterator[bytes]:
                # No Content-Length: the hub must count while it reads.
                for _ in range(16):
                    yield b"padding=" + b"x" * 512 + b"&"
                yield urlencode(data).encode()

            streamed = await client.post(
                hub.token_url(),
                content=chunks(),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            # RFC 6749 §3.2: a parameter sent twice is an invalid request.
            doubled = await client.post(
                hub.token_url(),
                content=f"{urlencode(data)}&grant_type=client_credentials".encode(),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            accepted = await client.post(hub.token_url(), data=data)
    assert_oauth_error(padded, "invalid_request", 413)
    assert_oauth_error(streamed, "invalid_request", 413)
    assert_oauth_error(doubled, "invalid_request")
    assert accepted.status_code == 200, accepted.text
