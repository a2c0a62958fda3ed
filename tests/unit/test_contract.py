"""The kit's contract (playbooks/group_vars/all/contract.yml) is the one definition of the facts Ansible and
Python share: Python reads what Ansible renders, and no second copy of a fact appears in the tree."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kit import contract
from kit.config import DEFAULT_PORTS, ClientSettings, ConfigError, SimSettings, WsproxySettings
from kit.inventory import ROLE_GROUPS, load_inventory
from kit.lab import GROUPS, LAB_SYSCTLS
from kit.lab._layout import OPTIONAL
from kit.run import _run, _services
from kit.sim._schedule import channel_name

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = Path(sys.executable).parent / "ansible"
CONTRACT = REPO / "playbooks" / "group_vars" / "all" / "contract.yml"

#: what Ansible renders for a host, as JSON (every fact the Python side reads from the contract)
PROBE = """\
{{ {'kit_address': kit_address, 'kit_root': kit_root, 'kit_venv_dir': kit_venv_dir,
    'kit_supervisord_conf': kit_supervisord_conf, 'kit_unit_prefix': kit_unit_prefix,
    'ports': {'redis': redis_port, 'sim': sim_port, 'wsproxy': wsproxy_base_port,
              'haproxy_http': haproxy_http_port, 'haproxy_ws': haproxy_ws_port, 'haproxy_stats': haproxy_stats_port,
              'prometheus': prometheus_port, 'node_exporter': node_exporter_port,
              'redis_exporter': redis_exporter_port},
    'wsproxy_instances_per_host': wsproxy_instances_per_host, 'groups': kit_groups,
    'optional_groups': kit_optional_groups,
    'fd_reserve': kit_fd_reserve, 'sysctl': kit_sysctl, 'jwt_algorithms': kit_jwt_algorithms,
    'bounds': kit_bounds, 'health_path': kit_health_path, 'stats_uri': haproxy_stats_uri,
    'users': [redis_admin_user, haproxy_stats_user], 'secrets': kit_secrets,
    'acl_channels': kit_pubsub_channel | replace('{id}', '*'), 'acl_keys': kit_session_key | replace('{id}', '*')}
   | to_json }}
"""


def _ansible_renders(tmp_path: Path, inventory: Path) -> dict:
    """Render PROBE on localhost with `ansible -m template` and the playbooks' group_vars (the contract)."""
    src, out = tmp_path / "probe.j2", tmp_path / "probe.json"
    src.write_text(PROBE)
    subprocess.run([str(ANSIBLE), "localhost", "-i", str(inventory), "--playbook-dir", str(REPO / "playbooks"),
                    "-m", "ansible.builtin.template", "-a", f"src={src} dest={out} mode=0600"],
                   cwd=REPO, capture_output=True, text=True, timeout=120, check=True, stdin=subprocess.DEVNULL)
    return json.loads(out.read_text())


def test_python_reads_the_values_ansible_renders_from_an_inventory_outside_inventory_dir(tmp_path):
    # an inventory file of its own directory (no inventory/group_vars beside it), overriding one port per host
    inv = tmp_path / "mine.yml"
    inv.write_text((REPO / "inventory" / "local.yml").read_text().replace(
        "ansible_connection: local", "ansible_connection: local\n      haproxy_ws_port: 9081", 1))
    seen = _ansible_renders(tmp_path, inv)
    host = load_inventory(inv).hosts["localhost"]
    assert seen["ports"]["haproxy_ws"] == 9081 == host.vars["haproxy_ws_port"]
    assert seen["kit_address"] == host.service_address == "127.0.0.1"
    assert seen["kit_root"] == host.kit_root and f"{seen['kit_venv_dir']}/bin/python" == host.kit_python
    assert seen["kit_supervisord_conf"] == host.supervisord_conf and seen["kit_unit_prefix"] == host.vars["kit_unit_prefix"]
    targets = {t["service"]: t["port"] for t in _services.service_targets(load_inventory(inv))}
    assert targets == {"redis": seen["ports"]["redis"], "haproxy": seen["ports"]["haproxy_stats"],
                       "sim": seen["ports"]["sim"],
                       **{f"wsproxy-{i}": seen["ports"]["wsproxy"] + i for i in range(seen["wsproxy_instances_per_host"])}}
    assert _services.haproxy_urls(host)[1] == "ws://127.0.0.1:9081"
    # the kit-wide facts, where the Python side uses them
    assert {**seen["ports"], "haproxy_ws": 8081} == DEFAULT_PORTS
    assert tuple(seen["groups"]) == ROLE_GROUPS == GROUPS == _run.SERVICES_REQUIRED
    assert tuple(seen["optional_groups"]) == contract.optional_groups() == OPTIONAL
    assert seen["fd_reserve"] == _run.FD_RESERVE
    assert tuple(seen["jwt_algorithms"]) == contract.jwt_algorithms()
    assert seen["health_path"] == contract.health_path() and seen["stats_uri"] == host.vars["haproxy_stats_uri"]
    assert list(seen["secrets"]) == list(contract.secret_files())
    assert set(_services._SECRET_FILES.values()) <= set(seen["secrets"])
    assert channel_name("*") == seen["acl_channels"].encode() and contract.session_key("*") == seen["acl_keys"]
    for s in seen["sysctl"]:
        if s["netns"]:
            assert LAB_SYSCTLS[s["name"]] == str(s["value"]), s["name"]
        assert contract.sysctls()[s["name"]] == str(s["value"])
    lo, hi = seen["bounds"]["sim_workers"]["min"], seen["bounds"]["sim_workers"]["max"]
    assert SimSettings.from_env({"JWT_SECRET": "s" * 32, "FASTAPI_WORKERS": str(hi)}).workers == hi
    with pytest.raises(ConfigError, match="above the maximum"):
        SimSettings.from_env({"JWT_SECRET": "s" * 32, "FASTAPI_WORKERS": str(hi + 1)})
    assert lo == 1


def test_service_defaults_listen_on_the_contract_ports():
    ports = contract.ports()
    assert SimSettings(jwt_secret="s" * 32).port == ports["sim"]
    assert WsproxySettings(jwt_secret="s" * 32).port == ports["wsproxy"]
    assert WsproxySettings(jwt_secret="s" * 32).redis_url == f"redis://127.0.0.1:{ports['redis']}/0"
    assert ClientSettings().api_url == f"http://127.0.0.1:{ports['haproxy_http']}"
    assert ClientSettings().wsproxy_url == f"ws://127.0.0.1:{ports['haproxy_ws']}"


def test_kit_ports_lie_below_the_ephemeral_range_the_contract_sets():
    low, high = (int(x) for x in contract.sysctls()["net.ipv4.ip_local_port_range"].split())
    c = contract.contract()
    highest = max(contract.ports().values()) + c["wsproxy_instances_per_host"] - 1
    assert highest < low and high <= 65535 and low % 2 != high % 2  # the kernel wants different parity


def test_kit_contract_yml_in_the_package_is_the_playbooks_file():
    # the wheel carries kit/contract.yml; it must be the very file Ansible loads, not a copy
    assert contract.CONTRACT_PATH.resolve() == CONTRACT.resolve()


# -- no second copy --------------------------------------------------------------------------------

#: a fact of the contract written again as a literal: (what, regex)
COPIES = [
    ("a kit port", r"(?<![\d.])(6379|8000|4040|8080|8081|8404)(?![\d.])"),
    ("the ephemeral port range", r"\b\d{4,5} 6[05]\d{3}\b"),
    ("the pub/sub channel or session key", r"([\"'&~]|b\")session:[{*%]"),
    ("the run id's time format", r"%Y%m%d-%H%M%S\"\)? *\+ *f?\"-c"),
    ("the supervisord.conf path", r"supervisor/supervisord\.conf"),
    ("the systemd unit prefix", r"wsproxy-loadkit-\*|unit_prefix: wsproxy"),
    ("the venv path", r"kit_root[^\n]{0,8}/venv|\}/venv/bin"),
    ("the JWT algorithm list", r"HS256.{0,10}HS384.{0,10}HS512"),
    ("the fd reserve", r"(?i)fd_reserve\w*\s*[:=]\s*\d|- 100\b"),
    ("the role groups", r"redis[\"']?, *[\"']?haproxy[\"']?, *[\"']?wsproxy[\"']?, *[\"']?sim[\"']?, *[\"']?generators"),
    ("the health path", r"[\"']/health[\"']"),
    ("the deep health path", r"[\"']/health/deep[\"']"),
    ("a secret file name", r"[\"'](redis_password|stats_password|redis-admin-password)[\"']"),
]

#: lines that may keep a literal, and why
ALLOWED = [
    "the redis:// scheme's default",  # Redis' protocol default port, not the kit's choice
    "_SIGNATURE_CHARS",  # signature lengths per algorithm, not the list of accepted algorithms
]


def _shipped_files():
    for base in ("kit", "playbooks", "templates", "inventory"):
        for p in sorted((REPO / base).rglob("*")):
            if p.is_file() and not p.is_symlink() and p.suffix in (".py", ".yml", ".j2", ".cfg") and p != CONTRACT \
                    and "__pycache__" not in p.parts:
                yield p
    yield REPO / "fabfile.py"


def test_no_fact_of_the_contract_is_written_a_second_time():
    found = []
    for p in _shipped_files():
        for n, line in enumerate(p.read_text().splitlines(), 1):
            if any(a in line for a in ALLOWED):
                continue
            for what, rx in COPIES:
                if re.search(rx, line):
                    found.append(f"{p.relative_to(REPO)}:{n}: {what}: {line.strip()}")
    assert not found, "copies of contract facts (read them from kit.contract / the contract's variables):\n" + \
        "\n".join(found)


def test_the_copy_check_catches_a_drifted_copy(tmp_path):
    # the check above is only as good as its patterns: each finds the copies this review removed
    old = {
        "a kit port": 'redis_url: str = "redis://127.0.0.1:6379/0"',
        "the ephemeral port range": '"net.ipv4.ip_local_port_range": "10000 65000",',
        "the pub/sub channel or session key": 'channel = f"session:{session_id}:down".encode()',
        "the run id's time format": 'run_id = args.run_id or time.strftime("%Y%m%d-%H%M%S") + f"-c{total}"',
        "the supervisord.conf path": "f={root}/supervisor/supervisord.conf",
        "the systemd unit prefix": "systemctl --no-pager --plain list-units 'wsproxy-loadkit-*'",
        "the venv path": 'venv = self.vars.get("kit_venv") or f"{self.kit_root}/venv"',
        "the JWT algorithm list": 'if alg not in ("HS256", "HS384", "HS512"):',
        "the fd reserve": "FD_RESERVE = 100",
        "the role groups": 'ROLE_GROUPS: tuple[str, ...] = ("redis", "haproxy", "wsproxy", "sim", "generators")',
        "the health path": '@app.get("/health")',
        "the deep health path": 'DEEP_HEALTH = "/health/deep"',
        "a secret file name": '"redis_admin": ("redis_admin_password", "redis_password", "redis-admin-password"),',
    }
    for what, rx in COPIES:
        assert re.search(rx, old[what]), what
