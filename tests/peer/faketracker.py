"""A minimal in-thread tracker speaking tracker/API.md, for unit-level peer tests.

End-to-end tests use the real ``layerswarm tracker`` process; this stands in
where a test needs to control the tracker's answers (conflicts, reports).
"""
from __future__ import annotations

import socket
import struct
import threading
import time
from urllib.parse import unquote_to_bytes

import bencodepy
from flask import Flask, Response, jsonify, request
from werkzeug.serving import make_server

from layerswarm.bridge.format import layertorrent as tf
from layerswarm.bridge.format.errors import InvalidMetainfo


def _raw_args(qs: bytes) -> dict:
    out = {}
    for part in qs.split(b"&"):
        if b"=" in part:
            k, v = part.split(b"=", 1)
            out.setdefault(k.decode(), []).append(unquote_to_bytes(v))
    return out


class FakeTracker:
    def __init__(self):
        self.metainfo = {}      # digest str -> bytes
        self.peers = {}         # info_hash raw -> {peer_id: (ip, port, left)}
        self.reports = []
        self.app = Flask("faketracker")
        a = self.app

        @a.get("/healthz")
        def healthz():
            return "ok"

        @a.get("/announce")
        def announce():
            args = _raw_args(request.query_string)
            ih = args["info_hash"][0]
            pid = args["peer_id"][0]
            port = int(args["port"][0])
            left = int(args.get("left", [b"0"])[0])
            event = args.get("event", [b""])[0]
            swarm = self.peers.setdefault(ih, {})
            if event == b"stopped":
                swarm.pop(pid, None)
            else:
                swarm[pid] = (request.remote_addr, port, left)
            peers = b"".join(socket.inet_aton(ip) + struct.pack(">H", p)
                             for k, (ip, p, _) in swarm.items() if k != pid)
            body = {b"interval": 5, b"min interval": 1, b"peers": peers,
                    b"complete": sum(1 for v in swarm.values() if v[2] == 0),
                    b"incomplete": sum(1 for v in swarm.values() if v[2] > 0)}
            return Response(bencodepy.encode(body), mimetype="text/plain")

        @a.get("/scrape")
        def scrape():
            args = _raw_args(request.query_string)
            files = {}
            for ih in args.get("info_hash", list(self.peers)):
                swarm = self.peers.get(ih, {})
                files[ih] = {b"complete": sum(1 for v in swarm.values() if v[2] == 0),
                             b"incomplete": sum(1 for v in swarm.values() if v[2] > 0), b"downloaded": 0}
            return Response(bencodepy.encode({b"files": files}), mimetype="text/plain")

        @a.route("/metainfo/<digest>", methods=["GET", "HEAD", "PUT"])
        def metainfo(digest):
            if request.method == "PUT":
                try:
                    new = tf.parse_metainfo(request.get_data())
                except InvalidMetainfo as exc:
                    return jsonify(error=str(exc)), 400
                old = self.metainfo.get(digest)
                if old is not None:
                    o = tf.parse_metainfo(old)
                    if o.info_hash == new.info_hash:
                        return jsonify(info_hash=o.info_hash.hex), 200
                    return jsonify(error="conflict", info_hash=o.info_hash.hex), 409
                self.metainfo[digest] = request.get_data()
                return jsonify(info_hash=new.info_hash.hex), 201
            if digest not in self.metainfo:
                return jsonify(error="not found"), 404
            return Response(self.metainfo[digest], mimetype="application/x-bittorrent")

        @a.post("/metainfo/<digest>/reports")
        def report(digest):
            self.reports.append((digest, request.get_json()))
            return jsonify(quarantined=False)

    def start(self, port: int = 0) -> str:
        self._srv = make_server("127.0.0.1", port, self.app, threaded=True)
        self._t = threading.Thread(target=self._srv.serve_forever, daemon=True)
        self._t.start()
        self.url = f"http://127.0.0.1:{self._srv.server_port}"
        return self.url

    def stop(self) -> None:
        self._srv.shutdown()


if __name__ == "__main__":  # run standalone: python -m tests.peer.faketracker PORT
    import sys
    t = FakeTracker()
    print(t.start(int(sys.argv[1])), flush=True)
    while True:
        time.sleep(3600)
