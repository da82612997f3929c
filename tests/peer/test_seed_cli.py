"""``layerswarm seed`` (in this process) against the real tracker app: sources, preheat, bad input."""
from __future__ import annotations

import json
import os
import tarfile

import pytest
import requests

from layerswarm.bridge.devstack import imagegen
from layerswarm.bridge.format import layertorrent as tf
from layerswarm.bridge.format.digest import Digest
from tests.fixtures import blob_bytes, free_port, run_cli


def _store_layers(store):
    d = store / "layers"
    return sorted(os.listdir(d)) if d.exists() else []


def _store_clean(store):
    inc = store / "incoming"
    return not _store_layers(store) and not (inc.exists() and os.listdir(inc))


def test_seed_docker_save_publishes_and_stores(local_tracker, tmp_path):
    img = imagegen.make_image((300_000, 200_000), seed=b"save")
    tarball = tmp_path / "img.tar"
    imagegen.write_docker_save(str(tarball), "demo:1", img)
    store = tmp_path / "store"
    r = run_cli("seed", tarball, "--tracker", local_tracker.url, "--store-dir", store, "--listen", "127.0.0.1:0",
                "--upload-budget", "10M", "--exit")
    assert r.returncode == 0, r.stderr
    for layer in img.layers:
        assert str(layer.digest) in r.stdout
        meta = requests.get(f"{local_tracker.url}/metainfo/{layer.digest}", timeout=5)
        assert meta.status_code == 200
        assert tf.parse_metainfo(meta.content, layer.digest).size == len(layer.data)
        assert (store / "layers" / str(layer.digest)).read_bytes() == layer.data
    assert " own" in r.stdout


def test_seed_oci_layout_raw_blob_and_restart_record(local_tracker, tmp_path):
    img = imagegen.make_image((250_000,), seed=b"oci", oci=True)
    lay = tmp_path / "layout"
    (lay / "blobs" / "sha256").mkdir(parents=True)
    (lay / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    for b in img.blobs:
        (lay / "blobs" / "sha256" / b.digest.hex).write_bytes(b.data)
    (lay / "blobs" / "sha256" / img.manifest_digest.hex).write_bytes(img.manifest)
    (lay / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": img.manifest_media_type, "digest": str(img.manifest_digest), "size": len(img.manifest)}]}))
    raw = tmp_path / "blob.bin"
    raw.write_bytes(blob_bytes(123_456, b"raw"))
    store = tmp_path / "store"
    r = run_cli("seed", lay, raw, "--tracker", local_tracker.url, "--store-dir", store, "--listen", "127.0.0.1:0",
                "--exit")
    assert r.returncode == 0, r.stderr
    assert str(img.layers[0].digest) in r.stdout and str(Digest.of_bytes(raw.read_bytes())) in r.stdout
    # Restart with no sources: every stored layer seeds from its record, nothing rehashed.
    r = run_cli("seed", "--tracker", local_tracker.url, "--store-dir", store, "--listen", "127.0.0.1:0", "--exit")
    assert r.returncode == 0, r.stderr
    rows = [l for l in r.stdout.splitlines() if l.startswith("sha256:")]
    assert len(rows) == 2 and all(l.rstrip().endswith("record") for l in rows)


@pytest.mark.slow  # a real docker-registry
def test_preheat_from_registry_with_platforms(local_tracker, origin, tmp_path):
    amd = imagegen.make_image((200_000,), seed=b"amd", oci=True)
    arm = imagegen.make_image((210_000,), seed=b"arm", oci=True, arch="arm64")
    index = imagegen.make_index([amd, arm], [("linux", "amd64"), ("linux", "arm64")])
    imagegen.push(origin.url, "team/app", "v1", index)
    host = origin.url.split("//")[1]
    store = tmp_path / "store"
    r = run_cli("seed", f"docker://{host}/team/app:v1", "--platform", "linux/arm64", "--tracker", local_tracker.url,
                 "--store-dir", store, "--listen", "127.0.0.1:0", "--exit")
    assert r.returncode == 0, r.stderr
    assert _store_layers(store) == [str(arm.layers[0].digest)]
    r = run_cli("seed", f"docker://{host}/team/app:v1", "--tracker", local_tracker.url,
                 "--store-dir", store, "--listen", "127.0.0.1:0", "--exit")
    assert r.returncode == 0, r.stderr
    assert set(_store_layers(store)) == {str(amd.layers[0].digest), str(arm.layers[0].digest)}
    r = run_cli("seed", f"docker://{host}/team/nope:v1", "--tracker", local_tracker.url, "--store-dir", tmp_path / "s2",
                 "--listen", "127.0.0.1:0", "--exit")
    assert r.returncode != 0 and "unknown image reference" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow  # a real docker-registry with token auth
def test_preheat_refuses_private_layers_in_an_open_swarm(local_tracker, token_origin, tmp_path):
    host = token_origin.url.split("//")[1]
    alice = token_origin.token("alice", "repository:private/app:pull", "repository:public/app:pull")
    store = tmp_path / "store"
    r = run_cli("seed", f"docker://{host}/private/app:v1", "--registry-token", alice, "--tracker",
                local_tracker.url, "--store-dir", store, "--listen", "127.0.0.1:0", "--exit")
    assert r.returncode == 2 and "does not serve this repository anonymously" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and _store_clean(store)
    r = run_cli("seed", f"docker://{host}/public/app:v1", "--tracker", local_tracker.url, "--store-dir", store,
                "--listen", "127.0.0.1:0", "--exit")
    assert r.returncode == 0, r.stderr
    assert set(_store_layers(store)) == {str(b.digest) for b in token_origin.public_img.layers}


def _bad(tracker_url, store, *sources):
    r = run_cli("seed", *sources, "--tracker", tracker_url, "--store-dir", store, "--listen", "127.0.0.1:0", "--exit")
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert _store_clean(store)
    return r.stderr


def test_bad_inputs(local_tracker, tmp_path):
    store = tmp_path / "store"
    good = tmp_path / "good.bin"
    good.write_bytes(blob_bytes(300_000, b"good"))
    assert "no such file" in _bad(local_tracker.url, store, good, tmp_path / "missing.tar")
    (tmp_path / "notimg").mkdir()
    assert "not an OCI image layout" in _bad(local_tracker.url, store, good, tmp_path / "notimg")
    # a truncated docker save tarball
    img = imagegen.make_image((400_000,), seed=b"trunc")
    full = tmp_path / "full.tar"
    imagegen.write_docker_save(str(full), "x:1", img)
    cut = tmp_path / "cut.tar"
    cut.write_bytes(full.read_bytes()[:200_000])
    assert "corrupt tar" in _bad(local_tracker.url, store, good, cut)
    # a raw blob named by a digest it does not have
    liar = tmp_path / str(Digest.of_bytes(b"something else"))
    liar.write_bytes(b"not that")
    assert "hash to" in _bad(local_tracker.url, store, good, liar)
    # a tar that is not an image
    t = tmp_path / "plain.tar"
    with tarfile.open(t, "w") as tar:
        tar.add(good, arcname="x")
    assert "not an image" in _bad(local_tracker.url, store, t)
    # tracker unreachable
    err = _bad(f"http://127.0.0.1:{free_port()}", store, good)
    assert "unreachable" in err
    r = run_cli("seed", good, "--raw", "--tracker", local_tracker.url, "--store-dir", store, "--listen", "127.0.0.1:0",
                "--upload-budget", "lots", "--exit")
    assert r.returncode != 0 and "--upload-budget: not a size" in r.stderr and _store_clean(store), r.stderr
    r = run_cli("seed", good, "--raw", "--tracker", local_tracker.url, "--store-dir", store, "--listen", "127.0.0.1:0",
                "--lt-setting", "no_equals_sign", "--exit")
    assert r.returncode == 2 and "--lt-setting wants KEY=VALUE" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = run_cli("seed", good, "--raw", "--tracker", local_tracker.url, "--store-dir", store, "--listen", "127.0.0.1:0",
                "--lt-setting", "no_such_setting=4")
    assert r.returncode == 2 and "libtorrent has no such setting" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = run_cli("seed", good, "--raw", "--tracker", local_tracker.url, "--store-dir", store, "--listen", "127.0.0.1:0",
                "--lt-setting", "unchoke_slots_limit=4", "--exit")
    assert r.returncode == 0, r.stderr


def test_conflicting_published_torrent_is_reported(local_tracker, tmp_path):
    data = blob_bytes(300_000, b"conflict")
    d = Digest.of_bytes(data)
    bogus = tf.build_metainfo(d, len(data), b"\x01" * 20 * tf.piece_count(len(data), tf.piece_length(len(data))))
    assert requests.put(f"{local_tracker.url}/metainfo/{d}", data=bogus.metainfo, timeout=5).status_code == 201
    f = tmp_path / "blob"
    f.write_bytes(data)
    err = _bad(local_tracker.url, tmp_path / "store", f)
    assert "do not match" in err and "reported" in err


def test_seeding_the_same_tarball_again_on_the_same_store(local_tracker, tmp_path):
    img = imagegen.make_image((300_000,), seed=b"again")
    tarball = tmp_path / "img.tar"
    imagegen.write_docker_save(str(tarball), "again:1", img)
    store = tmp_path / "store"
    for _ in range(2):
        r = run_cli("seed", tarball, "--tracker", local_tracker.url, "--store-dir", store,
                    "--listen", "127.0.0.1:0", "--exit")
        assert r.returncode == 0, r.stderr
        assert str(img.layers[0].digest) in r.stdout
    assert (store / "layers" / str(img.layers[0].digest)).read_bytes() == img.layers[0].data


def test_seed_and_inspect_take_several_trackers_and_pass_a_dead_one(local_tracker, tmp_path, monkeypatch):
    dead = f"http://127.0.0.1:{free_port()}"
    raw = tmp_path / "blob.bin"
    raw.write_bytes(blob_bytes(300_000, b"replicas"))
    d = Digest.of_bytes(raw.read_bytes())
    r = run_cli("seed", raw, "--tracker", dead, "--tracker", local_tracker.url, "--store-dir", tmp_path / "store",
                "--listen", "127.0.0.1:0", "--exit")
    assert r.returncode == 0, r.stderr
    meta = tf.parse_metainfo(requests.get(f"{local_tracker.url}/metainfo/{d}", timeout=5).content, d)
    assert meta.trackers == (f"{dead}/announce", f"{local_tracker.url}/announce")
    monkeypatch.setenv("LAYERSWARM_TRACKER", f"{dead},{local_tracker.url}")
    r = run_cli("inspect", str(d))
    assert r.returncode == 0 and str(d) in r.stdout, r.stderr
