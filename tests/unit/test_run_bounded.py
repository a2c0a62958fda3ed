"""Every remote command the controller sends is bounded in time (kit/run/_hostops.py's rule).

The collect phase (service logs), the build record and ``fab status`` are driven against this
machine through a connection that records each command's timeout; a source check keeps new
commands in ``kit/run`` from going out without one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from kit.inventory import parse_inventory_json
from kit.run import LocalConnection, _build, _hostops, _logs, _tasks

KIT_RUN = Path(_hostops.__file__).parent


class RecordingConnection(LocalConnection):
    """This machine, remembering the timeout of every command sent to it."""

    def __init__(self, host) -> None:
        super().__init__(host)
        self.timeouts: list[float | None] = []

    def run(self, command, *, timeout=None, **kwargs):
        self.timeouts.append(timeout)
        return super().run(command, timeout=timeout, **kwargs)


def _host(**hostvars):
    data = {
        "_meta": {"hostvars": {"h1": {"ansible_connection": "local", **hostvars}}},
        "all": {"children": ["wsproxy"]},
        "wsproxy": {"hosts": ["h1"]},
    }
    return parse_inventory_json(data, Path("x.yml"))


def test_collecting_a_hosts_logs_bounds_every_command(tmp_path):
    logs = tmp_path / "log"
    logs.mkdir()
    (logs / "wsproxy-0.log").write_text("started\n")
    inv = _host(kit_log_dir=str(logs))
    c = RecordingConnection(inv.hosts["h1"])
    assert _logs.fetch_logs(inv, {"h1": c}, tmp_path / "dest") == []
    assert (tmp_path / "dest" / "h1" / "wsproxy-0.log").read_text() == "started\n"
    assert len(c.timeouts) >= 4 and all(t is not None and t > 0 for t in c.timeouts)


def test_the_build_record_bounds_its_checksum_on_the_host():
    inv = _host(wsproxy_command="sh -c true")
    c = RecordingConnection(inv.hosts["h1"])
    got = _build._on_host(c, inv.hosts["h1"], "command")
    assert len(got["sha256"]) == 64 and c.timeouts and all(t is not None for t in c.timeouts)


def test_fab_status_bounds_its_question_to_the_process_supervisor(tmp_path):
    inv = _host(kit_root=str(tmp_path))
    c = RecordingConnection(inv.hosts["h1"])
    try:
        _tasks.supervisor_status(c)
    except RuntimeError:
        pass  # nothing deployed on this machine: the answer does not matter, its bound does
    assert c.timeouts == [_hostops.CMD_TIMEOUT]


def test_a_command_past_its_bound_fails_instead_of_hanging():
    import invoke

    c = LocalConnection(_host().hosts["h1"])
    with pytest.raises(invoke.CommandTimedOut):
        _hostops.run(c, "sleep 5", timeout=0.2)


def _unbounded_runs(path: Path) -> list[str]:
    """``<conn>.run(...)`` calls without ``timeout=`` (``ops.run`` has one; ``subprocess.run`` is local)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "run"
            and ast.unparse(node.func.value) not in ("ops", "subprocess", "_hostops")
            and "timeout" not in {k.arg for k in node.keywords}
        ):
            found.append(f"{path.name}:{node.lineno}: {ast.unparse(node.func)}(...)")
    return found


def test_no_remote_command_in_kit_run_goes_out_without_a_timeout():
    unbounded = [line for p in sorted(KIT_RUN.glob("*.py")) for line in _unbounded_runs(p)]
    assert unbounded == [], "bound them (ops.run or timeout=ops.CMD_TIMEOUT):\n" + "\n".join(unbounded)
