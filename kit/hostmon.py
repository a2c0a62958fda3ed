"""Per-second CPU, memory and network of one host as JSON lines (``python -m kit.hostmon``).

    python -m kit.hostmon OUT.jsonl --interval 1 --duration 120 [--procs PROCS.txt]

``fab run`` starts one on every host for the length of the run.  Each line is
one sample: wall-clock ``ts``, CPU percent (total and per CPU, since the last
sample), ``cpu_split`` (the host's CPU time since the last sample as user, nice,
system, iowait, irq, softirq, steal: softirq is the kernel's network work, which
no process is charged for), load average, memory, and network byte/packet
counters plus per-second rates for every interface of the host's network
namespace (so a lab host reports its own veth).  The monitor is bounded: it
stops by itself after ``--duration`` seconds (and on SIGTERM/SIGINT), flushing
every line as it goes so a killed monitor still leaves what it measured.  Bad
options exit 2 with one line.  ``monitor_cpu_s`` is the monitor's own CPU
(user+system) so far: what watching cost.

With ``--procs FILE`` each line also carries ``procs``: the CPU, memory,
descriptors and threads of every kit process.  FILE lists ``COMPONENT PID``
lines (component one of :data:`COMPONENTS`); it is re-read at every sample
because ``fab run`` appends the generators once they started.  Each listed PID
is a root: it and all its descendants (parent links of ``/proc/*/stat``, never
process names, which a host shares with unrelated processes) are sampled from
/proc whatever psutil says.  ``cpu_s`` is the process's own utime+stime,
``cpu_children_s`` what its reaped children used (so CPU of a worker that
exited between two samples is not lost); a PID that vanished is simply absent.

With ``--scrape FILE`` each line also carries ``services``: what the host's kit services say of
themselves at that second.  FILE lists ``NAME URL [PREFIX ...]`` lines; each URL is fetched (GET,
:data:`SCRAPE_TIMEOUT` s) and its body kept as numbers: a JSON object's numeric fields (the
services' ``/stats``), or the samples of a Prometheus text page (HAProxy's exporter) whose names
start with one of the PREFIXes, keyed ``name{labels}``.  A ``redis://USER@ADDR:PORT PASSWORD_FILE``
line asks Redis ``INFO`` over one kept connection (RESP, as the read-only monitor user, its password
read from the 0600 file the redis role writes) and keeps :data:`REDIS_FIELDS`.  A target that does
not answer is ``{"error": why}`` for that second; the sample is written all the same.

The file is self-contained (standard library, psutil when importable, else
Linux's /proc directly) so ``fab run`` can copy it to hosts that have no kit
installed (a balancer or Redis host) and run it with their ``python3``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

try:
    import psutil
except ImportError:  # a host without the kit's venv runs this file with the system python3
    psutil = None

__all__ = [
    "sample",
    "sample_procs",
    "read_procs_file",
    "read_scrape_file",
    "scrape",
    "parse_prometheus",
    "monitor",
    "main",
    "COMPONENTS",
    "SCRAPE_TIMEOUT",
]

log = logging.getLogger(__name__)

MAX_DURATION = 7 * 24 * 3600.0
#: seconds one scrape of one service may take (the sample is late by at most this per target)
SCRAPE_TIMEOUT = 0.5
#: what a root PID in a --procs file may be
COMPONENTS = ("client", "sim", "wsproxy", "haproxy", "redis")


_NET_FIELDS = (
    "bytes_recv",
    "packets_recv",
    "errin",
    "dropin",
    None,
    None,
    None,
    None,
    "bytes_sent",
    "packets_sent",
    "errout",
    "dropout",
)


def _net() -> dict[str, Any]:
    if psutil is not None:
        return {nic: c._asdict() for nic, c in psutil.net_io_counters(pernic=True).items()}
    out: dict[str, Any] = {}
    with open("/proc/net/dev") as fh:
        for line in fh.readlines()[2:]:
            nic, _, rest = line.partition(":")
            values = rest.split()
            out[nic.strip()] = {k: int(v) for k, v in zip(_NET_FIELDS, values) if k}
    return out


def _mem() -> dict[str, Any]:
    if psutil is not None:
        vm = psutil.virtual_memory()
        return {"total": vm.total, "available": vm.available, "used": vm.used, "percent": vm.percent}
    info = {}
    with open("/proc/meminfo") as fh:
        for line in fh:
            k, _, v = line.partition(":")
            info[k] = int(v.split()[0]) * 1024
    total, avail = info["MemTotal"], info.get("MemAvailable", info["MemFree"])
    return {
        "total": total,
        "available": avail,
        "used": total - avail,
        "percent": round(100.0 * (total - avail) / total, 1),
    }


#: /proc/stat's first line, in its order (steal since Linux 2.6.11; guest time is inside user already)
_SPLIT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


class _ProcStat:
    """The CPU lines of /proc/stat, read once per sample: the host's busy percent (all CPUs and each, what
    psutil.cpu_percent(None) gives) and where its CPU went (user, system, softirq (the kernel's network work,
    charged to no process), iowait, steal (a VM's hypervisor) ...), both since the last call."""

    def __init__(self) -> None:
        self.prev = self._read()

    @staticmethod
    def _read() -> list[list[int]]:
        rows = []
        with open("/proc/stat") as fh:
            for line in fh:
                if not line.startswith("cpu"):
                    break
                rows.append([int(x) for x in line.split()[1 : 1 + len(_SPLIT_FIELDS)]])
        return rows

    def since_last(self) -> tuple[float, list[float], dict[str, float]]:
        """(all CPUs' busy percent, each CPU's, the split of all of them in percent, idle left out)."""
        now = self._read()
        deltas = [[b - a for a, b in zip(old, new)] for old, new in zip(self.prev, now)]
        self.prev = now
        pcts = []
        for d in deltas:
            dt, idle = sum(d), d[3] + (d[4] if len(d) > 4 else 0)
            pcts.append(round(100.0 * (dt - idle) / dt, 1) if dt > 0 else 0.0)
        first = deltas[0] if deltas else []
        total = sum(first)
        split = {
            k: round(100.0 * v / total, 1) if total > 0 else 0.0 for k, v in zip(_SPLIT_FIELDS, first) if k != "idle"
        }
        return (pcts[0] if pcts else 0.0), pcts[1:], split


_procstat: _ProcStat | None = None


def _cpu() -> tuple[float, list[float], dict[str, float]]:
    """(busy percent of all CPUs, of each, the split) since the last call (psutil's percents where it is
    installed; the split, and the percents without it, from one read of /proc/stat)."""
    global _procstat
    if _procstat is None:
        _procstat = _ProcStat()
    total, per_cpu, split = _procstat.since_last()
    if psutil is not None:
        total, per_cpu = psutil.cpu_percent(interval=None), psutil.cpu_percent(interval=None, percpu=True)
    return total, per_cpu, split


def read_procs_file(path: Path) -> list[tuple[str, int]]:
    """``(component, pid)`` roots listed in *path*, in order, without repeats; [] while it is missing.

    Lines that are not ``COMPONENT PID`` (blank, comments, a line being appended) are skipped.
    """
    try:
        text = path.read_text()
    except OSError:
        return []
    roots: list[tuple[str, int]] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in COMPONENTS and parts[1].isdigit() and int(parts[1]) > 0:
            root = (parts[0], int(parts[1]))
            if root not in roots:
                roots.append(root)
    return roots


_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 = state, 1 = ppid), None once gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read().decode(errors="replace")
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()  # the name may hold spaces and parentheses


def _all_stats() -> dict[int, list[str]]:
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                out[int(name)] = st
    return out


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return round(int(fh.read().split()[1]) * _PAGE_MB, 1)
    except (OSError, IndexError, ValueError):
        return None


def _fds(pid: int) -> int | None:
    """Open descriptors of *pid*: since Linux 6.2 the size stat() gives /proc/PID/fd; before, 0, and then the
    directory is listed.  Listing costs ~13 ms a sample for a process holding 17,000 sockets (an HAProxy or a
    wsproxy at 8,500 sessions): at 50,000 lab sessions the 13 monitors used 0.26 of the 2 cores, most of it here."""
    path = f"/proc/{pid}/fd"
    try:
        return os.stat(path).st_size or len(os.listdir(path))
    except OSError:  # gone, or another user's process
        return None


def sample_procs(roots: list[tuple[str, int]]) -> list[dict[str, Any]]:
    """One record per live process of every root's tree (a process belongs to the first root that holds it)."""
    if not roots:
        return []
    stats = _all_stats()
    children: dict[int, list[int]] = {}
    for pid, st in stats.items():
        children.setdefault(int(st[1]), []).append(pid)
    seen: set[int] = set()
    out = []
    for component, root in roots:
        todo = [root] if root in stats else []
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            todo += children.get(pid, [])
            st = stats[pid]
            out.append(
                {
                    "component": component,
                    "pid": pid,
                    "root": root,
                    "ppid": int(st[1]),
                    "cpu_s": round((int(st[11]) + int(st[12])) / _CLK_TCK, 2),
                    "cpu_children_s": round((int(st[13]) + int(st[14])) / _CLK_TCK, 2),
                    "rss_mb": _rss_mb(pid),
                    "fds": _fds(pid),
                    "threads": int(st[17]),
                }
            )
    return out


def _sockstat() -> dict[str, int]:
    """The kernel's TCP socket figures of this host's network namespace (/proc/net/sockstat): sockets in
    use, orphaned, in TIME_WAIT, allocated, and the memory their buffers hold (bytes)."""
    out: dict[str, int] = {}
    try:
        with open("/proc/net/sockstat") as fh:
            for line in fh:
                if line.startswith("TCP:"):
                    words = line.split()[1:]
                    pairs = dict(zip(words[::2], words[1::2]))
                    for k in ("inuse", "orphan", "tw", "alloc"):
                        if k in pairs:
                            out[f"tcp_{k}"] = int(pairs[k])
                    if "mem" in pairs:
                        out["tcp_mem_bytes"] = int(pairs["mem"]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        pass
    return out


def sample(prev_net: dict[str, Any] | None, dt: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """One sample; returns (record, network counters for the next call's rates)."""
    net = _net()
    total, per_cpu, split = _cpu()
    rec: dict[str, Any] = {
        "ts": round(time.time(), 3),
        "cpu_percent": total,
        "cpu_percent_per_cpu": per_cpu,
        "cpu_split": split,
        "load_avg": list(os.getloadavg()),
        "mem": _mem(),
        "sockstat": _sockstat(),
        "net": {},
        "source": "psutil" if psutil is not None else "/proc",
    }
    for nic, c in net.items():
        entry = {
            k: c.get(k, 0)
            for k in (
                "bytes_sent",
                "bytes_recv",
                "packets_sent",
                "packets_recv",
                "errin",
                "errout",
                "dropin",
                "dropout",
            )
        }
        if prev_net and nic in prev_net and dt > 0:
            p = prev_net[nic]
            entry["tx_bytes_per_s"] = round((c["bytes_sent"] - p["bytes_sent"]) / dt, 1)
            entry["rx_bytes_per_s"] = round((c["bytes_recv"] - p["bytes_recv"]) / dt, 1)
        rec["net"][nic] = entry
    return rec, net


#: the figures of Redis's INFO a monitor keeps each second (clients, memory, commands, pub/sub, network)
REDIS_FIELDS = (
    "connected_clients",
    "blocked_clients",
    "used_memory",
    "used_memory_rss",
    "total_commands_processed",
    "instantaneous_ops_per_sec",
    "total_net_input_bytes",
    "total_net_output_bytes",
    "pubsub_channels",
    "pubsub_patterns",
    "rejected_connections",
    "total_connections_received",
    "expired_keys",
    "evicted_keys",
    "used_cpu_sys",
    "used_cpu_user",
    "client_recent_max_output_buffer",
)


def _resp(*words: str) -> bytes:
    return f"*{len(words)}\r\n".encode() + b"".join(b"$%d\r\n%s\r\n" % (len(w.encode()), w.encode()) for w in words)


class _RedisInfo:
    """One kept connection to Redis as the monitor user; :meth:`ask` returns INFO's kept numbers."""

    def __init__(self, url: str, password_file: str) -> None:
        import urllib.parse

        u = urllib.parse.urlsplit(url)
        self.addr = (u.hostname or "127.0.0.1", u.port)  # scrape_lines always writes the port
        self.user, self.password_file = u.username or "default", password_file
        self.sock: socket.socket | None = None
        self.buf = b""

    def _line(self, sock: socket.socket) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by Redis")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _reply(self, sock: socket.socket) -> bytes:
        line = self._line(sock)
        if line[:1] == b"-":
            raise ConnectionError(line[1:80].decode("utf-8", "replace"))
        if line[:1] != b"$":
            return line[1:]
        n = int(line[1:])
        while len(self.buf) < n + 2:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by Redis")
            self.buf += chunk
        body, self.buf = self.buf[:n], self.buf[n + 2 :]
        return body

    def ask(self) -> dict[str, float]:
        try:
            sock = self.sock
            if sock is None:
                password = Path(self.password_file).read_text().strip()
                sock = self.sock = socket.create_connection(self.addr, timeout=SCRAPE_TIMEOUT)
                self.buf = b""
                sock.sendall(_resp("AUTH", self.user, password))
                self._reply(sock)
            sock.sendall(_resp("INFO"))
            text = self._reply(sock).decode("utf-8", "replace")
        except (OSError, ValueError):
            self.close()
            raise
        out: dict[str, float] = {}
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key in REDIS_FIELDS:
                try:
                    out[key] = float(value)
                except ValueError:
                    pass
        return out

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None


_REDIS: dict[tuple[str, str], _RedisInfo] = {}


def read_scrape_file(path: Path) -> list[tuple[str, str, tuple[str, ...]]]:
    """``(name, url, prefixes)`` per line of *path* (for ``redis://`` the password file is the one
    "prefix"); malformed lines are skipped."""
    out: list[tuple[str, str, tuple[str, ...]]] = []
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].startswith("http://") or len(parts) == 3 and parts[1].startswith("redis://"):
            out.append((parts[0], parts[1], tuple(parts[2:])))
    return out


def parse_prometheus(text: str, prefixes: tuple[str, ...] = ()) -> dict[str, float]:
    """``{name{labels}: value}`` of a Prometheus text page's samples (those starting with *prefixes*)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if prefixes and not line.startswith(prefixes):
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key] = float(value)
        except ValueError:
            continue
    return out


def scrape(targets: list[tuple[str, str, tuple[str, ...]]]) -> dict[str, Any]:
    """What each target says now (see the module docstring)."""
    import urllib.request

    out: dict[str, Any] = {}
    for name, url, prefixes in targets:
        if url.startswith("redis://"):
            client = _REDIS.setdefault((url, prefixes[0]), _RedisInfo(url, prefixes[0]))
            try:
                out[name] = client.ask()
            except (OSError, ValueError) as exc:
                out[name] = {"error": f"{type(exc).__name__}: {exc}"[:120]}
            continue
        try:
            with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT) as resp:
                body = resp.read().decode("utf-8", "replace")
        except (OSError, ValueError) as exc:
            out[name] = {"error": type(exc).__name__}
            continue
        if body.lstrip().startswith("{"):
            try:
                data = json.loads(body)
            except ValueError:
                out[name] = {"error": "not JSON"}
                continue
            out[name] = {k: v for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        else:
            out[name] = parse_prometheus(body, prefixes)
    return out


def monitor(
    out: Path, *, interval: float, duration: float, procs: Path | None = None, scrape_file: Path | None = None
) -> int:
    """Write samples to *out* every *interval* s for *duration* s; return the number written.

    With *procs*, each sample also holds the process trees of the roots that file lists then.
    """
    stop = False

    def on_signal(signum, frame):  # noqa: ARG001 - signal handler signature
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    out.parent.mkdir(parents=True, exist_ok=True)
    _cpu()  # the first reading starts the interval
    prev_net = _net()
    start = last = time.monotonic()
    n = 0
    with open(out, "a", encoding="utf-8") as fh:
        while not stop:
            next_at = start + (n + 1) * interval
            if next_at > start + duration + 1e-9:
                break
            while not stop and time.monotonic() < next_at:
                time.sleep(min(0.2, max(0.0, next_at - time.monotonic())))  # the sampling period itself
            if stop:
                break
            now = time.monotonic()
            rec, prev_net = sample(prev_net, now - last)
            last = now
            rec["t"] = round(now - start, 3)
            rec["monitor_cpu_s"] = round(sum(os.times()[:2]), 3)  # this monitor's own user+system so far
            if procs is not None:
                rec["procs"] = sample_procs(read_procs_file(procs))
            if scrape_file is not None:
                rec["services"] = scrape(read_scrape_file(scrape_file))
            fh.write(json.dumps(rec, separators=(",", ":")) + "\n")
            fh.flush()
            n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kit.hostmon", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="JSON-lines file to append samples to")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between samples (default 1)")
    ap.add_argument("--duration", type=float, required=True, help="stop after this many seconds")
    ap.add_argument(
        "--procs",
        type=Path,
        default=None,
        help="file of 'COMPONENT PID' lines (re-read every sample): sample those process trees too",
    )
    ap.add_argument(
        "--scrape",
        type=Path,
        default=None,
        help="file of 'NAME URL [PREFIX ...]' lines: what each service says of itself, every sample",
    )
    args = ap.parse_args(argv)
    if not (0.05 <= args.interval <= 3600):
        print(f"hostmon: --interval {args.interval}: give 0.05 to 3600 seconds", file=sys.stderr)
        return 2
    if not (0 < args.duration <= MAX_DURATION):
        print(
            f"hostmon: --duration {args.duration}: give more than 0 and at most {MAX_DURATION:.0f} seconds",
            file=sys.stderr,
        )
        return 2
    try:
        n = monitor(args.out, interval=args.interval, duration=args.duration, procs=args.procs, scrape_file=args.scrape)
    except OSError as exc:
        print(f"hostmon: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
        return 2
    log.debug("hostmon wrote %d samples to %s", n, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
