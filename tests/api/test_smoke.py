from __future__ import annotations

from tests.support.hub import HubServer


async def test_create_then_read_a_patient(hub_server: HubServer) -> None:
    async with hub_server.client("xis") as xis:
        created = await xis.post("/Patient", json={"resourceType": "Patient", "gender": "female"})
        assert created.status_code == 201, created.text
        read = await xis.get(f"/Patient/{created.json()['id']}")
    assert read.status_code == 200
    assert read.json()["gender"] == "female"
    assert read.headers["etag"] == 'W/"1"'
