"""The bridge's one configuration: every source merges by field name, flag > env > file > default."""
from __future__ import annotations

import argparse

import pytest

from layerswarm.bridge import config as bconfig
from layerswarm.bridge.format.errors import UserError
from tests.fixtures import run_cli


def load(*argv, environ=None):
    p = argparse.ArgumentParser()
    bconfig.add_arguments(p)
    return bconfig.from_args(p.parse_args(list(map(str, argv))), environ=environ or {})


def test_defaults_written_once_and_derived_timeouts():
    cfg = load("--store-dir", "/s")
    assert cfg.server.listen == "127.0.0.1:5000" and cfg.server.threads == 64
    assert cfg.upstreams.default.url == bconfig.DOCKER_HUB_URL
    assert cfg.swarm.tracker == [] and cfg.stream.stall_timeout == 30.0
    assert cfg.first_byte_timeout == 30 + 5 + 5
    assert cfg.follow_timeout == max(20.0, 30.0) * 2
    assert cfg.tracker_timeout == 10
    assert cfg.advertise_url.endswith(":5001")   # the fleet listener, not the client API


def test_advertised_fleet_url_is_the_address_toward_the_tracker_on_a_wildcard_listener():
    assert load("--store-dir", "/s", "--tracker", "http://127.0.0.3:6969").advertise_url == "http://127.0.0.1:5001"
    assert load("--store-dir", "/s", "--fleet-listen", "127.0.0.9:7000").advertise_url == "http://127.0.0.9:7000"
    assert load("--store-dir", "/s", "--fleet-listen", "[::1]:7000").advertise_url == "http://[::1]:7000"
    assert load("--store-dir", "/s", "--advertise-url", "http://b1:7").advertise_url == "http://b1:7"


def test_several_trackers_from_repeated_flags_a_toml_list_or_comma_separated_env(tmp_path):
    a, b = "http://127.0.0.1:6969", "http://127.0.0.2:6969"
    assert load("--store-dir", "/s", "--tracker", a).swarm.tracker == [a]
    assert load("--store-dir", "/s", "--tracker", a + "/", "--tracker", b, "--tracker", a).swarm.tracker == [a, b]
    assert load("--store-dir", "/s", environ={"LAYERSWARM_TRACKER": f"{a}, {b}"}).swarm.tracker == [a, b]
    f = tmp_path / "c.toml"
    f.write_text(f'[swarm]\ntracker = ["{a}", "{b}"]\n')
    cfg = load("--store-dir", "/s", "--config", f)
    assert cfg.swarm.tracker == [a, b] and f'tracker = [\n    "{a}",\n    "{b}",\n]' in bconfig.SCHEMA.dump(cfg)
    f.write_text(f'[swarm]\ntracker = "{a}"\n')             # one URL as a string, as before
    assert load("--store-dir", "/s", "--config", f).swarm.tracker == [a]
    with pytest.raises(UserError, match="flag --tracker.*ftp://t"):
        load("--store-dir", "/s", "--tracker", a, "--tracker", "ftp://t")


def test_precedence_flag_env_file_default(tmp_path):
    f = tmp_path / "bridge.toml"
    f.write_text('[server]\nstore_dir = "/from-file"\nthreads = 8\n[swarm]\nlease_ttl = 7\nrelay_timeout = 9\n'
                 '[stream]\nwindow_bytes = 1024\n')
    env = {"LAYERSWARM_THREADS": "12", "LAYERSWARM_LEASE_TTL": "11"}
    cfg = load("--config", f, "--lease-ttl", "13", environ=env)
    assert cfg.server.store_dir == "/from-file"          # file
    assert cfg.server.threads == 12                      # env beats file
    assert cfg.swarm.lease_ttl == 13                     # flag beats env
    assert cfg.swarm.relay_timeout == 9                  # file beats default
    assert cfg.stream.window_bytes == 1024
    assert cfg.session.peer_listen == "0.0.0.0:6881"     # default
    assert cfg.session.peer_ssl_listen == "0.0.0.0:6882"


def test_legacy_flat_file_and_flags_still_work(tmp_path, monkeypatch):
    monkeypatch.setenv("HUB_PW", "pw")
    f = tmp_path / "old.toml"
    f.write_text('store_dir = "/s"\nlisten = "127.0.0.1:5001"\ndefault_upstream = "hub"\n'
                 'allow_hosts = ["ghcr.io"]\ntracker = "http://t:6969"\ntoken = "tok"\ncache_max = "2G"\n'
                 'utp = true\n[upstreams.hub]\nurl = "https://hub.example"\nusername = "me"\n'
                 'password_env = "HUB_PW"\n')
    cfg = load("--config", f, "--alias", "corp=http://127.0.0.1:5002", environ={})
    ups = cfg.upstreams
    assert ups.default.url == "https://hub.example" and (ups.default.username, ups.default.password) == ("me", "pw")
    assert set(ups.by_name) >= {"hub", "corp", "ghcr.io"}
    assert cfg.swarm.publish_token == "tok" and cfg.swarm.cache_max == 2 << 30 and cfg.session.utp


def test_secrets_from_files_env_and_legacy_names(tmp_path):
    tok = tmp_path / "tok"
    tok.write_text("s3cret\n")
    assert load("--store-dir", "/s", "--admin-token-file", tok).admin.admin_token == "s3cret"
    assert load("--store-dir", "/s", environ={"LAYERSWARM_PUBLISH_TOKEN_FILE": str(tok)}).swarm.publish_token == "s3cret"
    assert load("--store-dir", "/s", environ={"LAYERSWARM_ADMIN_TOKEN": "a"}).admin.admin_token == "a"
    cfg = load("--store-dir", "/s", "--upstream", "http://127.0.0.1:9",
               environ={"LAYERSWARM_UPSTREAM_USERNAME": "u", "LAYERSWARM_UPSTREAM_PASSWORD": "p"})
    assert (cfg.upstreams.default.username, cfg.upstreams.default.password) == ("u", "p")
    f = tmp_path / "c.toml"
    f.write_text(f'[swarm]\npublish_token_file = "{tok}"\n')
    assert load("--store-dir", "/s", "--config", f).swarm.publish_token == "s3cret"


@pytest.mark.parametrize("argv,env,file,words", [
    (["--threads", "many"], {}, None, ["flag --threads", "integer"]),
    ([], {"LAYERSWARM_STALL_TIMEOUT": "soon"}, None, ["LAYERSWARM_STALL_TIMEOUT", "stall_timeout"]),
    ([], {}, '[swarm]\nlease_ttl = "long"\n', ["lease_ttl", "number"]),
    ([], {}, 'lisen = "x"\n', ["unknown option", "lisen"]),
    ([], {}, '[server]\ntracker = "http://t"\n', ["[swarm]", "tracker"]),
    (["--peer-listen", "6881"], {}, None, ["flag --peer-listen", "HOST:PORT"]),
    (["--peer-ssl-listen", "6882"], {}, None, ["flag --peer-ssl-listen", "HOST:PORT"]),
    ([], {"LAYERSWARM_CACHE_MAX": "lots"}, None, ["LAYERSWARM_CACHE_MAX", "not a size"]),
    (["--admin-token-file", "/nonexistent/x"], {}, None, ["--admin-token-file", "cannot read"]),
    ([], {}, "[[broken", ["cannot read config"]),
    (["--peer-request-queue", "0"], {}, None, ["--peer-request-queue", "positive"]),
    (["--deadline-after", "-1"], {}, None, ["--deadline-after", "negative"]),
    (["--alert-batch", "0.5"], {}, None, ["--alert-batch", "0 to 0.1 seconds"]),
    (["--disk-io", "zfs"], {}, None, ["--disk-io", "posix, pread, mmap, default"]),
])
def test_bad_value_names_source_and_field(tmp_path, argv, env, file, words):
    if file is not None:
        f = tmp_path / "bad.toml"
        f.write_text(file)
        argv = [*argv, "--config", f]
    with pytest.raises(UserError) as ei:
        load("--store-dir", "/s", *argv, environ=env)
    for w in words:
        assert w in str(ei.value), (w, str(ei.value))


def test_swarm_picking_settings_reach_the_libtorrent_session():
    """Short request queues at this host and rarest-first from the first piece (README "Performance")."""
    import libtorrent as lt
    from layerswarm.bridge.node.torrent.settings import settings_pack
    cfg = load("--store-dir", "/s", "--peer-request-queue", "16", "--peer-listen", "127.0.0.1:0")
    got = lt.session(settings_pack(cfg.session)).get_settings()
    assert got["max_allowed_in_request_queue"] == 16
    assert got["whole_pieces_threshold"] == 0 and got["initial_picker_threshold"] == 0
    assert load("--store-dir", "/s").session.peer_request_queue == 4
    assert load("--store-dir", "/s").stream.deadline_after == 10.0
    assert load("--store-dir", "/s").stream.stripe_levels == 3
    assert load("--store-dir", "/s", "--stripe-levels", "0").stream.stripe_levels == 0
    for bad in ("4", "-1"):
        with pytest.raises(UserError, match="stripe.levels"):
            load("--store-dir", "/s", "--stripe-levels", bad)


def test_store_dir_is_required():
    with pytest.raises(UserError, match="store-dir"):
        load()


def test_print_and_check_config_cli(tmp_path):
    tok = tmp_path / "tok"
    tok.write_text("very-secret-token")
    base = ["bridge", "--store-dir", str(tmp_path), "--upstream", "http://127.0.0.1:9", "--admin-token-file", str(tok),
            "--token", "pub-secret", "--lt-setting", "seed_choking_algorithm=1"]
    p = run_cli(*base, "--print-config")
    assert p.returncode == 0, p.stderr
    assert "very-secret-token" not in p.stdout and "pub-secret" not in p.stdout
    assert "[server]" in p.stdout and "[admin]" in p.stdout and "<redacted>" in p.stdout
    assert "seed_choking_algorithm = 1" in p.stdout
    p = run_cli(*base, "--check-config")
    assert p.returncode == 0 and "OK" in p.stdout
    p = run_cli(*base, "--check-config", "--threads", "x")
    assert p.returncode == 2 and "--threads" in p.stderr and "Traceback" not in p.stderr
    # libtorrent would refuse these inside the session: the check names them first
    for bad, says in (("bogus_key=1", "no such setting"), ("unchoke_slots_limit=x", "wants a number"),
                      ("enable_dht=1", "wants bool")):
        p = run_cli(*base, "--check-config", "--lt-setting", bad)
        assert p.returncode == 2 and says in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_secure_mode_advertises_https():
    cfg = load("--store-dir", "/s", "--fleet-listen", "127.0.0.9:7000", "--fleet-ca", "/ca", "--fleet-cert", "/c",
               "--fleet-key", "/k")
    assert cfg.fleet.secure and cfg.advertise_url == "https://127.0.0.9:7000"
