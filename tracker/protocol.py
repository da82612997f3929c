"""BitTorrent tracker protocol: typed requests, parsing, sanitizing, encoding.

Pure functions, no I/O.  Query strings are parsed from raw bytes because
info_hash and peer_id are arbitrary binary (Flask's request.args would decode
them as text and mangle them).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

import bencodepy

from layerswarm.tracker.errors import ClientError

EVENTS = {"": "", "started": "started", "stopped": "stopped", "completed": "completed",
          "paused": "paused", "empty": ""}  # BEP 21 paused; "empty" is what some clients send for none
MAX_NUMBER = 1 << 62


def parse_query(qs: bytes, max_len: int) -> dict:
    """Split a raw query string into {name: [raw bytes values]}."""
    if len(qs) > max_len:
        raise ClientError("query string too long")
    out: dict = {}
    if not qs:
        return out
    for part in qs.split(b"&"):
        if not part:
            continue
        key, _, value = part.partition(b"=")
        out.setdefault(unquote_to_bytes(key), []).append(unquote_to_bytes(value))
    return out


def _one(q: dict, name: bytes, required: bool = True):
    values = q.get(name)
    if not values:
        if required:
            raise ClientError(f"missing {name.decode()}")
        return None
    if len(values) > 1:
        raise ClientError(f"{name.decode()} given more than once")
    return values[0]


def _int(q: dict, name: bytes, default=None, lo: int = 0, hi: int = MAX_NUMBER) -> int:
    raw = _one(q, name, required=default is None)
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 19:  # no sign, no spaces, no floats
        raise ClientError(f"invalid {name.decode()}")
    value = int(raw)
    if not lo <= value <= hi:
        raise ClientError(f"{name.decode()} out of range")
    return value


def _hash20(q: dict, name: bytes) -> bytes:
    raw = _one(q, name)
    if len(raw) != 20:
        raise ClientError(f"{name.decode()} must be 20 bytes")
    return raw


def pack_addr(ip: str, port: int) -> bytes:
    """Compact peer form: 4 (IPv4) or 16 (IPv6) address bytes + 2 port bytes."""
    addr = ipaddress.ip_address(ip)
    if addr.version == 6 and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr.packed + port.to_bytes(2, "big")


def unpack_addr(packed: bytes) -> tuple:
    return str(ipaddress.ip_address(packed[:-2])), int.from_bytes(packed[-2:], "big")


@dataclass(frozen=True)
class AnnounceRequest:
    info_hash: bytes
    peer_id: bytes
    addr: bytes       # compact address of the peer (pack_addr)
    left: int
    uploaded: int
    downloaded: int
    event: str
    numwant: int
    compact: bool
    no_peer_id: bool
    owner: bytes = b""   # secure fleet mode: the announcing host's certificate CN

    @property
    def seeder(self) -> bool:
        return self.left == 0

    @property
    def peer_key(self) -> bytes:
        """How stores key a peer: its peer_id, address and owner (secure mode), so a peer_id replayed
        from another address, or by another fleet host behind the same address (an
        ``event=stopped``, say), cannot touch this peer's entry."""
        return self.peer_id + self.addr[:-2] + self.owner


def parse_announce(qs: bytes, remote_addr: str, cfg, owner: str = "") -> AnnounceRequest:
    q = parse_query(qs, cfg.announce.max_query)
    info_hash = _hash20(q, b"info_hash")
    peer_id = _hash20(q, b"peer_id")
    port = _int(q, b"port", lo=1, hi=65535)
    event_raw = _one(q, b"event", required=False) or b""
    event = EVENTS.get(event_raw.decode("latin-1"))
    if event is None:
        raise ClientError("unknown event")
    numwant = _int(q, b"numwant", default=cfg.announce.numwant_default, hi=MAX_NUMBER)
    ip = remote_addr
    if cfg.announce.allow_ip_param:
        given = _one(q, b"ip", required=False)
        if given:
            ip = given.decode("latin-1")
    try:
        addr = pack_addr(ip, port)
    except ValueError:
        raise ClientError("invalid ip") from None
    compact_raw = _one(q, b"compact", required=False)
    return AnnounceRequest(
        info_hash=info_hash, peer_id=peer_id, addr=addr,
        left=_int(q, b"left"), uploaded=_int(q, b"uploaded", default=0),
        downloaded=_int(q, b"downloaded", default=0), event=event,
        numwant=min(numwant, cfg.announce.numwant_max),
        compact=compact_raw != b"0", no_peer_id=_one(q, b"no_peer_id", required=False) == b"1",
        owner=owner.encode())


def parse_scrape(qs: bytes, cfg) -> list | None:
    """The info-hashes asked for, or None for "all swarms"."""
    q = parse_query(qs, cfg.announce.max_query)
    hashes = q.get(b"info_hash")
    if not hashes:
        return None
    if len(hashes) > cfg.announce.max_scrape:
        raise ClientError("too many info_hash values")
    for h in hashes:
        if len(h) != 20:
            raise ClientError("info_hash must be 20 bytes")
    return list(dict.fromkeys(hashes))


@dataclass(frozen=True)
class SwarmCounts:
    complete: int = 0
    incomplete: int = 0
    downloaded: int = 0


def encode_announce(req: AnnounceRequest, peers: list, counts: SwarmCounts, interval: int, min_interval: int,
                    warning: str | None = None) -> bytes:
    """Bencoded reply; ``peers`` is a list of (peer key, compact addr), the key starting with the peer_id;
    ``warning``: a ``warning message`` (clients go on, libtorrent raises a tracker_warning_alert).

    Hand-built (keys in sorted order, as bencode requires) because this is
    the hot path and a generic encoder costs more than the rest of the reply.
    """
    head = b"d8:completei%de10:incompletei%de8:intervali%de12:min intervali%de" % (
        counts.complete, counts.incomplete, interval, min_interval)
    tail = b"e"
    if warning:
        text = warning.encode()
        tail = b"15:warning message%d:%se" % (len(text), text)
    if req.compact:
        v4 = b"".join(a for _, a in peers if len(a) == 6)
        v6 = b"".join(a for _, a in peers if len(a) == 18)
        body = b"5:peers%d:%s" % (len(v4), v4)
        if v6:
            body += b"6:peers6%d:%s" % (len(v6), v6)
        return head + body + tail
    plist = []
    for pid, a in peers:
        ip, port = unpack_addr(a)
        d = {b"ip": ip.encode(), b"port": port}
        if not req.no_peer_id:
            d[b"peer id"] = pid[:20]
        plist.append(d)
    return head + b"5:peers" + bencodepy.encode(plist) + tail


def encode_scrape(files: dict) -> bytes:
    return bencodepy.encode({b"files": {ih: {b"complete": c.complete, b"downloaded": c.downloaded,
                                             b"incomplete": c.incomplete} for ih, c in files.items()}})


def encode_failure(reason: str, retry_after: int | None = None) -> bytes:
    """A bencoded ``failure reason``.  ``retry_after`` (seconds) for a failure that passes (storage down):
    libtorrent takes a failure's ``interval`` as the time to retry and, without one, its default of
    1800 s, so a seeder refused once would not announce (nor give back a lost torrent) for 30 minutes.
    BEP 31's ``retry in`` (minutes) tells the clients that read it."""
    d = {b"failure reason": reason.encode("utf-8", "replace")}
    if retry_after is not None:
        d[b"interval"] = d[b"min interval"] = retry_after
        d[b"retry in"] = max(1, -(-retry_after // 60))
    return bencodepy.encode(d)
