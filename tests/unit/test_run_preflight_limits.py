"""fab run's preflight reads the open-file limit and the sessions one process holds from Ansible's tuning
report: one formula, computed by the kit_service role and written by the tuning role, never a second guess."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kit import contract
from kit.inventory import Host, Inventory
from kit.run import _hostops, _preflight
from kit.run._hostops import open_file_limit

REPO = Path(__file__).resolve().parents[2]
REPORT = "/opt/wsproxy-loadkit/h/state/tuning.json"


def test_the_tuning_report_is_the_authority_where_the_host_was_deployed():
    # under systemd a service may get more than the SSH login's hard limit: the report knows
    facts = {
        "nofile_hard": 20000,
        "tuning_report": REPORT,
        "tuning": {"nofile": {"wanted": 65536, "cap": 1048576, "effective": 65536, "sessions_max": 32668}},
    }
    assert open_file_limit(facts) == (65536, 32668, f"{REPORT} (Ansible's tuning role)")


def test_without_a_report_the_ssh_hard_limit_is_used_and_the_sessions_are_unknown():
    nofile, sessions, source = open_file_limit({"nofile_hard": 20000, "tuning": None})
    assert (nofile, sessions) == (20000, None) and "no tuning report" in source
    assert open_file_limit({"nofile_hard": 20000, "tuning": {"nofile": {"effective": "x"}}})[0] == 20000


def test_the_capacity_formula_is_written_once_in_the_kit_service_role():
    # Ansible computes it (kit_service facts) with the contract's reserve and descriptors per session ...
    facts_yml = (REPO / "playbooks/roles/kit_service/tasks/facts.yml").read_text()
    assert re.search(
        r"kit_service_sessions_max:.*\n.*kit_service_nofile_effective.*kit_fd_reserve.*"
        r"// \(kit_fds_per_session \| int\)",
        facts_yml,
    )
    tuning = (REPO / "playbooks/roles/tuning/tasks/main.yml").read_text()
    assert "'sessions_max': kit_service_sessions_max | int" in tuning  # ... the tuning report carries it ...
    assert "at most\n      ~{{ kit_service_sessions_max }} proxied sessions" in tuning  # ... and says it
    # ... and no Python module (fab run's preflight included) computes it again from a reserve
    for p in sorted((REPO / "kit").rglob("*.py")):
        text = p.read_text()
        assert (
            not re.search(r"fd_reserve\(\)|FD_RESERVE\b|[\"']kit_fd_reserve[\"']\]", text) or p.name == "contract.py"
        ), p
    assert contract.fd_reserve() > 0 and contract.fds_per_session() > 0


class _Conn:
    """What the preflight needs of a connection: its inventory host (hashable, as Fabric's are)."""

    def __init__(self, host: Host) -> None:
        self.inventory_host = host


def _host(name: str) -> Host:
    return Host(name, {"ansible_connection": "local"})


def test_preflight_uses_the_reported_sessions_for_balancers_and_generators_alike(monkeypatch):
    lb, gen = _host("lb"), _host("gen")
    groups = {g: ["lb"] for g in ("redis", "haproxy", "wsproxy", "sim")} | {"generators": ["gen"]}
    inv = Inventory(Path("inv.yml"), {"lb": lb, "gen": gen}, groups)
    seen_paths = {}

    def host_facts(c):
        client_wrapper, tuning_report = c.inventory_host.client_wrapper, c.inventory_host.tuning_report
        seen_paths[c.inventory_host.name] = (client_wrapper, tuning_report)
        # 10,000 open files; a report whose figure no formula of the preflight would give
        report = {"nofile": {"wanted": 65536, "cap": 10000, "effective": 10000, "sessions_max": 1234}}
        return {
            "nproc": 1,
            "nofile_hard": 10000,
            "port_range": [10240, 65535],
            "kit_python": True,
            "tuning": report,
            "tuning_report": tuning_report,
        }

    monkeypatch.setattr(_hostops, "host_facts", host_facts)
    monkeypatch.setattr(_hostops, "clock_samples", lambda c, python="python3": [(0, 0, 0)])
    conns = {n: _Conn(h) for n, h in inv.hosts.items()}
    pre = _preflight.preflight(inv, conns, plan_clients=1000, skip_health=True)
    assert pre["caps"]["lb"]["max_sessions"] == 1234
    assert pre["caps"]["gen"]["max_clients_per_process_by_nofile"] == 1234
    assert not pre["problems"]
    assert seen_paths["gen"] == (gen.client_wrapper, gen.tuning_report)
    assert gen.tuning_report.startswith(gen.kit_root + "/") and gen.client_wrapper.startswith(gen.kit_root + "/")
    # more clients per process than the report allows: refused with the report's figure
    pre = _preflight.preflight(inv, conns, plan_clients=1300, skip_health=True)
    assert any("1300 clients per process but a process holds ~1234" in p for p in pre["problems"]), pre["problems"]
    assert any(
        "lb: the plan sends 1300 sessions to this balancer but one HAProxy process holds ~1234" in p
        for p in pre["problems"]
    ), pre["problems"]
    # and per group, as fab plan says it: the one balancer holds 1,234; the run needs 2
    assert any(
        "cannot hold 1300 sessions: haproxy: needs 2 host(s), has 1: add 1 host(s) to the haproxy group "
        "(1,234 sessions per host" in p
        for p in pre["problems"]
    ), pre["problems"]
    assert pre["plan"]["haproxy"] == {
        "needed": 2,
        "have": 1,
        "limit": "1,234 sessions per host (one HAProxy process)",
    }


@pytest.mark.parametrize("addresses, refused", [(None, True), (["10.0.0.5", "10.0.0.211", "10.0.0.212"], False)])
def test_a_generator_hosts_source_addresses_multiply_its_ports_toward_one_balancer(monkeypatch, addresses, refused):
    """200 local ports, one per WebSocket: one address holds 200 sessions toward one balancer, three 600."""
    lb = _host("lb")
    gen = Host(
        "gen", {"ansible_connection": "local", **({"generator_source_addresses": addresses} if addresses else {})}
    )
    groups = {g: ["lb"] for g in ("redis", "haproxy", "wsproxy", "sim")} | {"generators": ["gen"]}
    inv = Inventory(Path("inv.yml"), {"lb": lb, "gen": gen}, groups)
    report = {"nofile": {"effective": 20000, "sessions_max": 9900}}
    monkeypatch.setattr(
        _hostops,
        "host_facts",
        lambda c: {
            "nproc": 1,
            "port_range": [20000, 20199] if c.inventory_host.name == "gen" else [10240, 65535],
            "kit_python": True,
            "tuning": report,
        },
    )
    monkeypatch.setattr(_hostops, "clock_samples", lambda c, python="python3": [(0, 0, 0)])
    pre = _preflight.preflight(inv, {n: _Conn(h) for n, h in inv.hosts.items()}, plan_clients=500, skip_health=True)
    said = [p for p in pre["problems"] if p.startswith("gen: 500 clients to lb need 500 local ports")]
    if refused:
        assert said and "per source address and the host has 1" in said[0]
        assert any("generators: needs 3 host(s), has 1" in p for p in pre["problems"]), pre["problems"]
    else:
        assert not pre["problems"] and pre["caps"]["gen"]["source_addresses"] == 3


def test_a_host_whose_shell_prints_before_every_command_is_refused_with_what_it_printed(monkeypatch, tmp_path):
    """Real shells: bash reads $BASH_ENV before a command as it reads ~/.bashrc over SSH; one that prints would
    have a generator's PID read as its text, so the preflight names the host, the text and the remedy."""
    from kit.run import connect

    h = _host("lb")
    groups = {g: ["lb"] for g in ("redis", "haproxy", "wsproxy", "sim", "generators")}
    inv = Inventory(Path("inv.yml"), {"lb": h}, groups)
    monkeypatch.setattr(_hostops, "clock_samples", lambda c, python="python3": [(0, 0, 0)])
    quiet = _hostops.host_facts(connect(h))
    assert "shell_preamble" not in quiet and quiet["nproc"] >= 1

    noisy = tmp_path / "bashrc"
    noisy.write_text("echo 'Welcome to lab-h1'\necho 'conda: base activated'\n")
    monkeypatch.setenv("BASH_ENV", str(noisy))
    facts = _hostops.host_facts(connect(h))
    assert facts["shell_preamble"] == "Welcome to lab-h1\nconda: base activated\n"
    assert facts["nproc"] == quiet["nproc"] and facts["port_range"] == quiet["port_range"]  # the facts still read
    pre = _preflight.preflight(inv, {"lb": connect(h)}, skip_health=True)
    (said,) = [p for p in pre["problems"] if "shell prints" in p]
    assert said.startswith("lb: its shell prints before every command ('Welcome to lab-h1', 40 bytes)"), said
    assert "~/.bashrc" in said and "interactive" in said
    blank = _hostops.shell_preamble_problem("lb", {"shell_preamble": "\n\n"})
    assert blank is not None and blank.startswith("lb: its shell prints before every command ('\\n\\n', 2 bytes)")
