"""Who may call each tracker endpoint: the table in tracker/access.py, walked cell by cell."""
from __future__ import annotations

import pytest
import requests

from layerswarm.bridge.devstack import daemons
from layerswarm.bridge.format.errors import UserError
from layerswarm.tracker import access, config as tconfig
from layerswarm.tracker.app import create_app
from tests.tracker.helpers import layer

PUBLISH, ADMIN = "publish-secret", "admin-secret"
CALLERS = {"anyone": {}, "publisher": {"Authorization": f"Bearer {PUBLISH}"},
           "operator": {"Authorization": f"Bearer {ADMIN}"}}
CELLS = [(rule, method, caller) for rule, methods in access.TABLE.items() for method in methods for caller in CALLERS]


def test_every_endpoint_has_a_row():
    app = create_app({"publish_token": PUBLISH})
    rules = {(r.rule, m) for r in app.url_map.iter_rules() if r.endpoint != "static"
             for m in r.methods - {"OPTIONS"}}
    missing = [(rule, m) for rule, m in rules if m not in access.TABLE.get(rule, {})
               and not (m == "HEAD" and "GET" in access.TABLE.get(rule, {}))]
    assert not missing, missing


def test_anonymous_writes_only_on_loopback_or_when_asked():
    assert tconfig.load(environ={}).admin.publish_token is None   # 127.0.0.1: fine
    with pytest.raises(UserError, match="publish token"):
        tconfig.load(environ={}, host="0.0.0.0")
    assert tconfig.load(environ={}, host="0.0.0.0", publish_token="t").server.host == "0.0.0.0"
    assert tconfig.load(environ={}, host="0.0.0.0", allow_anonymous_writes=True).admin.allow_anonymous_writes


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """The real ``layerswarm tracker`` with both tokens set (tokens from files, as in production)."""
    tmp = tmp_path_factory.mktemp("access")
    (tmp / "publish").write_text(PUBLISH)
    (tmp / "admin").write_text(ADMIN)
    t = daemons.start_tracker(tmp, extra=["--publish-token-file", tmp / "publish", "--admin-token-file", tmp / "admin"])
    yield t
    t.stop()


@pytest.mark.slow
@pytest.mark.parametrize("rule,method,caller", CELLS, ids=[f"{m} {r} as {c}" for r, m, c in CELLS])
def test_table_cell_against_the_running_tracker(running, rule, method, caller):
    _, t = layer()
    path = rule.replace("<digest>", str(t.digest)).replace("<passkey>", "pk")
    body = {"json": {"host": "h1", "url": "http://127.0.0.1:9", "info_hash": t.info_hash.hex}}
    if rule == "/metainfo/<digest>" and method == "PUT":
        body = {"data": t.metainfo}
    r = requests.request(method, running.url + path, headers=CALLERS[caller], timeout=10, **body)
    role = access.TABLE[rule][method]
    if role == "anyone" or role == caller:
        assert r.status_code not in (401, 403), (r.status_code, r.text[:200])
    else:
        assert r.status_code == (401 if caller == "anyone" else 403), (r.status_code, r.text[:200])
