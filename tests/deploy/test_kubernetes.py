"""deploy/kubernetes: each kustomization renders offline (kubectl kustomize), validates against Kubernetes' own
schemas, names only what it defines or what the README has the operator or cert-manager make, and every
container command passes ``--check-config`` with the files its volumes would hold."""
from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.deploy.sandbox import Sandbox, check_command, token

pytestmark = pytest.mark.slow   # kubectl is a process; what follows runs in this process

KUSTOMIZE = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
TARGETS = ["base", "overlays/open", "overlays/secure"]
K8S_VERSION = "1.30.0"          # bundled with kubernetes-validate: no network
OPERATOR_SECRETS = {"layerswarm-tokens": {"publish-token", "admin-token"}}   # README: kubectl create secret
CERT_MANAGER_KEYS = {"tls.crt", "tls.key", "ca.crt"}
WORKLOADS = ("Deployment", "DaemonSet", "StatefulSet")
POD_FIELDS = {"spec.nodeName": "node-a", "status.hostIP": "127.0.0.1", "status.podIP": "127.0.0.1",
              "metadata.name": "pod-0", "metadata.namespace": "layerswarm"}


@pytest.fixture(scope="module")
def rendered() -> dict:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is part of the machine"
    out = {}
    for target in TARGETS:
        p = subprocess.run([kubectl, "kustomize", str(KUSTOMIZE / target)], capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 0, f"{target}: {p.stderr}"
        out[target] = [d for d in yaml.safe_load_all(p.stdout) if d]
    return out


def pods(docs):
    for d in docs:
        if d["kind"] in WORKLOADS:
            yield d, d["spec"]["template"]["spec"]


def containers(spec):
    return spec.get("initContainers", []) + spec["containers"]


def named(docs, kind: str, name: str):
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found[0] if found else None


def test_every_kustomization_is_rendered_here():
    found = {str(p.parent.relative_to(KUSTOMIZE)) for p in KUSTOMIZE.rglob("kustomization.yaml")
             if yaml.safe_load(p.read_text())["kind"] == "Kustomization"}
    assert found == set(TARGETS)


@pytest.mark.parametrize("target", TARGETS)
def test_renders_and_validates_against_the_kubernetes_schemas(rendered, target):
    docs = rendered[target]
    for d in docs:
        if d["apiVersion"] == "cert-manager.io/v1":   # a CRD: no bundled schema; references checked below
            assert d["kind"] in ("Issuer", "Certificate"), d["kind"]
            continue
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"layerswarm"}
    assert all(d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "layerswarm" for d in docs)
    tracker = named(docs, "Deployment", "layerswarm-tracker")
    assert tracker["spec"]["replicas"] == 2
    pdb = named(docs, "PodDisruptionBudget", "layerswarm-tracker")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= tracker["spec"]["template"]["metadata"]["labels"].items()
    bridge = named(docs, "DaemonSet", "layerswarm-bridge")["spec"]["template"]["spec"]
    assert bridge["hostNetwork"] and bridge["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert [c["name"] for c in bridge["initContainers"]] == ["hosts-toml"]


def _secret_keys(docs) -> dict:
    """Secret name -> the keys it will have: rendered, the operator's, or cert-manager's."""
    out = {name: set(keys) for name, keys in OPERATOR_SECRETS.items()}
    for d in docs:
        if d["kind"] == "Secret":
            out[d["metadata"]["name"]] = set(d.get("data", {})) | set(d.get("stringData", {}))
        if d["kind"] == "Certificate":
            out[d["spec"]["secretName"]] = CERT_MANAGER_KEYS
    return out


def _sources(volume: dict):
    """(kind, name, items) of what a volume is made of."""
    for kind in ("secret", "configMap"):
        if kind in volume:
            src = volume[kind]
            yield kind, src.get("secretName") or src.get("name"), src.get("items")
    for src in volume.get("projected", {}).get("sources", []):
        for kind in ("secret", "configMap"):
            if kind in src:
                yield kind, src[kind]["name"], src[kind].get("items")


@pytest.mark.parametrize("target", TARGETS)
def test_every_reference_resolves(rendered, target):
    docs = rendered[target]
    secrets_ = _secret_keys(docs)
    configmaps = {d["metadata"]["name"]: set(d["data"]) for d in docs if d["kind"] == "ConfigMap"}
    for wl, spec in pods(docs):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        claims = {t["metadata"]["name"] for t in wl["spec"].get("volumeClaimTemplates", [])}
        for c in containers(spec):
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes.keys() | claims, (wl["metadata"]["name"], c["name"], m["name"])
            for e in c.get("env", []):
                assert "secretKeyRef" not in e.get("valueFrom", {}) and "configMapKeyRef" not in e.get("valueFrom", {})
        for v in volumes.values():
            for kind, name, items in _sources(v):
                have = (secrets_ if kind == "secret" else configmaps).get(name)
                assert have is not None, f"{wl['metadata']['name']}: {kind} {name} is made by nothing"
                assert items is None or {i["key"] for i in items} <= have, (name, items, have)
    for d in docs:
        if d["kind"] == "Service":
            sel = d["spec"]["selector"].items()
            matched = [spec for wl, spec in pods(docs) if sel <= wl["spec"]["template"]["metadata"]["labels"].items()]
            assert matched, d["metadata"]["name"]
            ports = {p["name"] for spec in matched for c in spec["containers"] for p in c.get("ports", [])}
            assert {p["targetPort"] for p in d["spec"]["ports"]} <= ports
        if d["kind"] == "Certificate":
            ref = d["spec"]["issuerRef"]
            assert ref["kind"] == "Issuer" and named(docs, "Issuer", ref["name"]), ref
        if d["kind"] == "Issuer" and "ca" in d["spec"]:
            made = {c["spec"]["secretName"] for c in docs if c["kind"] == "Certificate"}
            assert d["spec"]["ca"]["secretName"] in made


@pytest.mark.parametrize("target", TARGETS)
def test_containers_are_locked_down_and_probed_on_healthz(rendered, target):
    for wl, spec in pods(rendered[target]):
        assert spec.get("automountServiceAccountToken") is False or wl["metadata"]["name"] == "layerswarm-redis"
        for c in containers(spec):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
            assert c["resources"]["limits"]["memory"] and c["resources"]["requests"]["cpu"]
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                get = c.get(probe, {}).get("httpGet")
                assert get is None or get["path"] == "/healthz", (c["name"], probe)   # GET /v2/ answers 401
    tracker = named(rendered[target], "Deployment", "layerswarm-tracker")["spec"]["template"]["spec"]["containers"][0]
    https = any(e["name"] == "LAYERSWARM_TRACKER_TLS_CERT" for e in tracker.get("env", []))
    assert tracker["readinessProbe"]["httpGet"].get("scheme", "HTTP") == ("HTTPS" if https else "HTTP")
    bridge = named(rendered[target], "DaemonSet", "layerswarm-bridge")["spec"]["template"]["spec"]["containers"][0]
    client = {p["name"]: p["containerPort"] for p in bridge["ports"]}["client"]
    assert bridge["livenessProbe"]["httpGet"]["port"] == "client" and client == 5000


def _expand(text: str, env: dict) -> str:
    """Kubernetes' $(VAR) in env values, commands and arguments."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), text)


def _environment(c: dict) -> dict:
    env: dict = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = _expand(e["value"], env)
        else:
            env[e["name"]] = POD_FIELDS[e["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def _volume_files(volume: dict, docs, box: Sandbox) -> dict:
    """Relative path -> content, as the kubelet would lay the volume out (Secrets nobody renders: made up)."""
    out = {}
    for kind, name, items in _sources(volume):
        obj = named(docs, "Secret" if kind == "secret" else "ConfigMap", name)
        if obj is not None:
            data = ({k: base64.b64decode(v) for k, v in obj.get("data", {}).items()} if kind == "secret"
                    else {k: box.rewrite(v) for k, v in obj["data"].items()})
        elif set(i["key"] for i in items or ()) <= CERT_MANAGER_KEYS and items:
            data = box.tls_files(name)
        else:
            data = {i["key"]: token() for i in items or ()}
        for key, content in data.items():
            paths = [i["path"] for i in items if i["key"] == key] if items else [key]
            out.update({p: content for p in paths})
    return out


@pytest.mark.parametrize("target", TARGETS)
def test_every_container_command_passes_check_config(rendered, target, tmp_path, monkeypatch):
    docs, checked = rendered[target], []
    for wl, spec in pods(docs):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in containers(spec):
            if c["image"].startswith("redis:"):
                continue
            mounts = c.get("volumeMounts", [])
            box = Sandbox(tmp_path / wl["metadata"]["name"] / c["name"], [m["mountPath"] for m in mounts])
            for m in mounts:
                for rel, content in _volume_files(volumes[m["name"]], docs, box).items():
                    box.write(f"{m['mountPath']}/{rel}", content)
            env = _environment(c)
            argv = [_expand(a, env) for a in c.get("command", []) + c.get("args", [])]
            line = check_command(argv, env, box, monkeypatch)
            checked.append((c["name"], line))
    assert sorted(name for name, _ in checked) == ["bridge", "hosts-toml", "tracker"]
    lines = dict(checked)
    assert "bridge node-a" in lines["bridge"] and "docker.io" in lines["hosts-toml"]
    secure = target == "overlays/secure"
    assert ("secure mode (CN layerswarm-host-node-a" in lines["bridge"]) == secure
    assert ("secure fleet mode" in lines["tracker"]) == secure
    assert "store redis://layerswarm-redis:6379/0" in lines["tracker"]
