"""Who may call each bridge endpoint: the tables in bridge/http/access.py (one per listener), walked cell by cell."""
from __future__ import annotations

import pytest
import requests

from layerswarm.bridge.http import access

ADMIN = "bridge-admin-secret"
CALLERS = {"client": {}, "operator": {"Authorization": f"Bearer {ADMIN}"},
           "wrong token": {"Authorization": "Bearer not-it"}}
TABLES = {"client": access.CLIENT_TABLE, "fleet": access.FLEET_TABLE}
CELLS = [(port, rule, method, caller) for port, table in TABLES.items() for rule, methods in table.items()
         for method in methods for caller in CALLERS]
HEX = "ab" * 32


def _rules(app) -> set:
    return {(r.rule, m) for r in app.url_map.iter_rules() if r.endpoint != "static" for m in r.methods - {"OPTIONS"}}


def test_every_endpoint_has_a_row(local_tracker, local_bridge):
    b = local_bridge("--tracker", local_tracker.url, "--admin-token", ADMIN)
    for listener in b.listeners:
        table = TABLES[listener.name]
        missing = sorted((rule, m) for rule, m in _rules(listener.app) if m not in table.get(rule, {}))
        assert not missing, (listener.name, missing)


def _path(rule: str) -> str:
    return rule.replace("<path:rest>", f"library/x/blobs/sha256:{HEX}").replace("<digest>", f"sha256:{HEX}")


def test_the_relay_is_only_on_the_fleet_listener_and_the_client_api_only_on_the_client_listener(
        local_tracker, local_bridge):
    b = local_bridge("--tracker", local_tracker.url)
    for rule in access.FLEET_TABLE:
        if rule != "/healthz":
            assert requests.get(b.url + _path(rule), timeout=10).status_code == 404, rule
    for rule, methods in access.CLIENT_TABLE.items():
        if rule != "/healthz" and "GET" in methods:
            assert requests.get(b.fleet_url + _path(rule), timeout=10).status_code == 404, rule


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """A real ``layerswarm bridge`` process with a tracker and an admin token (from a file)."""
    from layerswarm.bridge.devstack import daemons as devstack
    tmp = tmp_path_factory.mktemp("bridge-access")
    (tmp / "admin").write_text(ADMIN)
    tracker = devstack.start_tracker(tmp / "tracker")
    bridge = devstack.start_bridge(tmp / "bridge", upstream="http://127.0.0.1:9", tracker=tracker.url,
                                   extra=["--admin-token-file", tmp / "admin"])
    yield bridge
    bridge.stop()
    tracker.stop()


@pytest.mark.slow
@pytest.mark.parametrize("port,rule,method,caller", CELLS, ids=[f"{m} {r} on {p} as {c}" for p, r, m, c in CELLS])
def test_table_cell_against_the_running_bridge(running, port, rule, method, caller):
    params = {"size": 10} if rule.endswith("/seed") else None
    base = running.url if port == "client" else running.fleet_url
    r = requests.request(method, base + _path(rule), headers=CALLERS[caller], params=params, data=b"0123456789"
                         if method in ("POST", "PUT", "PATCH") else None, timeout=20)
    role = TABLES[port][rule][method]
    allowed = role != access.OPERATOR or caller == "operator"
    if allowed and r.status_code == 401 and rule.startswith("/v2"):
        # Past the table: the registry's own challenge (chained authorization, tests/bridge/test_chained_auth.py).
        assert r.headers["WWW-Authenticate"].startswith("Bearer realm="), r.headers
    elif allowed:
        assert r.status_code not in (401, 403), (r.status_code, r.text[:200])
    else:
        assert r.status_code == 401, (r.status_code, r.text[:200])


@pytest.mark.slow
def test_the_running_bridge_serves_the_relay_only_on_its_fleet_port(running):
    relay = f"/_layerswarm/relay/sha256:{HEX}"
    assert requests.get(running.url + relay, timeout=20).status_code == 404           # not a route there
    assert requests.get(running.fleet_url + relay, timeout=20).status_code == 404     # a route: blob not held
    assert requests.get(running.fleet_url + "/_layerswarm/relay/nope", timeout=20).status_code == 400
    assert requests.get(running.fleet_url + "/v2/", timeout=20).status_code == 404
