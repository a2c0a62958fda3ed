#!/usr/bin/env python3
"""Add a fixed delay to a host's outgoing packets without netem: NFQUEUE plus a verdict loop.

    python3 _nfqdelay.py --delay-ms 20 --duration 30 --queue 4242 --dest 10.0.0.2,10.0.0.3

Copied to a host by ``fab run --chaos delay:...`` where the kernel has no netem qdisc
(``tc qdisc add ... netem`` -> "Specified qdisc kind is unknown").  Packets to the
``--dest`` addresses go through an iptables ``NFQUEUE --queue-bypass`` rule (the kernel's
xt NFQUEUE target); this process binds the queue, receives only each packet's id (metadata,
no payload copy) and gives the verdict ACCEPT *delay* ms after the packet arrived, in
batches (one ``VERDICT_BATCH`` accepts every id up to the last one due).  The packets stay
in the kernel meanwhile: nothing is relayed in user space.

Owns its rule: inserted once the queue is bound, removed on exit (SIGTERM, --duration,
error), pending packets accepted first.  If this process dies by SIGKILL the rule stays
but ``--queue-bypass`` lets packets through undelayed.  Prints one JSON line at start
(``{"ready": ...}``) and one at exit (packets delayed, batches, errors).  stdlib only.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG, NFQNL_MSG_VERDICT_BATCH = 0, 1, 2, 3
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN, NFQA_CFG_MASK, NFQA_CFG_FLAGS = 1, 2, 3, 4, 5
NFQNL_CFG_CMD_BIND, NFQNL_CFG_CMD_UNBIND = 1, 2
NFQNL_COPY_META = 1
NFQA_CFG_F_FAIL_OPEN, NFQA_CFG_F_GSO = 1, 4
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NF_ACCEPT = 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR, NLMSG_DONE = 2, 3
QUEUE_MAXLEN = 65536


def _attr(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * (-n % 4)


def _msg(msg: int, queue: int, attrs: bytes, flags: int = NLM_F_REQUEST, seq: int = 0) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg, flags, seq, 0) + body


class Queue:
    """One bound NFQUEUE; ``recv_ids()`` yields packet ids, ``accept_upto(id)`` releases them."""

    def __init__(self, num: int) -> None:
        self.num = num
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind((0, 0))
        self.seq = 0
        self.enobufs = 0
        self._config(_attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, 0)))
        self._config(
            _attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))
            + _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", QUEUE_MAXLEN))
            + _attr(NFQA_CFG_MASK, struct.pack("!I", NFQA_CFG_F_GSO | NFQA_CFG_F_FAIL_OPEN))
            + _attr(NFQA_CFG_FLAGS, struct.pack("!I", NFQA_CFG_F_GSO | NFQA_CFG_F_FAIL_OPEN))
        )

    def _config(self, attrs: bytes) -> None:
        self.seq += 1
        self.sock.send(_msg(NFQNL_MSG_CONFIG, self.num, attrs, NLM_F_REQUEST | NLM_F_ACK, self.seq))
        data = self.sock.recv(65536)
        _, kind = struct.unpack_from("=IH", data)
        if kind == NLMSG_ERROR:
            err = struct.unpack_from("=i", data, 16)[0]
            if err:
                raise OSError(-err, f"NFQUEUE {self.num} config: {os.strerror(-err)}")

    def recv_ids(self) -> list[int]:
        try:
            data = self.sock.recv(1 << 20)
        except OSError as exc:
            if exc.errno == 105:  # ENOBUFS: messages dropped; their packets are released by a later batch
                self.enobufs += 1
                return []
            raise
        ids = []
        off = 0
        while off + 16 <= len(data):
            n, kind = struct.unpack_from("=IH", data, off)
            if n < 16:
                break
            if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                a = off + 20
                while a + 4 <= off + n:
                    alen, atype = struct.unpack_from("=HH", data, a)
                    if alen < 4:
                        break
                    if atype & 0x3FFF == NFQA_PACKET_HDR:
                        ids.append(struct.unpack_from("!I", data, a + 4)[0])
                        break
                    a += (alen + 3) & ~3
            off += (n + 3) & ~3
        return ids

    def accept_upto(self, packet_id: int) -> None:
        self.sock.send(
            _msg(NFQNL_MSG_VERDICT_BATCH, self.num, _attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, packet_id)))
        )

    def close(self) -> None:
        try:
            self._config(_attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_UNBIND, 0)))
        except OSError:
            pass
        self.sock.close()


def _iptables() -> str:
    for exe in ("iptables", "iptables-legacy"):
        for d in ("/usr/sbin", "/sbin", "/usr/bin"):
            if os.path.exists(os.path.join(d, exe)):
                return os.path.join(d, exe)
    raise SystemExit("nfqdelay: iptables not found: install the iptables package (the tuning role does)")


def _rule(ipt: str, op: str, dest: str, queue: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [ipt, "-w", "5", op, "OUTPUT", "-d", dest, "-j", "NFQUEUE", "--queue-num", str(queue), "--queue-bypass"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


class _Stop(Exception):
    pass


def _on_term(signum: int, frame: object) -> None:
    raise _Stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--delay-ms", type=float, required=True)
    ap.add_argument("--duration", type=float, required=True, help="seconds, then remove the rule and exit")
    ap.add_argument("--queue", type=int, default=4242)
    ap.add_argument("--dest", required=True, help="comma-separated addresses whose packets are delayed")
    a = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    delay = a.delay_ms / 1000.0
    q = Queue(a.queue)
    ipt = _iptables()
    pending: collections.deque[tuple[float, int]] = collections.deque()
    stats = {"packets": 0, "batches": 0}
    inserted = False
    try:
        res = _rule(ipt, "-I", a.dest, a.queue)
        if res.returncode != 0:
            raise SystemExit(f"nfqdelay: {ipt} -I OUTPUT ... NFQUEUE failed: {res.stderr.strip()}")
        inserted = True
        print(
            json.dumps({"ready": True, "pid": os.getpid(), "queue": a.queue, "delay_ms": a.delay_ms, "iptables": ipt}),
            flush=True,
        )
        end = time.monotonic() + a.duration
        while True:
            now = time.monotonic()
            if now >= end:
                break
            wait = min(end - now, (pending[0][0] - now) if pending else 0.05)
            ready, _, _ = select.select([q.sock], [], [], max(0.0, wait))
            now = time.monotonic()
            if ready:
                for pid in q.recv_ids():
                    pending.append((now + delay, pid))
                    stats["packets"] += 1
            last = None
            while pending and pending[0][0] <= now:
                last = pending.popleft()[1]
            if last is not None:
                q.accept_upto(last)
                stats["batches"] += 1
    except _Stop:
        pass
    finally:
        if pending:
            q.accept_upto(pending[-1][1])
        if inserted:
            res = _rule(ipt, "-D", a.dest, a.queue)
            stats["rule_removed"] = res.returncode == 0
            if res.returncode != 0:
                stats["rule_error"] = res.stderr.strip()
        q.close()
        stats["enobufs"] = q.enobufs
        print(json.dumps(stats), flush=True)
    return 0 if stats.get("rule_removed", True) else 1


if __name__ == "__main__":
    sys.exit(main())
