"""The haproxy role's TLS tasks (playbooks/roles/haproxy/tasks/tls.yml) run for real by
ansible-playbook on this host, everything under a temporary folder: the kit CA and a balancer
certificate made on the "controller" (0600 keys, nothing of them in the output), the PEM installed
0600, templates/haproxy.cfg.j2 rendered with ``ssl crt`` and accepted by ``haproxy -c``, a second
run changes nothing, and ``--check`` on a fresh controller creates nothing.  Then that HAProxy
serves the real stack and the client verifies it against the kit CA."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from devkit.localstack import LOOPBACK, free_port, local_stack, spawn, wait_tcp

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "playbooks" / "roles" / "haproxy"
HAPROXY = "/usr/sbin/haproxy"


def _playbook(tmp: Path) -> Path:
    play = [
        {
            "name": "haproxy TLS tasks and config",
            "hosts": "haproxy",
            "gather_facts": True,
            "gather_subset": ["min"],
            "vars_files": [
                str(REPO / "playbooks" / "group_vars" / "all" / "contract.yml"),
                str(ROLE / "defaults" / "main.yml"),
            ],
            "tasks": [
                {
                    "name": "Kit root",
                    "ansible.builtin.file": {"path": "{{ kit_root }}/haproxy", "state": "directory", "mode": "0700"},
                },
                {"name": "TLS", "ansible.builtin.import_tasks": str(ROLE / "tasks" / "tls.yml")},
                {
                    "name": "Render haproxy.cfg",
                    "ansible.builtin.template": {
                        "src": str(REPO / "templates" / "haproxy.cfg.j2"),
                        "dest": "{{ kit_root }}/haproxy/haproxy.cfg",
                        "mode": "0600",
                        "validate": HAPROXY + " -c -q -f %s",
                    },
                    "when": "not ansible_check_mode",
                },
            ],
        }
    ]
    path = tmp / "play.yml"
    path.write_text(yaml.safe_dump(play, sort_keys=False))
    return path


def _run(tmp: Path, ports: dict, secrets: Path, *extra: str) -> subprocess.CompletedProcess:
    inv = {
        "all": {
            "hosts": {"lb1": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}},
            "children": {g: {"hosts": {"lb1": None}} for g in ("haproxy", "sim", "wsproxy")},
        }
    }
    (tmp / "inv.yml").write_text(yaml.safe_dump(inv))
    extra_vars = {
        "kit_root": str(tmp / "root"),
        "kit_common_secrets_dir": str(secrets),
        "kit_address": LOOPBACK,
        "haproxy_tls": True,
        "haproxy_stats_password": "x" * 24,
        "haproxy__maxconn": 1000,
        "haproxy_http_port": ports["https"],
        "haproxy_ws_port": ports["wss"],
        "haproxy_stats_port": ports["stats"],
        "sim_port": ports["sim"],
        "wsproxy_base_port": ports["ws"],
        "wsproxy_instances_per_host": 1,
        "ansible_managed": "test",
    }
    env = {
        **os.environ,
        "ANSIBLE_STDOUT_CALLBACK": "default",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCALHOST_WARNING": "0",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
    }
    return subprocess.run(
        [
            str(REPO / ".venv" / "bin" / "ansible-playbook"),
            "-i",
            str(tmp / "inv.yml"),
            str(_playbook(tmp)),
            "-e",
            json.dumps(extra_vars),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=tmp,
    )


def _recap_changed(out: str) -> int:
    line = next(ln for ln in out.splitlines() if ln.startswith("lb1") and "changed=" in ln)
    return int(line.split("changed=")[1].split()[0])


def test_the_role_makes_the_kit_ca_and_a_verified_certificate_and_haproxy_serves_tls(tmp_path):
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    with local_stack(tmp_path / "stack", sim_env={"TOKEN_DELAY_MS": 2}) as stack:
        ports = {
            "https": free_port(),
            "wss": free_port(),
            "stats": free_port(),
            "sim": stack.sim_port,
            "ws": stack.wsproxy_port,
        }
        # --check on a fresh controller: nothing is created
        r = _run(tmp_path, ports, secrets, "--check")
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
        assert list(secrets.iterdir()) == [] and not (tmp_path / "root" / "haproxy" / "tls.pem").exists()

        r = _run(tmp_path, ports, secrets)
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
        ca, ca_key = secrets / "kit_ca.crt", secrets / "kit_ca.key"
        key, crt = secrets / "haproxy-lb1.key", secrets / "haproxy-lb1.crt"
        pem = tmp_path / "root" / "haproxy" / "tls.pem"
        for f in (ca_key, key, pem):
            assert f.stat().st_mode & 0o777 == 0o600, f
        # no key material in what Ansible printed
        for f in (ca_key, key):
            body = "".join(f.read_text().splitlines()[1:-1])
            assert body[:40] not in r.stdout and "PRIVATE KEY" not in r.stdout
        # the certificate: signed by the kit CA, for kit_address and the host's names
        v = subprocess.run(["openssl", "verify", "-CAfile", str(ca), str(crt)], capture_output=True, text=True)
        assert v.returncode == 0, v.stdout + v.stderr
        text = subprocess.run(
            ["openssl", "x509", "-in", str(crt), "-noout", "-ext", "subjectAltName"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert f"IP Address:{LOOPBACK}" in text and "DNS:lb1" in text and f"DNS:{socket.gethostname()}" in text
        cfg = (tmp_path / "root" / "haproxy" / "haproxy.cfg").read_text()
        assert cfg.count(f"ssl crt {pem}") == 2

        # idempotent: a second run changes nothing (the certificate is not re-issued)
        before = crt.read_bytes()
        r2 = _run(tmp_path, ports, secrets)
        assert r2.returncode == 0 and _recap_changed(r2.stdout) == 0, r2.stdout[-4000:]
        assert crt.read_bytes() == before

        # that configuration serves the stack over TLS, verified against the kit CA
        proc = spawn(
            "haproxy-role-tls",
            [HAPROXY, "-db", "-f", str(tmp_path / "root" / "haproxy" / "haproxy.cfg")],
            env=None,
            log_dir=tmp_path,
        )
        try:
            wait_tcp(LOOPBACK, ports["https"], proc=proc)
            wait_tcp(LOOPBACK, ports["wss"], proc=proc)
            out = tmp_path / "run"
            c = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "kit.client",
                    "--api-url",
                    f"https://{LOOPBACK}:{ports['https']}",
                    "--ws-url",
                    f"wss://{LOOPBACK}:{ports['wss']}",
                    "--clients",
                    "4",
                    "--queries",
                    "1",
                    "--tokens",
                    "3",
                    "--quiet",
                    "--ca-file",
                    str(ca),
                    "--output-dir",
                    str(out),
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert c.returncode == 0, c.stderr[-3000:]
            summary = json.loads((out / "summary.json").read_text())
            assert summary["success_rate"] == 100.0 and summary["connect_tls_ms"]["p50"] > 0
        finally:
            proc.stop()
