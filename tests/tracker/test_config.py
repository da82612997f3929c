"""The tracker's one configuration: sections, env LAYERSWARM_TRACKER_*, TOML, print/check."""
from __future__ import annotations

import argparse

import pytest

from layerswarm.bridge.format.errors import UserError
from layerswarm.tracker import config as tconfig
from tests.fixtures import run_cli


def load(*argv, environ=None):
    p = argparse.ArgumentParser()
    tconfig.SCHEMA.add_arguments(p)
    return tconfig.load(p.parse_args(list(map(str, argv))), environ=environ or {})


def test_sources_merge_by_field_name(tmp_path):
    f = tmp_path / "tracker.toml"
    f.write_text('[announce]\ninterval = 30\n[registry]\nrelay_fanout = 3\n[server]\nconnections = 4\n')
    cfg = load("--config", f, "--connections", 8, environ={"LAYERSWARM_TRACKER_INTERVAL": "45",
                                                      "LAYERSWARM_PUBLISH_TOKEN": "tok"})
    assert cfg.announce.interval == 45 and cfg.announce.peer_ttl(seeder=False) == 90
    assert cfg.announce.peer_ttl(seeder=True) == 3600
    assert cfg.registry.relay_fanout == 3 and cfg.server.connections == 8 and cfg.admin.publish_token == "tok"
    assert cfg.announce.effective_min_interval == 22


@pytest.mark.parametrize("argv,words", [
    (["--workers", "2"], ["--workers", "memory store"]),
    (["--store", "mysql://x"], ["--store", "redis://"]),
    (["--store", "redis://:hunter2@10.0.0.5:6379/0"], ["--store", "password", "--store-password-file",
                                                      "LAYERSWARM_STORE_PASSWORD"]),
    (["--store", "redis://10.0.0.5/0?password=hunter2"], ["--store", "--store-password-file"]),
    (["--store", "redis+sentinel://u:hunter2@s1,s2/tracker"], ["--store", "--store-password-file"]),
    (["--store", "redis+sentinel://s1:26379"], ["--store", "service_name"]),
    (["--store", "redis+sentinel://s1:x/tracker"], ["--store", "host[:port]"]),
    (["--interval", "0"], ["--interval", "at least 1"]),
    (["--port", "70000"], ["--port", "TCP port"]),
    (["--accept-open-torrents"], ["--accept-open-torrents", "--fleet-ca"]),
])
def test_bad_values_name_the_flag(argv, words):
    with pytest.raises(UserError) as ei:
        load(*argv)
    for w in words:
        assert w in str(ei.value)


def test_print_config_redacts_the_publish_token(tmp_path):
    tok = tmp_path / "t"
    tok.write_text("publish-secret\n")
    p = run_cli("tracker", "--publish-token-file", tok, "--print-config")
    assert p.returncode == 0, p.stderr
    assert "publish-secret" not in p.stdout and 'publish_token = "<redacted>"' in p.stdout
    p = run_cli("tracker", "--check-config")
    assert p.returncode == 0 and "OK" in p.stdout


def test_the_store_password_comes_from_a_file_or_the_environment_never_a_flag(tmp_path):
    f = tmp_path / "redis-password"
    f.write_text("from-file\n")
    url = "redis+sentinel://10.0.0.1,10.0.0.2:26380,[::1]/tracker/3"
    cfg = load("--store", url, "--store-password-file", f)
    assert cfg.state.store_password == "from-file"
    spec, opts = cfg.state.spec, cfg.state.options
    assert spec.nodes == (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("::1", 26379))
    assert (spec.service, spec.db, opts.password, opts.wait_replicas) == ("tracker", 3, "from-file", 1)
    cfg = load("--store", "redis://10.0.0.5/0", environ={"LAYERSWARM_STORE_PASSWORD": "from-env"})
    assert cfg.state.options.password == "from-env" and cfg.state.options.wait_replicas == 0
    cfg = load("--store", url, environ={"LAYERSWARM_STORE_SENTINEL_PASSWORD_FILE": str(f)})
    assert cfg.state.options.sentinel_password == "from-file" and cfg.state.options.password is None
    parser = argparse.ArgumentParser()
    tconfig.SCHEMA.add_arguments(parser)
    flags = set(parser._option_string_actions)   # no flag takes the password itself: it would show in ps
    assert "--store-password-file" in flags and "--store-password" not in flags
    p = run_cli("tracker", "--store", url, "--store-password-file", f, "--print-config")
    assert p.returncode == 0, p.stderr
    assert "from-file" not in p.stdout and 'store_password = "<redacted>"' in p.stdout
    p = run_cli("tracker", "--store", "redis://:hunter2@10.0.0.5/0", "--check-config")
    assert p.returncode != 0 and "hunter2" not in p.stderr + p.stdout and "--store-password-file" in p.stderr
