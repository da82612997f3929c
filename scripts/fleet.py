"""A simulated fleet of hosts in network namespaces, with capped links.

Everything lives in namespaces this module creates, so the root namespace is
never touched (no interface, address, route or tc rule is added there):

* one *switch* namespace ``<prefix>-sw`` holding a Linux bridge ``br0``;
* one namespace per host ``<prefix>-<name>``, linked to the switch by a veth
  pair (``eth0`` inside the host, ``p<k>`` on the switch), with an address in
  ``10.254.0.0/24`` (only these namespaces hold it) and ``lo`` up;
* a capped link per host: an HTB tree on *both* ends of the veth — the host's
  ``eth0`` egress is its upload, the switch port's egress is its download.

Each HTB tree is ``1:1`` (the link rate) with two leaves: ``1:10`` for traffic
whose TCP source port is the host's *counted port* (e.g. the registry on the
origin host) and ``1:20`` for everything else; both may borrow the whole
link. ``tc -s class show`` counters on ``1:10`` are then the bytes the
counted server sent, with L2+L3+L4 headers: ``HEADER_BYTES`` per packet
(Ethernet 14 + IPv4 20 + TCP with timestamps 32), which :meth:`Fleet.counters`
subtracts to give TCP payload bytes.

Namespaces are named ``<prefix>-<name>`` with ``prefix = lsb-<pid>`` so
parallel runs never collide; :func:`cleanup` removes leftovers of runs whose
process is gone (or all of them with ``force``).  Deleting a namespace takes
its veth ends, its bridge and its tc rules with it.

Importable by the benchmark and by tests; ``python scripts/fleet.py
--cleanup`` removes leftovers by hand.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

PREFIX_ROOT = "lsb"
HEADER_BYTES = 14 + 20 + 32  # Ethernet + IPv4 + TCP with timestamps, per packet on the wire
SUBNET = "10.254.0"
_NS_RE = re.compile(r"^%s-(\d+)-" % PREFIX_ROOT)


def sh(*argv, check: bool = True, timeout: float = 30, input: str | None = None) -> str:
    r = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, input=input)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def list_namespaces(prefix: str = PREFIX_ROOT + "-") -> list:
    out = sh("ip", "netns", "list", check=False)
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix)]


def ns_pids(ns: str) -> list:
    out = sh("ip", "netns", "pids", ns, check=False)
    return [int(p) for p in out.split() if p.isdigit()]


def kill_ns_processes(ns: str, grace: float = 3.0) -> None:
    """SIGTERM then SIGKILL every process inside namespace ``ns`` (all of them are ours)."""
    pids = ns_pids(ns)
    for p in pids:
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if _alive(p)]
        time.sleep(0.05)
    for p in ns_pids(ns):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def delete_namespace(ns: str) -> None:
    kill_ns_processes(ns)
    for _ in range(20):
        r = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True)
        if r.returncode == 0 or ns not in list_namespaces(ns):
            return
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cleanup(prefix: str | None = None, force: bool = False) -> list:
    """Remove fleet namespaces (and their processes, links, tc rules) left by dead runs.

    ``prefix`` limits it to one run (``lsb-<pid>``); ``force`` also removes those of live runs.
    Returns the names removed.
    """
    removed = []
    for ns in list_namespaces((prefix + "-") if prefix else PREFIX_ROOT + "-"):
        m = _NS_RE.match(ns)
        if m and not force and not prefix and _alive(int(m.group(1))):
            continue  # a live run owns it
        delete_namespace(ns)
        removed.append(ns)
    return removed


def mbit(bytes_per_s: float) -> str:
    return "%dbit" % int(bytes_per_s * 8)


@dataclass
class Host:
    name: str
    ns: str
    ip: str
    port_dev: str  # the switch-side veth end
    up_Bps: float
    down_Bps: float
    counted_port: int | None = None
    meta: dict = field(default_factory=dict)

    def argv(self, *argv) -> list:
        """``argv`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.ns, *map(str, argv)]


class Fleet:
    """Create hosts with capped links; :meth:`destroy` (or the context manager) removes everything."""

    def __init__(self, prefix: str | None = None, mtu: int = 1500):
        self.prefix = prefix or f"{PREFIX_ROOT}-{os.getpid()}"
        self.switch = f"{self.prefix}-sw"
        self.mtu = mtu
        self.hosts: dict = {}
        self._next_port = 0
        self._created = False

    # -- lifecycle --------------------------------------------------------------------
    def create(self) -> "Fleet":
        sh("ip", "netns", "add", self.switch)
        self._created = True
        sw = ("ip", "-n", self.switch)
        sh(*sw, "link", "set", "lo", "up")
        sh(*sw, "link", "add", "br0", "type", "bridge", "forward_delay", "0", "stp_state", "0")
        sh(*sw, "link", "set", "br0", "up")
        return self

    def __enter__(self) -> "Fleet":
        return self.create()

    def __exit__(self, *exc) -> None:
        self.destroy()

    def destroy(self) -> None:
        for ns in list_namespaces(self.prefix + "-"):
            delete_namespace(ns)
        self.hosts.clear()

    def namespaces(self) -> list:
        return list_namespaces(self.prefix + "-")

    # -- hosts ------------------------------------------------------------------------
    def add_host(self, name: str, octet: int, up_Bps: float, down_Bps: float,
                 counted_port: int | None = None) -> Host:
        ns = f"{self.prefix}-{name}"
        self._next_port += 1
        pdev = f"p{self._next_port}"
        ip = f"{SUBNET}.{octet}"
        sh("ip", "netns", "add", ns)
        h = ("ip", "-n", ns)
        sw = ("ip", "-n", self.switch)
        sh(*sw, "link", "add", pdev, "mtu", self.mtu, "type", "veth", "peer", "name", "eth0", "mtu", self.mtu,
           "netns", ns)
        sh(*sw, "link", "set", pdev, "master", "br0")
        sh(*sw, "link", "set", pdev, "up")
        sh(*h, "link", "set", "lo", "up")
        sh(*h, "addr", "add", f"{ip}/24", "dev", "eth0")
        sh(*h, "link", "set", "eth0", "up")
        host = Host(name, ns, ip, pdev, up_Bps, down_Bps, counted_port)
        self._shape(ns, "eth0", up_Bps, counted_port)
        self._shape(self.switch, pdev, down_Bps, None)
        self.hosts[name] = host
        return host

    def add_lab(self, name: str) -> Host:
        """A namespace with only ``lo`` (unshaped loopback measurements)."""
        ns = f"{self.prefix}-{name}"
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        host = Host(name, ns, "127.0.0.1", "", 0, 0)
        self.hosts[name] = host
        return host

    @staticmethod
    def _shape(ns: str, dev: str, rate_Bps: float, port: int | None) -> None:
        tc = ("ip", "netns", "exec", ns, "tc")
        rate = mbit(rate_Bps)
        # burst: ~4 ms of the rate (at least 32 KiB) so HTB keeps up with 64 KiB GSO packets
        burst = "%db" % max(32768, int(rate_Bps * 0.004))
        half = mbit(rate_Bps / 2)
        sh(*tc, "qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "20")
        sh(*tc, "class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb",
           "rate", rate, "ceil", rate, "burst", burst, "cburst", burst)
        for leaf in ("10", "20"):
            sh(*tc, "class", "add", "dev", dev, "parent", "1:1", "classid", f"1:{leaf}", "htb",
               "rate", half, "ceil", rate, "burst", burst, "cburst", burst)
            sh(*tc, "qdisc", "add", "dev", dev, "parent", f"1:{leaf}", "handle", f"{leaf}:", "pfifo", "limit", "1000")
        if port:
            sh(*tc, "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1", "u32",
               "match", "ip", "protocol", "6", "0xff", "match", "ip", "sport", str(port), "0xffff",
               "flowid", "1:10")

    # -- counters ---------------------------------------------------------------------
    @staticmethod
    def class_stats(ns: str, dev: str) -> dict:
        """{classid: (bytes, packets)} from ``tc -s class show``."""
        out = sh("ip", "netns", "exec", ns, "tc", "-s", "class", "show", "dev", dev)
        stats = {}
        cur = None
        for line in out.splitlines():
            m = re.match(r"class htb (\S+)", line.strip())
            if m:
                cur = m.group(1)
                continue
            m = re.match(r"Sent (\d+) bytes (\d+) pkt", line.strip())
            if m and cur:
                stats[cur] = (int(m.group(1)), int(m.group(2)))
                cur = None
        return stats

    def counters(self, host: Host) -> dict:
        """Bytes a host sent: all (``up``), by its counted port (``port``), and payload estimates."""
        up = self.class_stats(host.ns, "eth0")
        down = self.class_stats(self.switch, host.port_dev)
        tot_b, tot_p = up.get("1:1", (0, 0))
        port_b, port_p = up.get("1:10", (0, 0))
        return {
            "up_bytes": tot_b, "up_pkts": tot_p,
            "port_bytes": port_b, "port_pkts": port_p,
            "port_payload": port_b - port_p * HEADER_BYTES,
            "down_bytes": down.get("1:1", (0, 0))[0],
        }

    def snapshot(self) -> dict:
        return {name: self.counters(h) for name, h in self.hosts.items() if h.port_dev}

    @staticmethod
    def delta(before: dict, after: dict) -> dict:
        return {name: {k: after[name][k] - before.get(name, {}).get(k, 0) for k in after[name]}
                for name in after}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="fleet namespaces: list or clean up leftovers")
    ap.add_argument("--cleanup", action="store_true", help="remove namespaces of runs that are gone")
    ap.add_argument("--force", action="store_true", help="with --cleanup: also those of live runs")
    args = ap.parse_args(argv)
    if args.cleanup:
        print(json.dumps({"removed": cleanup(force=args.force)}))
    else:
        print(json.dumps({"namespaces": list_namespaces()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
