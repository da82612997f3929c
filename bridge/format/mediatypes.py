"""Media types of images: the one list of manifest and index types we read, write and forward."""
from __future__ import annotations

import json

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = INDEX_TYPES + (OCI_MANIFEST, DOCKER_MANIFEST)
# Content types that say nothing about a manifest: the body's own mediaType decides.
GENERIC_TYPES = ("", "application/octet-stream", "text/plain", "application/json")


def _document(body: bytes | None) -> dict:
    try:
        doc = json.loads(body) if body else None
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def layer_digests(body: bytes | None) -> list:
    """The layer digests of an image manifest, in order, as text (none for an index or junk)."""
    layers = _document(body).get("layers")
    if not isinstance(layers, list):
        return []
    return [d["digest"] for d in layers if isinstance(d, dict) and isinstance(d.get("digest"), str)]


def referenced_digests(body: bytes | None) -> list:
    """The digests a manifest or index names (config, layers, child manifests; schema 1 blobSums), as text.

    Whatever an upstream served under a repository it holds there, so these are what a client
    authorized for that repository may read next.  Junk yields nothing."""
    doc = _document(body)
    out = []
    config = doc.get("config")
    if isinstance(config, dict):
        out.append(config.get("digest"))
    for key in ("layers", "manifests", "blobs"):
        items = doc.get(key)
        if isinstance(items, list):
            out.extend(d.get("digest") for d in items if isinstance(d, dict))
    layers = doc.get("fsLayers")
    if isinstance(layers, list):
        out.extend(d.get("blobSum") for d in layers if isinstance(d, dict))
    return [d for d in out if isinstance(d, str)]
