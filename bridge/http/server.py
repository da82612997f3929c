"""The bridge's server: one process that owns the host's peer and serves two listeners.

The client API (``--listen``, loopback by default) and, with a tracker, the
fleet listener (``--fleet-listen``: the relay other bridges stream from) each
get their own loop and thread pool (``wsgi.Listener``: why not gunicorn is
said there), so a crowd on one cannot starve the other.  One process: the
libtorrent session lives here.  SIGTERM/SIGINT: stop accepting, give
in-flight requests ``graceful_timeout`` seconds, close the peer.
"""
from __future__ import annotations

import gc
import logging
import signal
import threading

from layerswarm.bridge import config as bconfig
from layerswarm.bridge.format.errors import UserError
from layerswarm.bridge.format.rlimits import keep_freed_memory, raise_open_file_limit
from layerswarm.bridge.http.wsgi import Listener

log = logging.getLogger("layerswarm.serve")


def build_peer(cfg: bconfig.BridgeConfig):
    """The host's one Peer: libtorrent session + layer store + tracker client."""
    from layerswarm.bridge.node.peer import Peer
    peer = Peer.open(cfg.server.store_dir, cfg.swarm.tracker, publish_token=cfg.swarm.publish_token,
                     host_id=cfg.host_id, cache_max=cfg.swarm.cache_max, session=cfg.session, stream=cfg.stream,
                     tracker_timeout=cfg.tracker_timeout, tls=cfg.fleet.tls(), budgets=cfg.budgets)
    # Re-seed what the store holds without blocking startup (the tracker may be down).
    threading.Thread(target=peer.seed_stored, name="reseed", daemon=True).start()
    return peer


def build_listeners(cfg: bconfig.BridgeConfig, peer=None) -> list:
    """The client listener, and the fleet listener when the host has a peer (not started)."""
    from layerswarm.bridge.http.app import create_app, create_fleet_app
    app = create_app(cfg, peer=peer)
    s, tls = cfg.server, cfg.fleet.tls()
    common = dict(write_timeout=s.write_timeout, idle_timeout=s.idle_timeout, grace=s.graceful_timeout,
                  access_log=s.access_log)
    listeners = [Listener("client", app, s.listen, s.threads, ssl_context=cfg.fleet.client_api_context(), **common)]
    if peer is not None:
        # Secure fleet mode: only hosts with a certificate from the fleet CA get past the handshake.
        listeners.append(Listener("fleet", create_fleet_app(app.extensions["layerswarm"]), s.fleet_listen,
                                  s.fleet_threads, ssl_context=tls.server_context(require=True) if tls else None,
                                  **common))
    return listeners


def start_listeners(cfg: bconfig.BridgeConfig, listeners: list) -> None:
    """Bind and start ``listeners``; a port 0 in the configuration becomes the port bound (so the
    advertised fleet URL names it)."""
    for listener in listeners:
        listener.start()
        field = "listen" if listener.name == "client" else "fleet_listen"
        host = getattr(cfg.server, field).rpartition(":")[0]
        setattr(cfg.server, field, f"{host}:{listener.port}")


def settle_garbage_collector(young: int = 20_000) -> None:
    """What start-up made (modules, the apps, the session) lives as long as the process: frozen, the
    cyclic collector stops walking it on every full collection; and it runs less often (``young``
    new container objects, was 700) while the swarm path makes a few per piece.  A profile of the
    warm rollout found 4-5 % of a bridge's CPU in the collector."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(young, older, oldest)


def serve(cfg: bconfig.BridgeConfig) -> None:
    """Run the bridge in the foreground until SIGTERM/SIGINT."""
    cfg.fleet.tls()   # unreadable certificate files: a clear error before anything starts
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    # Slow clients each hold a descriptor until their idle timeout; the session holds peers' too.
    raise_open_file_limit(8192 + cfg.session.connections_limit)
    keep_freed_memory()   # piece buffers are reused, not faulted in and zeroed again each time
    peer = build_peer(cfg) if cfg.swarm.tracker else None
    listeners = []
    try:
        listeners = build_listeners(cfg, peer)
        settle_garbage_collector()   # before the first request: no client pays for the start-up collection
        # Rotated certificate files: the session's alert thread checks them (FleetTLS.maybe_reload) and
        # reloads every context made from them, the fleet listener's included.
        start_listeners(cfg, listeners)
        ups = cfg.upstreams
        log.info("bridge on http://%s, default upstream %s, aliases %s, store %s", cfg.server.listen,
                 ups.default.url, sorted(n for n in ups.by_name if n != bconfig.DEFAULT_NAME), cfg.server.store_dir)
        if peer is not None:
            log.info("fleet listener on %s (%s), advertised to the tracker as %s", cfg.server.fleet_listen,
                     "secure: fleet certificates only" if cfg.fleet.secure else "open mode", cfg.advertise_url)
        while not stop.wait(1.0):
            pass
        log.info("stopping: in-flight requests get %gs", cfg.server.graceful_timeout)
    finally:
        stop.set()
        for listener in listeners:
            listener.stop()
        if peer is not None:
            peer.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
