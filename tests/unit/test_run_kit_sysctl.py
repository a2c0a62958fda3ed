"""kit-sysctl (the tuning role's script): one JSON object on stdout whatever happens, serialised hosts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "playbooks" / "roles" / "tuning" / "files" / "kit-sysctl"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_a_failure_is_a_json_error_on_stdout_and_a_line_on_stderr_never_an_empty_stdout(tmp_path):
    bad = tmp_path / "sysctl.conf"
    bad.write_text("net.core.somaxconn = 4096\nnot a setting\n")
    r = _run("apply", str(bad), "--check")
    assert r.returncode == 1
    assert json.loads(r.stdout) == {"error": f"{bad}: line 'not a setting' is not KEY = VALUE"}
    assert r.stderr.strip() == f"kit-sysctl: {bad}: line 'not a setting' is not KEY = VALUE"
    missing = _run("apply", str(tmp_path / "nope.conf"), "--check")
    assert missing.returncode == 1 and "FileNotFoundError" in json.loads(missing.stdout)["error"]
    usage = _run("apply")
    assert usage.returncode == 2 and "usage" in json.loads(usage.stdout)["error"]


def test_hosts_sharing_one_kernel_apply_one_at_a_time_and_each_answers(tmp_path):
    conf = tmp_path / "sysctl.conf"
    conf.write_text("net.core.somaxconn = 1\nfs.file-max = 1\nno.such.key = 3\n")
    procs = [subprocess.Popen([sys.executable, str(SCRIPT), "apply", str(conf), "--check", "--state",
                               str(tmp_path / f"state-{i}.json")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(8)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    for out, _ in outs:
        result = json.loads(out)
        assert result["absent"] == [{"key": "no.such.key", "wanted": "3"}]


def test_the_tuning_role_says_what_happened_when_kit_sysctl_answers_nothing(tmp_path):
    """The lab deploy once failed with "Expecting value: line 1 column 1": the role parsed an empty stdout
    (changed_when runs before the failure is reported) and hid the script's own error."""
    fake = tmp_path / "python"
    # reads work; apply crashes before printing anything, as a killed or broken interpreter would
    fake.write_text(f'#!/bin/sh\n[ "$2" = read ] && exec {sys.executable} "$@"\n'
                    'echo "Traceback: simulated crash" >&2; exit 1\n')
    fake.chmod(0o755)
    root = tmp_path / "root"
    for d in ("etc", "state"):
        (root / d).mkdir(parents=True)
    play = tmp_path / "play.yml"
    play.write_text(f"""
- hosts: localhost
  gather_facts: false
  vars:
    kit_root: {root}
    kit_host_python: {fake}
    kit_common_templates: {REPO / 'templates'}
    tuning_sysctl: [{{name: net.core.somaxconn, value: 1, mode: min}}]
  tasks:
    - ansible.builtin.include_role: {{name: tuning, tasks_from: sysctl.yml}}
""")
    import os
    r = subprocess.run([str(REPO / ".venv" / "bin" / "ansible-playbook"), "-i", "localhost,", "-c", "local",
                        "-e", f"ansible_python_interpreter={sys.executable}", str(play)], capture_output=True,
                       text=True, timeout=300, env=dict(os.environ, ANSIBLE_ROLES_PATH=str(REPO / "playbooks" / "roles"),
                                                        ANSIBLE_NOCOLOR="1"))
    assert r.returncode != 0
    assert "Expecting value" not in r.stdout
    text = " ".join(r.stdout.split())
    assert "localhost: kit-sysctl exited 1 with no output on stdout" in text, r.stdout[-3000:]
    assert "stderr: Traceback: simulated crash" in text
