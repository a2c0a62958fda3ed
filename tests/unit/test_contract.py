"""The kit's contract is the one definition of the facts Ansible and Python share: the fixed facts
(playbooks/group_vars/all/contract.yml) and the tunable settings (the kit_common role's defaults, which any
inventory level overrides). Python reads what Ansible renders, and no second copy of a fact appears in the tree."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kit import contract
from kit.config import DEFAULT_PORTS, ClientSettings, ConfigError, SimSettings, WsproxySettings
from kit.inventory import ROLE_GROUPS, load_inventory
from kit.lab import GROUPS, LAB_SYSCTLS
from kit.lab._layout import OPTIONAL
from kit.run import _preflight, _services
from kit.sim._schedule import channel_name

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
CONTRACT = REPO / "playbooks" / "group_vars" / "all" / "contract.yml"
DEFAULTS = REPO / "playbooks" / "roles" / "kit_common" / "defaults" / "main.yml"

#: what Ansible renders for a host, as JSON (every fact the Python side reads from the contract); numbers
#: through `| int` as the roles read them (a setting published to hostvars is a string)
PROBE = """\
{{ {'kit_address': kit_address, 'kit_root': kit_root, 'kit_venv_dir': kit_venv_dir,
    'kit_supervisord_conf': kit_supervisord_conf, 'kit_unit_prefix': kit_unit_prefix,
    'kit_nofile': kit_nofile | int, 'kit_service_manager': kit_service_manager, 'kit_host_python': kit_host_python,
    'paths': {'log': kit_log_dir, 'tuning': kit_tuning_report, 'client': kit_client_wrapper,
              'artifact': kit_wsproxy_artifact_path},
    'wsproxy_program_3': kit_wsproxy_program | replace('{i}', '3'), 'fds_per_session': kit_fds_per_session,
    'published_ws_port': hostvars[inventory_hostname]['haproxy_ws_port'] | int,
    'ports': {'redis': redis_port | int, 'sim': sim_port | int, 'wsproxy': wsproxy_base_port | int,
              'haproxy_http': haproxy_http_port | int, 'haproxy_ws': haproxy_ws_port | int, 'haproxy_stats': haproxy_stats_port | int,
              'prometheus': prometheus_port | int, 'node_exporter': node_exporter_port | int,
              'redis_exporter': redis_exporter_port | int},
    'wsproxy_instances_per_host': wsproxy_instances_per_host | int, 'groups': kit_groups,
    'optional_groups': kit_optional_groups,
    'fd_reserve': kit_fd_reserve, 'sysctl': kit_sysctl, 'jwt_algorithms': kit_jwt_algorithms,
    'bounds': kit_bounds, 'health_path': kit_health_path, 'stats_uri': haproxy_stats_uri,
    'users': [redis_admin_user, haproxy_stats_user], 'secrets': kit_secrets,
    'acl_channels': kit_pubsub_channel | replace('{id}', '*'), 'acl_keys': kit_session_key | replace('{id}', '*')}
   | to_json }}
"""


def _ansible_renders(tmp_path: Path, inventory: Path) -> dict:
    """Render PROBE on localhost as the kit's plays see it: a playbook beside the playbooks' group_vars (the
    fixed facts) and roles (kit_common's defaults, the settings), after the preflight role that every playbook
    imports first (it publishes each host's settings to hostvars)."""
    book = tmp_path / "book"
    book.mkdir()
    for name in ("group_vars", "roles"):
        (book / name).symlink_to(REPO / "playbooks" / name)
    src, out = tmp_path / "probe.j2", tmp_path / "probe.json"
    src.write_text(PROBE)
    (book / "probe.yml").write_text(
        yaml.safe_dump(
            [
                {
                    "name": "Preflight",
                    "hosts": "all",
                    "gather_facts": True,
                    "gather_subset": ["min"],
                    "roles": [{"role": "preflight"}],
                },
                {
                    "name": "Probe",
                    "hosts": "all",
                    "gather_facts": False,
                    "roles": [{"role": "kit_common"}],
                    "tasks": [
                        {
                            "name": "Render the probe",
                            "ansible.builtin.template": {"src": str(src), "dest": str(out), "mode": "0600"},
                        }
                    ],
                },
            ]
        )
    )
    res = subprocess.run(
        [
            str(ANSIBLE_PLAYBOOK),
            "-i",
            str(inventory),
            str(book / "probe.yml"),
            "-e",
            f"kit_secrets_dir={tmp_path / 'secrets'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    return json.loads(out.read_text())


def test_python_reads_the_values_ansible_renders_from_an_inventory_outside_inventory_dir(tmp_path):
    # an inventory file of its own directory (no inventory/group_vars beside it), overriding one port per host
    inv = tmp_path / "mine.yml"
    inv.write_text(
        (REPO / "inventory" / "local.yml")
        .read_text()
        .replace("ansible_connection: local", "ansible_connection: local\n      haproxy_ws_port: 9081", 1)
    )
    seen = _ansible_renders(tmp_path, inv)
    host = load_inventory(inv).hosts["localhost"]
    assert seen["ports"]["haproxy_ws"] == 9081 == host.vars["haproxy_ws_port"]
    assert seen["published_ws_port"] == 9081  # what other hosts' templates read through hostvars
    assert seen["kit_address"] == host.service_address == "127.0.0.1"
    assert seen["kit_root"] == host.kit_root and f"{seen['kit_venv_dir']}/bin/python" == host.kit_python
    assert (
        seen["kit_supervisord_conf"] == host.supervisord_conf
        and seen["kit_unit_prefix"] == host.vars["kit_unit_prefix"]
    )
    assert seen["paths"] == {
        "log": host.log_dir,
        "tuning": host.tuning_report,
        "client": host.client_wrapper,
        "artifact": host.wsproxy_artifact_path,
    }
    assert all(p.startswith(host.kit_root + "/") for p in seen["paths"].values())
    assert seen["wsproxy_program_3"] == contract.wsproxy_program(3)
    assert seen["fds_per_session"] == contract.fds_per_session()
    for name in ("kit_nofile", "kit_service_manager", "kit_host_python"):
        assert seen[name] == host.vars[name] == contract.defaults()[name], name
    targets = {t["service"]: t["port"] for t in _services.service_targets(load_inventory(inv))}
    assert targets == {
        "redis": seen["ports"]["redis"],
        "haproxy": seen["ports"]["haproxy_stats"],
        "sim": seen["ports"]["sim"],
        **{
            contract.wsproxy_program(i): seen["ports"]["wsproxy"] + i for i in range(seen["wsproxy_instances_per_host"])
        },
    }
    assert _services.haproxy_urls(host)[1] == "ws://127.0.0.1:9081"
    # the kit-wide facts, where the Python side uses them
    assert {**seen["ports"], "haproxy_ws": 8081} == DEFAULT_PORTS
    assert tuple(seen["groups"]) == ROLE_GROUPS == GROUPS == _preflight.SERVICES_REQUIRED
    assert tuple(seen["optional_groups"]) == contract.optional_groups() == OPTIONAL
    assert seen["fd_reserve"] == contract.fd_reserve()
    assert tuple(seen["jwt_algorithms"]) == contract.jwt_algorithms()
    assert seen["health_path"] == contract.health_path() and seen["stats_uri"] == host.vars["haproxy_stats_uri"]
    assert list(seen["secrets"]) == list(contract.secret_files())
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


def test_an_all_vars_override_of_a_setting_takes_effect_on_both_sides_and_a_fixed_fact_stays(tmp_path):
    # the inventory's lowest level, `all: vars:`, sets settings (kit_common's defaults) and tries a fixed fact
    inv = tmp_path / "mine.yml"
    inv.write_text(
        (REPO / "inventory" / "local.yml")
        .read_text()
        .replace(
            "  children:\n",
            "  vars:\n    kit_nofile: 20000\n    sim_port: 9000\n    kit_service_manager: supervisor\n"
            f"    kit_root: {tmp_path}/root/{{{{ inventory_hostname }}}}\n    kit_fd_reserve: 999\n  children:\n",
            1,
        )
    )
    seen = _ansible_renders(tmp_path, inv)
    host = load_inventory(inv).hosts["localhost"]
    assert seen["kit_nofile"] == 20000 == host.vars["kit_nofile"]
    assert seen["ports"]["sim"] == 9000 == host.vars["sim_port"]
    assert seen["kit_service_manager"] == "supervisor" == host.vars["kit_service_manager"]
    assert seen["kit_root"] == f"{tmp_path}/root/localhost" == host.kit_root
    assert seen["paths"]["tuning"] == host.tuning_report == f"{tmp_path}/root/localhost/state/tuning.json"
    assert seen["fd_reserve"] == contract.fd_reserve() == host.vars["kit_fd_reserve"] != 999  # fixed: the contract's


def test_settings_are_role_defaults_and_fixed_facts_stay_in_the_contract():
    settings = yaml.safe_load(DEFAULTS.read_text())
    fixed = yaml.safe_load(CONTRACT.read_text())
    tunable = {
        "kit_root",
        "kit_nofile",
        "kit_service_manager",
        "kit_host_python",
        "wsproxy_instances_per_host",
        "redis_port",
        "sim_port",
        "wsproxy_base_port",
        "haproxy_http_port",
        "haproxy_ws_port",
        "haproxy_stats_port",
        "prometheus_port",
        "node_exporter_port",
        "redis_exporter_port",
    }
    assert set(contract.defaults()) == tunable <= set(settings) and not tunable & set(fixed)
    assert not set(settings) & set(fixed)  # each fact in one file
    assert contract.DEFAULTS_PATH.resolve() == DEFAULTS.resolve()
    # every role reaches kit_common's defaults through its meta dependencies
    roles = REPO / "playbooks" / "roles"

    def deps(role: str) -> set[str]:
        meta = yaml.safe_load((roles / role / "meta" / "main.yml").read_text())
        found = {d["role"] if isinstance(d, dict) else d for d in meta.get("dependencies") or []}
        return found | {x for d in found for x in deps(d)}

    for role in sorted(p.name for p in roles.iterdir() if p.is_dir() and p.name != "kit_common"):
        assert role == "kit_packages" or "kit_common" in deps(role), role


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
    (
        "the role groups",
        r"redis[\"']?, *[\"']?haproxy[\"']?, *[\"']?wsproxy[\"']?, *[\"']?sim[\"']?, *[\"']?generators",
    ),
    ("the health path", r"[\"']/health[\"']"),
    ("the deep health path", r"[\"']/health/deep[\"']"),
    ("a secret file name", r"[\"'](redis_password|stats_password|redis-admin-password)[\"']"),
    ("a path under kit_root", r"state/tuning\.json|bin/kit-client\b|bin/wsproxy-artifact|(kit_root|\}\}|\})/log\b"),
    ("the wsproxy program name", r"wsproxy-\{|[\"']wsproxy-[\"']|wsproxy-\[0-9\]"),
    (
        "a shared secret under a role's name",
        r"\b(sim_jwt_secret|wsproxy_jwt_secret|sim_redis_password|wsproxy_redis_password)\b|\{\{ *redis_(sim|wsproxy|monitor)_password\b",
    ),
    (
        "the sessions one process holds, computed again",
        r"(?i)fd_reserve\w*\s*\)\s*//|nofile\s*-\s*\w*reserve\w*\s*\)?\s*//",
    ),
]


def _retyped_defaults() -> list[tuple[str, str]]:
    """(what, regex) for a default written a second time: a setting's (kit_common's role default) and a
    service's (kit/config.py) that a role passes on (role variable -> settings field)."""
    out = [
        (f"the default of {name}", rf"\b{name}\s*[:=]\s*[\"']?{re.escape(str(value))}\b")
        for name, value in contract.defaults().items()
        if name != "kit_root"
    ]
    out.append(("the default kit_root", r"\bkit_root\s*[:=]\s*[\"']?/opt/"))
    fields = {f.name: f for cls in (SimSettings, WsproxySettings) for f in dataclasses.fields(cls)}
    for var, field in SERVICE_SETTINGS.items():
        value = fields[field].default
        number = rf"{int(value)}(\.0*)?\b" if float(value).is_integer() else re.escape(str(value))
        out.append((f"the service default of {var} ({field})", rf"\b{var}\s*:\s*{number}"))
    return out


#: role variable -> the service setting (kit/config.py) it sets; the roles pass it only when an inventory sets it
SERVICE_SETTINGS = {
    "sim_token_delay_ms": "token_delay_ms",
    "sim_ttft_ms": "ttft_ms",
    "sim_session_ttl_seconds": "session_ttl_seconds",
    "wsproxy_pubsub_pool_size": "pubsub_pool_size",
    "wsproxy_ping_interval_secs": "ws_ping_interval_secs",
    "wsproxy_ping_timeout_secs": "ws_ping_timeout_secs",
}

#: (file, what) a copy is left in because the file is outside this change (issue 17, item 2's follow-up):
#: the check below fails when one is gone, so the list only shrinks
PENDING: set[tuple[str, str]] = set()

#: lines that may keep a literal, and why
ALLOWED = [
    "the redis:// scheme's default",  # Redis' protocol default port, not the kit's choice
    "_SIGNATURE_CHARS",  # signature lengths per algorithm, not the list of accepted algorithms
]


def _shipped_files():
    for base in ("kit", "playbooks", "templates", "inventory"):
        for p in sorted((REPO / base).rglob("*")):
            if (
                p.is_file()
                and not p.is_symlink()
                and p.suffix in (".py", ".yml", ".j2", ".cfg")
                and p not in (CONTRACT, DEFAULTS)
                and "__pycache__" not in p.parts
            ):
                yield p
    yield REPO / "fabfile.py"


def test_no_fact_of_the_contract_is_written_a_second_time():
    found, pending = [], set()
    for p in _shipped_files():
        rel = p.relative_to(REPO).as_posix()
        for n, line in enumerate(p.read_text().splitlines(), 1):
            if any(a in line for a in ALLOWED):
                continue
            for what, rx in COPIES + _retyped_defaults():
                if re.search(rx, line):
                    if (rel, what) in PENDING:
                        pending.add((rel, what))
                    else:
                        found.append(f"{rel}:{n}: {what}: {line.strip()}")
    assert pending == PENDING, f"fixed, drop from PENDING: {PENDING - pending}"
    assert not found, (
        "copies of contract facts (read them from kit.contract / the contract's variables):\n" + "\n".join(found)
    )


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
        "a path under kit_root": "if [ -r {root}/state/tuning.json ]; then",
        "the wsproxy program name": 'out.append({"service": f"wsproxy-{i}", "port": base + i})',
        "a shared secret under a role's name": "'JWT_SECRET': sim_jwt_secret, 'JWT_ALGORITHM': kit_jwt_algorithm,",
        "the sessions one process holds, computed again": "cap = max(0, (nofile - FD_RESERVE) // 2)",
    }
    for what, rx in COPIES:
        assert re.search(rx, old[what]), what
    retyped = dict(_retyped_defaults())
    for what, line in (
        ("the default of kit_nofile", "kit_nofile: 65536"),
        ("the default of sim_port", "sim_port: 8000"),
        ("the default kit_root", 'kit_root: "/opt/wsproxy-loadkit/{{ inventory_hostname }}"'),
        ("the service default of sim_token_delay_ms (token_delay_ms)", "sim_token_delay_ms: 50"),
        ("the service default of wsproxy_ping_timeout_secs (ws_ping_timeout_secs)", "# wsproxy_ping_timeout_secs: 30"),
    ):
        assert re.search(retyped[what], line), what
    assert not re.search(retyped["the default of kit_nofile"], "# kit_nofile: 20000")  # an example override
