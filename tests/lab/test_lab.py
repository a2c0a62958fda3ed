"""The lab: namespace hosts reachable by real SSH, isolated network settings, complete tear-down."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from kit import lab as lab_mod
from kit.inventory import load_inventory
from kit.lab import LabError, _lab, lab_down, lab_up
from kit.run import close_all, connect, fan_out

pytestmark = [pytest.mark.lab, pytest.mark.timeout(180)]


def _root_sysctl(key: str) -> str:
    with open("/proc/sys/" + key.replace(".", "/")) as fh:
        return fh.read().split()


def _gone(pid: int) -> bool:
    """No such process, or a zombie waiting for init (sshd daemonized, so init reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _exists_netns(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}")


def test_every_lab_host_answers_ssh_with_the_lab_key_inside_its_own_namespace(lab6):
    cfg, state = lab6
    inv = load_inventory(cfg.inventory_path)
    conns = [connect(h) for h in inv.hosts.values()]
    try:
        out = fan_out(conns, lambda c: c.run("hostname; ip netns identify $$; ip -4 -o addr show dev eth0").stdout)
        seen = {c.inventory_host.name: text.split("\n", 2) for c, text in out.items()}
    finally:
        close_all(conns)
    assert sorted(seen) == [f"lkt-h{i}" for i in range(1, 7)]
    for name, (hostname, netns, addr) in seen.items():
        assert hostname == name and netns.strip() == name
        assert f"inet {inv.hosts[name].address}/24" in addr


def test_lab_hosts_have_distinct_addresses_and_reach_each_other_over_the_bridge(lab6):
    cfg, state = lab6
    addresses = [h["address"] for h in state["hosts"]]
    assert len(set(addresses)) == 6
    inv = load_inventory(cfg.inventory_path)
    probe = (
        'python3 -c "import socket,sys\nfor a in sys.argv[1:]:\n'
        "    socket.create_connection((a, 22), timeout=3).close()\nprint('ok', len(sys.argv) - 1)\" "
        + " ".join(addresses)
    )
    conns = [connect(h) for h in inv.hosts.values()]
    try:
        out = fan_out(conns, lambda c: c.run(probe, hide=True).stdout.strip())
    finally:
        close_all(conns)
    assert sorted(out.values()) == ["ok 6"] * 6


def test_per_namespace_sysctls_are_set_inside_and_stay_inside_their_namespace(lab6):
    cfg, state = lab6
    inv = load_inventory(cfg.inventory_path)
    conn = connect(inv.hosts["lkt-h2"])
    try:
        inside = conn.run("sysctl -n net.core.somaxconn net.ipv4.ip_local_port_range", hide=True).stdout.split()
    finally:
        conn.close()
    want = [lab_mod.LAB_SYSCTLS["net.core.somaxconn"], *lab_mod.LAB_SYSCTLS["net.ipv4.ip_local_port_range"].split()]
    assert inside == want
    # a value set inside one namespace stays there: the root namespace (which a localhost deploy may tune
    # meanwhile, on another test worker) and the other lab hosts keep theirs
    root_before = _root_sysctl("net.core.somaxconn")
    distinct = str(1000 + int(root_before[0]) % 997)
    conn = connect(inv.hosts["lkt-h2"])
    try:
        conn.run(f"sysctl -q -w net.core.somaxconn={distinct}", hide=True)
        assert conn.run("sysctl -n net.core.somaxconn", hide=True).stdout.split() == [distinct]
        assert _root_sysctl("net.core.somaxconn") != [distinct]
        other = connect(inv.hosts["lkt-h3"])
        try:
            assert other.run("sysctl -n net.core.somaxconn", hide=True).stdout.split() == want[:1]
        finally:
            other.close()
    finally:
        conn.run(f"sysctl -q -w net.core.somaxconn={want[0]}", hide=True)
        conn.close()


def test_lab_inventory_has_the_default_six_host_layout_and_a_strict_known_hosts_file(lab6):
    cfg, state = lab6
    inv = load_inventory(cfg.inventory_path)
    assert {g: len(inv.groups[g]) for g in ("redis", "haproxy", "wsproxy", "sim", "generators")} == {
        "redis": 1,
        "haproxy": 1,
        "wsproxy": 2,
        "sim": 1,
        "generators": 2,
    }
    gens = set(inv.groups["generators"])
    assert not gens & (set(inv.groups["haproxy"]) | set(inv.groups["wsproxy"]) | set(inv.groups["redis"]))
    h = inv.hosts["lkt-h1"]
    assert (h.user, h.port, h.key_file, h.known_hosts, h.strict_host_keys) == (
        "root",
        22,
        str(cfg.key_path),
        str(cfg.known_hosts),
        True,
    )
    assert h.vars["ansible_python_interpreter"] == "/usr/bin/python3"


def test_lab_up_again_keeps_the_lab_and_a_different_shape_is_refused(lab6):
    cfg, state = lab6
    again = lab_up(6, cfg=cfg)
    assert [h["sshd_pid"] for h in again["hosts"]] == [h["sshd_pid"] for h in state["hosts"]]
    with pytest.raises(LabError, match="lab-down"):
        lab_up(3, cfg=cfg)


def test_lab_down_removes_every_namespace_link_and_sshd_even_after_a_partial_lab_up(
    need_root, make_lab_config, tmp_path, monkeypatch
):
    cfg = make_lab_config(tmp_path, "lku", "10.213.8.0/24")
    real_start = _lab._start_sshd
    calls = []

    def failing_start(cfg_, host, state):
        calls.append(host.name)
        if len(calls) == 3:
            raise LabError("injected failure while starting the third sshd")
        real_start(cfg_, host, state)

    monkeypatch.setattr(_lab, "_start_sshd", failing_start)
    monkeypatch.setattr(_lab, "lab_down", lambda cfg=None: [])  # no rollback: leave the partial lab behind
    try:
        with pytest.raises(LabError, match="injected"):
            lab_up(4, cfg=cfg)
        state = json.loads(cfg.state_path.read_text())
        assert not state["complete"]
        assert [h["name"] for h in state["hosts"]] == ["lku-h1", "lku-h2", "lku-h3"]
        pids = [h["sshd_pid"] for h in state["hosts"] if h["sshd_pid"]]
        assert len(pids) == 2 and all(os.path.exists(f"/proc/{p}") for p in pids)
        assert _exists_netns("lku-h3")
    finally:
        monkeypatch.undo()
        removed = lab_down(cfg)
    assert "bridge lku-br" in removed
    for i in (1, 2, 3):
        assert not _exists_netns(f"lku-h{i}")
        assert not os.path.exists(f"/sys/class/net/lku-h{i}-v")
    assert not os.path.exists("/sys/class/net/lku-br")
    for p in pids:
        assert _gone(p)
    assert not cfg.state_path.exists()
    assert lab_down(cfg) == []


def test_lab_up_refuses_a_subnet_that_is_already_routed(need_root, make_lab_config, tmp_path):
    # the root namespace routes 127.0.0.0/8 on lo: a lab there must be refused before anything is made
    cfg = make_lab_config(tmp_path, "lkv", "127.0.0.0/24")
    with pytest.raises(LabError, match="clashes"):
        lab_up(1, cfg=cfg)
    assert not os.path.exists("/sys/class/net/lkv-br")
    assert subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.count("lkv-") == 0


def test_clock_offset_of_a_lab_host_measured_over_ssh_is_near_zero_as_they_share_one_clock(lab6):
    from kit.run._hostops import clock_samples
    from kit.run._plan import clock_offset

    cfg, state = lab6
    inv = load_inventory(cfg.inventory_path)
    conn = connect(inv.hosts["lkt-h3"])
    try:
        samples = clock_samples(conn)
    finally:
        conn.close()
    off = clock_offset(samples)
    assert len(samples) == 5
    assert off["rtt_s"] < 0.05  # one exchange on an open channel, not a command start
    assert abs(off["offset_s"]) <= off["uncertainty_s"] + 0.001


def test_a_file_copy_from_a_host_that_stops_answering_fails_within_its_bound_with_one_line(lab6, tmp_path):
    cfg, state = lab6
    inv = load_inventory(cfg.inventory_path)
    host = inv.hosts["lkt-h5"]
    src, dst = tmp_path / "big.bin", tmp_path / "copy.bin"
    src.write_bytes(os.urandom(1 << 20))  # the lab hosts share this filesystem: the host copies it back to us
    conn = connect(host)
    conn.sftp_timeout = 2.0
    table = "lkt_sftp_stall"
    nft = ["ip", "netns", "exec", host.name, "nft"]
    try:
        conn.get(str(src), str(dst))  # answers: the bound does not cut a copy that moves
        assert dst.read_bytes() == src.read_bytes()
        rules = f"table inet {table} {{ chain out {{ type filter hook output priority 0; tcp sport 22 drop\n }}\n}}\n"
        subprocess.run([*nft, "-f", "-"], input=rules, text=True, check=True, timeout=30)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError) as err:
            conn.get(str(src), str(tmp_path / "stalled.bin"))
        took = time.monotonic() - t0
    finally:
        subprocess.run([*nft, "delete", "table", "inet", table], capture_output=True, timeout=30)
        conn.close()
    assert 1.5 <= took < 10, took
    msg = str(err.value)
    assert "lkt-h5" in msg and "no answer for 2 s" in msg and "\n" not in msg, msg
