"""Who may call each bridge endpoint: the table in bridge/http/access.py, walked cell by cell."""
from __future__ import annotations

import pytest
import requests

from layerswarm.bridge.http import access

ADMIN = "bridge-admin-secret"
CALLERS = {"client": {}, "operator": {"Authorization": f"Bearer {ADMIN}"},
           "wrong token": {"Authorization": "Bearer not-it"}}
CELLS = [(rule, method, caller) for rule, methods in access.TABLE.items() for method in methods for caller in CALLERS]
HEX = "ab" * 32


def test_every_endpoint_has_a_row(local_tracker, local_bridge):
    b = local_bridge("--tracker", local_tracker.url, "--admin-token", ADMIN)
    rules = {(r.rule, m) for r in b.app.url_map.iter_rules() if r.endpoint != "static"
             for m in r.methods - {"OPTIONS"}}
    missing = sorted((rule, m) for rule, m in rules if m not in access.TABLE.get(rule, {}))
    assert not missing, missing


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
@pytest.mark.parametrize("rule,method,caller", CELLS, ids=[f"{m} {r} as {c}" for r, m, c in CELLS])
def test_table_cell_against_the_running_bridge(running, rule, method, caller):
    path = (rule.replace("<path:rest>", f"library/x/blobs/sha256:{HEX}").replace("<digest>", f"sha256:{HEX}"))
    params = {"size": 10} if rule.endswith("/seed") else None
    r = requests.request(method, running.url + path, headers=CALLERS[caller], params=params, data=b"0123456789"
                         if method in ("POST", "PUT", "PATCH") else None, timeout=20)
    role = access.TABLE[rule][method]
    allowed = role != access.OPERATOR or caller == "operator"
    if allowed:
        assert r.status_code not in (401, 403), (r.status_code, r.text[:200])
    else:
        assert r.status_code == 401, (r.status_code, r.text[:200])
