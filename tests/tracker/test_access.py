"""Who may call each tracker endpoint: the table in tracker/access.py, both columns walked cell by cell."""
from __future__ import annotations

import bencodepy
import pytest
import requests

from layerswarm.bridge.devstack import daemons
from layerswarm.bridge.format.errors import UserError
from layerswarm.tracker import access, config as tconfig
from layerswarm.tracker.app import create_app
from tests.fixtures import ADMIN_TOKEN, PUBLISH_TOKEN, FleetPKI, fleet_environ, wait_for
from tests.tracker.helpers import layer

PUBLISH, ADMIN = "publish-secret", "admin-secret"
CALLERS = {"anyone": {}, "publisher": {"Authorization": f"Bearer {PUBLISH}"},
           "operator": {"Authorization": f"Bearer {ADMIN}"}}
CELLS = [(rule, method) for rule, methods in access.TABLE.items() for method in methods]
OPEN_CELLS = [(rule, method, caller) for rule, method in CELLS for caller in CALLERS]
# Secure fleet mode: callers without a certificate (with or without a token), a fleet host, and a
# fleet host whose certificate serial is on the deny list.
SECURE_CALLERS = ["outsider", "publisher", "operator", "fleet host", "denied host"]
SECURE_CELLS = [(rule, method, caller) for rule, method in CELLS for caller in SECURE_CALLERS]
BITTORRENT = ("/announce", "/scrape")


def _ids(cells):
    return [f"{m} {r} as {c}" for r, m, c in cells]


def _request_args(rule: str, method: str) -> tuple:
    """(path, keyword arguments) of a plausible request for the cell: the access table, not the
    view's checks, must decide."""
    _, t = layer()
    path = rule.replace("<digest>", str(t.digest)).replace("<passkey>", "pk")
    body = {"json": {"host": "h1", "url": "https://127.0.0.1:9", "info_hash": t.info_hash.hex}}
    if rule == "/metainfo/<digest>" and method == "PUT":
        body = {"data": t.metainfo}
    return path, body


def _expected_secure(role: str, caller: str) -> int | None:
    """The status a secure tracker answers the caller with when the table refuses it, None if allowed."""
    if role == access.ANYONE or caller == "fleet host":
        return None
    if role == access.FLEET_OR_OPERATOR and caller in ("operator", "publisher"):
        return None if caller == "operator" else 403   # the publish token is not the admin token
    return 401


def _assert_cell(rule: str, status: int, body: bytes, refused: int | None) -> None:
    if rule.startswith(BITTORRENT):   # BitTorrent clients read only the body: a bencoded failure
        assert status == 200, status
        failure = bencodepy.decode(body).get(b"failure reason", b"") if body.startswith(b"d") else b""
        if refused:
            assert failure == access.NO_CERTIFICATE.encode(), body[:200]
        else:
            assert failure != access.NO_CERTIFICATE.encode(), body[:200]
    elif refused:
        assert status == refused, (status, body[:200])
    else:
        assert status not in (401, 403), (status, body[:200])


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
    # a secure fleet writes with certificates: no token needed on any address
    assert tconfig.load(environ={}, host="0.0.0.0", tls_cert="c", tls_key="k", fleet_ca="ca").server.secure


@pytest.fixture
def secure_client(secure_app):
    """The secure app's test client, and the environ each secure caller sends."""
    denied = "DEADBEEF"
    secure_app.deny.write_text(f"# a removed host\n{denied.lower()}\n")
    auth = lambda token: {"HTTP_AUTHORIZATION": f"Bearer {token}", "REMOTE_ADDR": "127.0.0.1"}   # noqa: E731
    environs = {"outsider": {"REMOTE_ADDR": "127.0.0.1"}, "publisher": auth(PUBLISH_TOKEN),
                "operator": auth(ADMIN_TOKEN), "fleet host": fleet_environ("bridge-1"),
                "denied host": fleet_environ("bridge-9", serial=denied)}
    return secure_app.test_client(), environs


@pytest.mark.parametrize("rule,method,caller", SECURE_CELLS, ids=_ids(SECURE_CELLS))
def test_secure_table_cell_in_process(secure_client, rule, method, caller):
    client, environs = secure_client
    path, body = _request_args(rule, method)
    r = client.open(path, method=method, environ_base=environs[caller], **body)
    _assert_cell(rule, r.status_code, r.data, _expected_secure(access.TABLE[rule][method][1], caller))


# --------------------------------------------------------------------------- against running trackers

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
@pytest.mark.parametrize("rule,method,caller", OPEN_CELLS, ids=_ids(OPEN_CELLS))
def test_table_cell_against_the_running_tracker(running, rule, method, caller):
    path, body = _request_args(rule, method)
    r = requests.request(method, running.url + path, headers=CALLERS[caller], timeout=10, **body)
    role = access.TABLE[rule][method][0]
    if role == "anyone" or role == caller:
        assert r.status_code not in (401, 403), (r.status_code, r.text[:200])
    else:
        assert r.status_code == (401 if caller == "anyone" else 403), (r.status_code, r.text[:200])


@pytest.fixture(scope="module")
def secure_callers(secure_tracker, fleet_pki):
    """requests keyword arguments of each secure caller against ``secure_tracker``; the denied host's
    serial is put on the deny list after the tracker started (so the list is re-read)."""
    denied = fleet_pki.host("removed-host")
    ca = str(fleet_pki.ca)
    callers = {"outsider": {"verify": ca},
               "publisher": {"verify": ca, "headers": {"Authorization": f"Bearer {secure_tracker.publish_token}"}},
               "operator": {"verify": ca, "headers": {"Authorization": f"Bearer {secure_tracker.admin_token}"}},
               "fleet host": {"verify": ca, "cert": fleet_pki.bridge1.pair},
               "denied host": {"verify": ca, "cert": denied.pair}}
    swarms = secure_tracker.url + "/swarms"
    assert requests.get(swarms, timeout=10, **callers["denied host"]).status_code == 200
    with open(secure_tracker.deny, "a") as f:
        f.write(f"{denied.serial}   # removed from the fleet\n")
    wait_for(lambda: requests.get(swarms, timeout=10, **callers["denied host"]).status_code == 401,
             timeout=30, what="the deny list re-read")
    return callers


@pytest.mark.slow
@pytest.mark.parametrize("rule,method,caller", SECURE_CELLS, ids=_ids(SECURE_CELLS))
def test_secure_table_cell_against_the_running_tracker(secure_tracker, secure_callers, rule, method, caller):
    path, body = _request_args(rule, method)
    r = requests.request(method, secure_tracker.url + path, timeout=10, **body, **secure_callers[caller])
    _assert_cell(rule, r.status_code, r.content, _expected_secure(access.TABLE[rule][method][1], caller))


@pytest.mark.slow
def test_outsiders_fail_the_handshake(secure_tracker, fleet_pki, tmp_path):
    """A certificate from another CA is refused by TLS itself; plain HTTP gets no answer at all."""
    stranger = FleetPKI(tmp_path / "other-fleet").host("bridge-1")   # same name, another CA
    for path in ("/healthz", "/swarms"):
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(secure_tracker.url + path, verify=str(fleet_pki.ca), cert=stranger.pair, timeout=10)
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(secure_tracker.url.replace("https:", "http:") + path, timeout=10)
    # and the tracker still serves its fleet, with nothing but one-line notices in its log
    assert requests.get(secure_tracker.url + "/healthz", verify=str(fleet_pki.ca), timeout=10).text == "ok\n"
    assert "Traceback" not in secure_tracker.log_text()
