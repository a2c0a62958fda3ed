"""playbooks/preflight.yml stops a bad inventory early, naming the group, host and variable.

Each test writes a tiny inventory (hosts with ``ansible_connection: local``) into a temporary
directory beside a copy of the shipped ``inventory/group_vars/`` (the defaults every inventory
in ``inventory/`` gets) and runs only the preflight play, with the secrets directory redirected
into the temporary directory.  Nothing is deployed; no port is opened.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
GROUPS = ("redis", "haproxy", "wsproxy", "sim", "generators")

pytestmark = pytest.mark.timeout(180)


def _inventory(hosts: dict[str, dict], groups: dict[str, list[str]]) -> dict:
    return {
        "all": {
            "hosts": {
                h: {"ansible_connection": "local", "ansible_python_interpreter": "/usr/bin/python3", **v}
                for h, v in hosts.items()
            },
            "children": {g: {"hosts": {h: None for h in members}} for g, members in groups.items()},
        }
    }


def _run_preflight(tmp_path: Path, inventory: dict, *, group_vars: bool = True) -> subprocess.CompletedProcess:
    inv_dir = tmp_path / "inventory"
    if group_vars:
        shutil.copytree(REPO / "inventory" / "group_vars", inv_dir / "group_vars")
    else:
        inv_dir.mkdir()
    (inv_dir / "test.yml").write_text(yaml.safe_dump(inventory))
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
    }
    return subprocess.run(
        [
            str(PLAYBOOK),
            "-i",
            str(inv_dir / "test.yml"),
            str(REPO / "playbooks" / "preflight.yml"),
            "-e",
            f"kit_secrets_dir={tmp_path / 'secrets'}",
        ],
        capture_output=True,
        text=True,
        timeout=150,
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def _said(res: subprocess.CompletedProcess) -> str:
    """The output with YAML line folding undone (messages may wrap at any space)."""
    return " ".join(res.stdout.split())


def _one_host_everywhere(name: str = "box1", **hostvars) -> dict:
    return _inventory({name: hostvars}, {g: [name] for g in GROUPS})


def test_valid_inventory_passes_and_secrets_are_private(tmp_path):
    res = _run_preflight(tmp_path, _one_host_everywhere())
    assert res.returncode == 0, res.stdout[-3000:]
    secrets = tmp_path / "secrets"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    names = sorted(p.name for p in secrets.iterdir())
    assert names == [
        "haproxy_stats_password",
        "jwt_secret",
        "redis_admin_password",
        "redis_monitor_password",
        "redis_sim_password",
        "redis_wsproxy_password",
    ]
    for p in secrets.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p.name
        assert len(p.read_text().strip()) >= 24
    # no secret value reaches the output
    for p in secrets.iterdir():
        assert p.read_text().strip() not in res.stdout + res.stderr


def test_an_inventory_without_group_vars_passes_on_the_roles_defaults_and_the_contract(tmp_path):
    # an inventory file anywhere (no inventory/group_vars beside it): nothing is "not set"
    res = _run_preflight(tmp_path, _one_host_everywhere(), group_vars=False)
    assert res.returncode == 0, res.stdout[-3000:]


def test_missing_group_fails_naming_the_group(tmp_path):
    inv = _inventory({"box1": {}}, {g: ["box1"] for g in GROUPS if g != "generators"})
    res = _run_preflight(tmp_path, inv)
    assert res.returncode != 0
    assert "group(s) generators missing or empty" in _said(res)
    assert not (tmp_path / "secrets").exists()


def test_empty_group_fails_naming_the_group(tmp_path):
    inv = _one_host_everywhere()
    inv["all"]["children"]["sim"] = {"hosts": {}}
    res = _run_preflight(tmp_path, inv)
    assert res.returncode != 0
    assert "group(s) sim missing or empty" in _said(res)


def test_non_numeric_instances_fail_naming_host_and_variable(tmp_path):
    res = _run_preflight(tmp_path, _one_host_everywhere("wsbox", wsproxy_instances_per_host="many"))
    assert res.returncode != 0
    assert 'wsbox: wsproxy_instances_per_host="many" is not a whole number' in _said(res)
    assert "inventory/group_vars/wsproxy.yml" in _said(res)


def test_out_of_range_port_fails_naming_host_and_variable(tmp_path):
    res = _run_preflight(tmp_path, _one_host_everywhere("rbox", redis_port=70000))
    assert res.returncode != 0
    assert "rbox: redis_port=70000 is out of range: use 1..65535" in _said(res)


def test_unknown_service_manager_fails_naming_host_and_choices(tmp_path):
    res = _run_preflight(tmp_path, _one_host_everywhere("box9", kit_service_manager="docker"))
    assert res.returncode != 0
    assert 'box9: kit_service_manager="docker" is not one of auto, systemd, supervisor' in _said(res)


def test_systemd_forced_where_there_is_none_fails_naming_the_host(tmp_path):
    # this machine's service manager is not systemd (no systemd as PID 1)
    res = _run_preflight(tmp_path, _one_host_everywhere("box2", kit_service_manager="systemd"))
    assert res.returncode != 0
    assert "box2: kit_service_manager=systemd but the service manager of this host is" in _said(res)


def test_colliding_ports_on_one_host_fail_naming_both_variables(tmp_path):
    res = _run_preflight(tmp_path, _one_host_everywhere("box3", wsproxy_base_port=8079))
    assert res.returncode != 0
    assert "box3: port(s) used twice: 8080 by haproxy_http_port and wsproxy instance 1" in _said(res)


def test_two_hosts_sharing_a_kit_root_fail(tmp_path):
    inv = _inventory(
        {"a1": {"kit_root": "/opt/wsproxy-loadkit/same"}, "a2": {"kit_root": "/opt/wsproxy-loadkit/same"}},
        {g: ["a1", "a2"] if g == "generators" else ["a1"] for g in GROUPS},
    )
    res = _run_preflight(tmp_path, inv)
    assert res.returncode != 0
    assert "kit_root /opt/wsproxy-loadkit/same is used by more than one host (a1, a2)" in _said(res)
