"""``/v1/banks`` through FastAPI's test client on a real SQLite store (no Ray): the API's
codes and statuses, import/export round trips, and who may call it when API keys are on."""

from __future__ import annotations

import asyncio
import secrets
from functools import partial

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from banks.store import BankStore
from deployments.auth import ApiKeyGate, Gatekeeper, hash_key
from deployments.bank_routes import router
from deployments.responses import install_error_handlers
from deployments.settings import ApiKey, AuthSettings


def hexes(n: int) -> list[str]:
    return [secrets.token_hex(32) for _ in range(n)]


def build(tmp_path, auth: AuthSettings = AuthSettings()) -> TestClient:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(ApiKeyGate)
    app.include_router(router)
    app.state.gatekeeper = Gatekeeper(auth)
    app.state.banks = partial(BankStore, f"sqlite:///{tmp_path}/banks.db")  # as the ingress: opened on first use
    app.state.banks_opening = asyncio.Lock()
    return TestClient(app)


@pytest.fixture
def api(tmp_path):
    with build(tmp_path) as client:
        yield client


def code(response) -> str:
    return response.json()["error"]["code"]


def test_banks_are_created_listed_updated_and_deleted(api):
    created = api.post("/v1/banks", json={"name": "removed-before", "action": "block", "description": "takedowns"})
    assert created.status_code == 201 and created.json()["entries"] == 0
    again = api.post("/v1/banks", json={"name": "removed-before", "action": "review"})
    assert again.status_code == 409 and code(again) == "bank_exists"
    for bad in ({"name": "Bad Name", "action": "block"}, {"name": "ok", "action": "delete"}, {"name": "ok"}):
        response = api.post("/v1/banks", json=bad)
        assert response.status_code == 400 and code(response) == "invalid_request", bad
    assert api.patch("/v1/banks/removed-before", json={"action": "review"}).json()["action"] == "review"
    assert [b["name"] for b in api.get("/v1/banks").json()["banks"]] == ["removed-before"]
    assert api.delete("/v1/banks/removed-before").status_code == 204
    missing = api.get("/v1/banks/removed-before")
    assert missing.status_code == 404 and code(missing) == "unknown_bank"
    assert code(api.post("/v1/banks/nope/entries", json={"entries": [{"hash": hexes(1)[0]}]})) == "unknown_bank"


def test_entries_are_added_all_or_nothing_paged_and_removed(api):
    api.post("/v1/banks", json={"name": "b", "action": "block"})
    values = hexes(5)
    body = {"entries": [{"hash": h, "entry_id": f"case-{i}"} for i, h in enumerate(values)]}
    assert api.post("/v1/banks/b/entries", json=body).json() == {"added": 5, "existing": 0}
    assert api.post("/v1/banks/b/entries", json=body).json() == {"added": 0, "existing": 5}
    bad = {"entries": [{"hash": hexes(1)[0]}, {"hash": "xyz"}]}
    response = api.post("/v1/banks/b/entries", json=bad)
    assert response.status_code == 400 and code(response) == "invalid_request"
    assert api.get("/v1/banks/b").json()["entries"] == 5  # the good one of the bad call was not written
    first = api.get("/v1/banks/b/entries", params={"limit": 3}).json()
    assert len(first["entries"]) == 3 and first["next_after"] == first["entries"][-1]["pk"]
    rest = api.get("/v1/banks/b/entries", params={"after": first["next_after"], "limit": 3}).json()
    assert len(rest["entries"]) == 2 and rest["next_after"] is None
    assert [e["hash"] for e in first["entries"] + rest["entries"]] == values
    removed = api.post("/v1/banks/b/entries/remove", json={
        "pks": [first["entries"][0]["pk"]], "entry_ids": ["case-1"], "hashes": [{"kind": "pdq", "hash": values[2]}]})
    assert removed.json() == {"removed": 3}
    assert api.get("/v1/banks/b").json()["entries"] == 2


def test_import_reads_threatexchange_style_files_and_export_reads_back(api):
    api.post("/v1/banks", json={"name": "shared", "action": "block"})
    values = hexes(4)
    tsv = "hash\tquality\tentry_id\n" + "".join(f"{h}\t100\tx{i}\n" for i, h in enumerate(values[:2]))
    csv = f"# a comment\n{values[2]},y2,a note\n{values[3]}\n"
    headers = {"Content-Type": "text/tab-separated-values"}
    assert api.post("/v1/banks/shared/import", content=tsv, headers=headers).json() == {"added": 2, "existing": 0}
    assert api.post("/v1/banks/shared/import", content=csv, headers={"Content-Type": "text/csv"}).json()["added"] == 2
    wrong = api.post("/v1/banks/shared/import", content=csv, headers={"Content-Type": "application/json"})
    assert wrong.status_code == 415 and code(wrong) == "unsupported_media_type"
    broken = api.post("/v1/banks/shared/import", content=f"{values[0]}\nnot-a-hash\n", headers=headers)
    assert broken.status_code == 400 and "line 2" in broken.json()["error"]["message"]
    exported = api.get("/v1/banks/shared/export")
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/tab-separated-values")
    lines = exported.text.splitlines()
    assert len(lines) == 5 and {line.split("\t")[1] for line in lines[1:]} == set(values)
    api.post("/v1/banks", json={"name": "copy", "action": "review"})
    assert api.post("/v1/banks/copy/import", content=exported.text, headers=headers).json()["added"] == 4
    copied = api.get("/v1/banks/copy/entries").json()["entries"]
    assert {(e["hash"], e["entry_id"]) for e in copied} == {
        (values[0], "x0"), (values[1], "x1"), (values[2], "y2"), (values[3], None)}


def test_only_admin_keys_manage_banks_when_keys_are_on(tmp_path):
    admin, reader = "mod_admin-key", "mod_reader-key"
    auth = AuthSettings(api_keys=(ApiKey(name="ops", sha256=hash_key(admin), admin=True),
                                  ApiKey(name="forum", sha256=hash_key(reader))))
    with build(tmp_path, auth) as api:
        assert code(api.get("/v1/banks")) == "unauthorized"
        refused = api.get("/v1/banks", headers={"Authorization": f"Bearer {reader}"})
        assert refused.status_code == 403 and code(refused) == "forbidden"
        allowed = api.post("/v1/banks", json={"name": "b", "action": "allow"},
                           headers={"Authorization": f"Bearer {admin}"})
        assert allowed.status_code == 201


def test_out_of_range_and_malformed_values_are_4xx_not_5xx(api):
    api.post("/v1/banks", json={"name": "b", "action": "block"})
    checks = [
        api.get("/v1/banks/b/entries", params={"after": 10**20}),
        api.post("/v1/banks/b/entries/remove", json={"pks": [10**20]}),
        api.post("/v1/banks/b/entries/remove", content='{"entry_ids": ["\\ud800"]}',
                 headers={"Content-Type": "application/json"}),
        api.post("/v1/banks/b/entries", content='{"entries": [{"hash": "%s", "note": "\\ud800"}]}' % ("a" * 64),
                 headers={"Content-Type": "application/json"}),
        api.post("/v1/banks/b/import", content=b"\xff\xfe not text", headers={"Content-Type": "text/csv"}),
        api.get("/v1/banks/b/export", params={"format": "xml"}),
    ]
    for response in checks:
        assert response.status_code == 400 and code(response) == "invalid_request", response.text


def test_every_bank_route_needs_an_admin_key(tmp_path):
    reader = "mod_reader-key"
    auth = AuthSettings(api_keys=(ApiKey(name="forum", sha256=hash_key(reader)),))
    with build(tmp_path, auth) as api:
        for route in router.routes:
            for method in route.methods:
                path = route.path.replace("{name}", "b")
                response = api.request(method, path, headers={"Authorization": f"Bearer {reader}"})
                assert response.status_code == 403 and code(response) == "forbidden", (method, path)
