"""kit_sysctl (the tuning role's module): targets, check mode, serialised hosts, and one-line failures.

It replaced a `script`: that module returns what reached the SSH pseudo-terminal, and a lab deploy in CI
once failed on one host because kit-sysctl's output never arrived.  A module answers in Ansible's envelope.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "playbooks" / "roles" / "tuning" / "library" / "kit_sysctl.py"


def _module(tmp: Path, name: str, args: dict, check: bool = True) -> subprocess.Popen:
    path = tmp / f"{name}.json"
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": dict(args, _ansible_check_mode=check)}))
    return subprocess.Popen(
        [sys.executable, str(MODULE), str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _somaxconn() -> int:
    return int(Path("/proc/sys/net/core/somaxconn").read_text())


def test_targets_keep_a_larger_current_value_for_min_and_check_mode_writes_nothing(tmp_path):
    current = _somaxconn()
    state = tmp_path / "state.json"
    p = _module(
        tmp_path,
        "a",
        {
            "settings": [
                {"name": "net.core.somaxconn", "value": 1, "mode": "min"},
                {"name": "net.core.somaxconn", "value": current + 1},  # exact: would be set
                {"name": "no.such.key", "value": 3},
            ],
            "state_file": str(state),
        },
    )
    out, err = p.communicate(timeout=60)
    result = json.loads(out)
    assert p.returncode == 0, (out, err)
    assert result["targets"] == [
        {"name": "net.core.somaxconn", "value": str(current)},
        {"name": "net.core.somaxconn", "value": str(current + 1)},
    ]
    assert result["unchanged"] == ["net.core.somaxconn"]
    assert result["set"] == [{"key": "net.core.somaxconn", "from": str(current), "to": str(current + 1)}]
    assert result["absent"] == [{"key": "no.such.key", "wanted": "3"}]
    assert result["changed"] is True
    assert _somaxconn() == current and not state.exists()


def test_hosts_sharing_one_kernel_apply_one_at_a_time_and_each_answers(tmp_path):
    procs = [
        _module(
            tmp_path,
            f"h{i}",
            {
                "settings": [{"name": "fs.file-max", "value": 1, "mode": "min"}],
                "state_file": str(tmp_path / f"state-{i}.json"),
            },
        )
        for i in range(8)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert all(json.loads(out)["unchanged"] == ["fs.file-max"] for out, _ in outs)


def test_a_bad_setting_is_one_clear_failure_not_a_traceback(tmp_path):
    p = _module(tmp_path, "bad", {"settings": [{"name": "net.core.somaxconn"}]})
    out, err = p.communicate(timeout=60)
    result = json.loads(out)
    assert p.returncode == 1 and result["failed"] is True
    assert result["msg"] == "kit_sysctl: every setting needs name and value; got [{'name': 'net.core.somaxconn'}]"
    assert "Traceback" not in out + err


def test_the_tuning_role_reports_what_the_host_lacks_and_records_its_targets(tmp_path):
    root = tmp_path / "root"
    for d in ("etc", "state"):
        (root / d).mkdir(parents=True)
    play = tmp_path / "play.yml"
    play.write_text(f"""
- hosts: localhost
  gather_facts: false
  vars:
    kit_root: {root}
    kit_common_templates: {REPO / "templates"}
    tuning_sysctl: [{{name: net.core.somaxconn, value: 1, mode: min}}, {{name: no.such.key, value: 3}}]
  tasks:
    - ansible.builtin.include_role: {{name: tuning, tasks_from: sysctl.yml}}
""")
    r = subprocess.run(
        [
            str(REPO / ".venv" / "bin" / "ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            str(play),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, ANSIBLE_ROLES_PATH=str(REPO / "playbooks" / "roles"), ANSIBLE_NOCOLOR="1"),
    )
    assert r.returncode == 0, r.stdout[-3000:]
    text = " ".join(r.stdout.split())
    assert "localhost: no.such.key does not exist here (wanted 3" in text, r.stdout[-3000:]
    assert f"net.core.somaxconn = {_somaxconn()}" in (root / "etc" / "sysctl.conf").read_text()
    assert not (root / "state" / "sysctl-original.json").exists()  # nothing was lowered or changed
