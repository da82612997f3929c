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
    assert cfg.announce.interval == 45 and cfg.announce.effective_peer_ttl == 90
    assert cfg.registry.relay_fanout == 3 and cfg.server.connections == 8 and cfg.admin.publish_token == "tok"
    assert cfg.announce.effective_min_interval == 22


@pytest.mark.parametrize("argv,words", [
    (["--workers", "2"], ["--workers", "memory store"]),
    (["--store", "mysql://x"], ["--store", "redis://"]),
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
