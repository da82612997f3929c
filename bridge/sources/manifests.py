"""Manifests: an on-disk content-addressed cache plus the upstream logic.

* By digest: immutable.  Cached on disk at
  ``<store>/manifests/sha256/<hex>`` (+ ``<hex>.type`` for the media type);
  the path comes only from a validated :class:`Digest`; writes are atomic
  (temp file + rename); every fetched body is checked to hash to its digest.
* By tag: mutable.  Resolved with an upstream ``HEAD`` (cheap; Docker Hub
  rate-limits GETs), the answer (digest, type, size) cached in memory for
  ``tag_ttl`` seconds per (upstream, repo, tag, Accept set); the body then
  comes from the disk cache or one GET by digest.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from layerswarm.bridge.format import errors
from layerswarm.bridge.format.digest import Digest
from layerswarm.bridge.format.errors import InvalidDigest
from layerswarm.bridge.format.mediatypes import DOCKER_SCHEMA1_SIGNED, GENERIC_TYPES
from layerswarm.bridge.format.names import Reference
from layerswarm.bridge.sources.upstream import UpstreamClient

log = logging.getLogger("layerswarm.manifests")

MAX_TAG_ENTRIES = 10000


@dataclass
class Manifest:
    digest: Digest
    media_type: str
    size: int
    body: bytes | None = None  # None when answering HEAD


class ManifestStore:
    """Content-addressed manifest files under ``<root>/manifests/sha256``."""

    def __init__(self, root: str | os.PathLike):
        self.dir = Path(root) / "manifests" / "sha256"
        self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, digest: Digest) -> Path:
        return self.dir / Digest(digest.hex).hex  # re-validated: only 64 hex chars reach the filesystem

    def get(self, digest: Digest) -> Manifest | None:
        p = self._path(digest)
        try:
            body = p.read_bytes()
            media_type = (p.with_name(p.name + ".type")).read_text().strip()
        except FileNotFoundError:
            return None
        if Digest.of_bytes(body) != digest:  # torn or tampered: drop it
            p.unlink(missing_ok=True)
            return None
        return Manifest(digest, media_type or _media_type_of(body), len(body), body)

    def put(self, digest: Digest, media_type: str, body: bytes) -> None:
        if Digest.of_bytes(body) != digest:
            raise errors.DigestMismatch(f"manifest does not hash to {digest}")
        p = self._path(digest)
        _atomic_write(p.with_name(p.name + ".type"), media_type.encode())
        _atomic_write(p, body)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _media_type_of(body: bytes) -> str:
    try:
        mt = json.loads(body).get("mediaType")
        if isinstance(mt, str) and mt:
            return mt
    except (ValueError, AttributeError):
        pass
    return DOCKER_SCHEMA1_SIGNED


def _content_type(resp, body: bytes | None) -> str:
    ct = resp.headers.get("Content-Type", "").split(";")[0].strip()
    if ct in GENERIC_TYPES and body is not None:
        return _media_type_of(body)
    return ct or "application/octet-stream"


class ManifestService:
    """``shared`` (optional, e.g. the tracker client) has ``get_manifest(digest) -> (type, body) | None``
    and ``put_manifest(digest, type, body)``: manifests by digest are immutable, so a fleet can share
    them and the upstream sees one GET per manifest.  Failures there never fail a request.

    ``holdings`` (the authz Gate) keeps which manifests and blobs the upstream holds in which
    repository: a manifest answered from the disk cache or the fleet under R must be one U holds
    in R; one U answered under R is recorded, with everything it names.  Calls take the client's
    ``grant`` (upstream, repository, the authorization fetches use, whether R may be shared)."""

    def __init__(self, store: ManifestStore, tag_ttl: float, max_bytes: int, metrics=None, shared=None,
                 holdings=None):
        self.shared = shared
        self.holdings = holdings
        self.store = store
        self.tag_ttl = tag_ttl
        self.max_bytes = max_bytes
        self.metrics = metrics
        self._tags = {}  # key -> (Manifest without body, expires_at)
        self._lock = threading.Lock()

    def _count(self, what: str) -> None:
        if self.metrics:
            self.metrics.manifest(what)

    def get(self, grant, ref: Reference, accept: list, head: bool) -> Manifest:
        up, repo = grant.upstream, grant.repo
        headers = {"Accept": ", ".join(accept)} if accept else {}
        if ref.digest is not None:
            m = self.store.get(ref.digest)
            if m is not None:
                self._count("hit")
                return self._served(grant, m, head, confirm=True)
            self._count("miss")
            if head:
                m = self._from_shared(ref.digest)
                if m is not None:
                    return self._served(grant, m, True, confirm=True)
                return self._served(grant, self._head(grant, str(ref.digest), headers, ref.digest), True)
            return self._fetch(grant, ref.digest, headers)

        key = (up.name, repo, ref.tag, tuple(sorted(set(accept))))
        now = time.monotonic()
        with self._lock:
            hit = self._tags.get(key)
        if hit and hit[1] > now:
            self._count("tag_hit")
            meta = hit[0]
        else:
            meta = self._head(grant, ref.tag, headers, None, allow_missing_digest=True)
            if meta is None:  # upstream HEAD gave no digest: GET by tag and hash it ourselves
                m = self._fetch(grant, None, headers, ref.tag)
                self._remember(key, m)
                return _strip(m, head)
            self._remember(key, meta)
        # U answered the tag under R: the digest is held there, whatever cache gives the body.
        m = self.store.get(meta.digest)
        if head:
            return self._served(grant, m or meta, True)
        if m is not None:
            self._count("hit")
            return self._served(grant, m, False)
        self._count("miss")
        return self._fetch(grant, meta.digest, headers, confirmed=True)

    def _served(self, grant, m: Manifest, head: bool, confirm: bool = False) -> Manifest:
        """``m`` goes to a client under the grant's repository: check (``confirm``) and record that
        the upstream holds it there."""
        if self.holdings is not None:
            if confirm:
                self.holdings.require(grant, "manifests", m.digest)
            self.holdings.record(grant.upstream, grant.repo, m.digest, m.body)
        return _strip(m, head)

    def _remember(self, key, m: Manifest) -> None:
        if self.tag_ttl <= 0:
            return
        meta = Manifest(m.digest, m.media_type, m.size)
        with self._lock:
            if len(self._tags) >= MAX_TAG_ENTRIES:
                now = time.monotonic()
                self._tags = {k: v for k, v in self._tags.items() if v[1] > now}
                if len(self._tags) >= MAX_TAG_ENTRIES:
                    self._tags.clear()
            self._tags[key] = (meta, time.monotonic() + self.tag_ttl)

    def _head(self, grant, ref_text, headers, digest, allow_missing_digest=False) -> Manifest | None:
        up, repo = grant.upstream, grant.repo
        r = up.request("HEAD", repo, f"manifests/{ref_text}", headers, kind="manifest", auth=grant.fetch_auth)
        if r.status_code == 405 and allow_missing_digest:
            r.close()
            return None
        up.raise_for_status(r, errors.manifest_unknown(ref_text))
        r.close()
        try:
            got = Digest.parse(r.headers.get("Docker-Content-Digest", ""))
        except InvalidDigest:
            got = None
        size = r.headers.get("Content-Length", "")
        if got is not None and size.isdigit() and (digest is None or got == digest):
            return Manifest(got, _content_type(r, None), int(size))
        if got is None or not size.isdigit():  # upstream HEAD without usable headers
            if allow_missing_digest:
                return None  # caller GETs by tag and hashes the body
            return _strip(self._fetch_upstream(grant, digest, headers), True)
        raise errors.upstream_unavailable(f"upstream {up.name}: HEAD {digest} answered digest {got}", 502)

    def _from_shared(self, digest: Digest) -> Manifest | None:
        try:
            got = self.shared.get_manifest(digest) if self.shared is not None else None
        except Exception as exc:  # noqa: BLE001 - the upstream is the fallback
            log.info("shared manifest %s unavailable: %s", digest, exc)
            return None
        if got is None or Digest.of_bytes(got[1]) != digest:
            return None
        mt = got[0] if got[0] not in GENERIC_TYPES else _media_type_of(got[1])
        self.store.put(digest, mt, got[1])
        self._count("shared")
        return Manifest(digest, mt, len(got[1]), got[1])

    def _share(self, m: Manifest) -> None:
        if self.shared is None:
            return
        try:
            self.shared.put_manifest(m.digest, m.media_type, m.body)
        except Exception as exc:  # noqa: BLE001 - sharing is an optimisation
            log.info("could not share manifest %s: %s", m.digest, exc)

    def _fetch(self, grant, digest: Digest | None, headers, tag: str | None = None,
               confirmed: bool = False) -> Manifest:
        """The body from the fleet or the upstream; ``confirmed``: U already said R holds ``digest``."""
        if digest is not None:
            m = self._from_shared(digest)
            if m is not None:
                return self._served(grant, m, False, confirm=not confirmed)
        m = self._fetch_upstream(grant, digest, headers, tag)
        if grant.shareable:     # open mode: a private repository's manifests stay off the tracker
            self._share(m)
        return self._served(grant, m, False)

    def _fetch_upstream(self, grant, digest: Digest | None, headers, tag: str | None = None) -> Manifest:
        up, repo = grant.upstream, grant.repo
        ref_text = str(digest) if digest is not None else tag
        r = up.request("GET", repo, f"manifests/{ref_text}", headers, stream=True, kind="manifest",
                       auth=grant.fetch_auth)
        up.raise_for_status(r, errors.manifest_unknown(ref_text))
        try:
            body = bytearray()
            for chunk in r.iter_content(64 * 1024):
                body += chunk
                if len(body) > self.max_bytes:
                    raise errors.upstream_unavailable(f"upstream {up.name}: manifest larger than "
                                                      f"{self.max_bytes} bytes", 502)
        except errors.RegistryError:
            raise
        except Exception as exc:
            raise errors.upstream_unavailable(f"upstream {up.name}: manifest read failed: "
                                              f"{exc.__class__.__name__}", 504 if "Timeout" in
                                              exc.__class__.__name__ else 502) from None
        finally:
            r.close()
        body = bytes(body)
        actual = Digest.of_bytes(body)
        if digest is None:
            claimed = r.headers.get("Docker-Content-Digest")
            if claimed and claimed != str(actual):
                raise errors.upstream_unavailable(f"upstream {up.name}: manifest {tag} does not hash to "
                                                  f"its Docker-Content-Digest", 502)
            digest = actual
        elif actual != digest:
            raise errors.upstream_unavailable(f"upstream {up.name}: manifest does not hash to {digest}", 502)
        mt = _content_type(r, body)
        self.store.put(digest, mt, body)
        return Manifest(digest, mt, len(body), body)


def _strip(m: Manifest, head: bool) -> Manifest:
    return Manifest(m.digest, m.media_type, m.size) if head else m
