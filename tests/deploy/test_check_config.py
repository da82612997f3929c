"""``--check-config`` of tracker and bridge, and ``layerswarm hosts-toml``: what deploy/ runs, in this process."""
from __future__ import annotations

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

import pytest

from tests.fixtures import FleetPKI, run_cli


def one_line_error(p, *words):
    assert p.returncode == 2, (p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


def ok_line(p) -> str:
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("configuration OK: "), p.stdout
    return lines[0]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    f = FleetPKI(tmp_path_factory.mktemp("pki"))
    f.h1, f.h2 = f.host("h1", ips=("127.0.0.1",)), f.host("h2")
    f.other = FleetPKI(tmp_path_factory.mktemp("other")).host("stranger")
    return f


def test_bridge_check_names_what_it_would_run_and_creates_nothing(pki, tmp_path):
    store = tmp_path / "new" / "store"
    line = ok_line(run_cli("bridge", "--store-dir", store, "--tracker", "https://tracker:6969", "--host-id", "h1",
                           *pki.args(pki.h1), "--check-config"))
    for w in ("bridge h1", "client API 127.0.0.1:5000", f"store {store}", "tracker https://tracker:6969",
              "secure mode (CN h1"):
        assert w in line, (w, line)
    assert not store.parent.exists()


@pytest.mark.parametrize("case", ["store under a file", "key of another host", "certificate of another CA",
                                  "missing CA", "upstream CA bundle", "client API certificate", "plain tracker"])
def test_bridge_check_refuses_in_one_line(pki, tmp_path, case):
    (tmp_path / "file").write_text("x")
    args = {"--store-dir": tmp_path / "store", "--tracker": "https://tracker:6969", "--fleet-ca": pki.ca,
            "--fleet-cert": pki.h1.cert, "--fleet-key": pki.h1.key}
    extra, words = [], []
    if case == "store under a file":
        args["--store-dir"], words = tmp_path / "file" / "store", ["store dir", "not a directory"]
    elif case == "key of another host":
        args["--fleet-key"], words = pki.h2.key, ["is not the key of the certificate"]
    elif case == "certificate of another CA":
        args["--fleet-cert"], args["--fleet-key"] = pki.other.cert, pki.other.key
        words = ["not issued by the fleet CA"]
    elif case == "missing CA":
        args["--fleet-ca"], words = tmp_path / "nope.pem", ["cannot read the fleet CA", "nope.pem"]
    elif case == "plain tracker":
        args["--tracker"], words = "http://tracker:6969", ["tracker http://tracker:6969", "https://"]
    elif case == "upstream CA bundle":
        extra, words = ["--upstream-ca", tmp_path / "corp-ca.pem"], ["CA bundle", "corp-ca.pem"]
    else:
        extra = ["--client-tls-cert", tmp_path / "file", "--client-tls-key", tmp_path / "file"]
        words = ["client API certificate"]
    flat = [str(x) for kv in args.items() for x in kv]
    one_line_error(run_cli("bridge", *flat, *extra, "--check-config"), *words)


def test_tracker_check_hides_the_store_password_and_calls_no_store(pki, tmp_path):
    (tmp_path / "redis-password").write_text("hunter2\n")
    base = ["tracker", "--host", "0.0.0.0", "--workers", "2", "--tls-cert", pki.h1.cert, "--tls-key", pki.h1.key,
            "--fleet-ca", pki.ca, "--store-password-file", tmp_path / "redis-password"]
    for store in ("redis://127.0.0.1:9/0", "redis+sentinel://127.0.0.1:9,127.0.0.1:10/layerswarm",
                  "redis+cluster://127.0.0.1:9,127.0.0.1:10"):
        line = ok_line(run_cli(*base, "--store", store, "--check-config"))
        assert "hunter2" not in line and f"store {store}" in line
        assert "secure fleet mode" in line and "CN h1" in line and "2 worker(s)" in line
    # a password in the URL is refused, and not repeated
    p = run_cli(*base, "--store", "redis://:hunter2@127.0.0.1:9/0", "--check-config")
    one_line_error(p, "--store", "--store-password-file")
    assert "hunter2" not in p.stderr


@pytest.mark.parametrize("case", ["store url", "tls files", "deny list"])
def test_tracker_check_refuses_in_one_line(pki, tmp_path, case):
    base = ["tracker", "--host", "0.0.0.0", "--tls-cert", pki.h1.cert, "--tls-key", pki.h1.key, "--fleet-ca", pki.ca]
    if case == "store url":
        one_line_error(run_cli(*base, "--store", "redis://host:port/0", "--check-config"), "store")
    elif case == "tls files":
        one_line_error(run_cli(*base, "--tls-key", pki.h2.key, "--check-config"), "is not the key")
    else:
        one_line_error(run_cli(*base, "--deny-serials", tmp_path / "deny", "--check-config"), "deny list")


def test_hosts_toml_writes_one_file_per_registry(tmp_path):
    hosts = tmp_path / "certs.d"
    p = run_cli("hosts-toml", "--hosts-dir", hosts, "--mirror", "http://127.0.0.1:5000/", "docker.io",
                "registry.corp:5443", "http://127.0.0.1:8080")
    assert p.returncode == 0, p.stderr
    got = {d.name: tomllib.loads((d / "hosts.toml").read_text()) for d in hosts.iterdir()}
    mirror = {"http://127.0.0.1:5000": {"capabilities": ["pull", "resolve"]}}
    assert got == {"docker.io": {"server": "https://registry-1.docker.io", "host": mirror},
                   "registry.corp:5443": {"server": "https://registry.corp:5443", "host": mirror},
                   "127.0.0.1:8080": {"server": "http://127.0.0.1:8080", "host": mirror}}
    assert [f.name for f in (hosts / "docker.io").iterdir()] == ["hosts.toml"]   # no temporary left


def test_hosts_toml_check_and_bad_input_write_nothing(tmp_path):
    hosts = tmp_path / "certs.d"
    line = ok_line(run_cli("hosts-toml", "--hosts-dir", hosts, "docker.io", "ghcr.io", "--check-config"))
    assert "2 registries" in line and "http://127.0.0.1:5000" in line
    one_line_error(run_cli("hosts-toml", "--hosts-dir", hosts, "ghcr.io", "ghcr.io/org"), "ghcr.io/org")
    one_line_error(run_cli("hosts-toml", "--hosts-dir", hosts, "--mirror", "127.0.0.1:5000", "ghcr.io"), "mirror")
    one_line_error(run_cli("hosts-toml", "--hosts-dir", hosts, "--mirror-ca", tmp_path / "ca.pem", "ghcr.io"),
                   "mirror CA")
    (tmp_path / "file").write_text("")
    one_line_error(run_cli("hosts-toml", "--hosts-dir", tmp_path / "file" / "d", "ghcr.io", "--check-config"),
                   "hosts dir")
    assert not hosts.exists()
