"""Test-only TLS: a CA and server certificates made with the openssl CLI (as the haproxy role makes
the kit's), and an HAProxy terminating TLS in front of a simulator and a wsproxy.

HAProxy is started from its binary with a minimal configuration (the deployed one comes from
``templates/haproxy.cfg.j2`` through Ansible) and stopped by its PID (``Proc.stop``).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from devkit.localstack import Proc, free_port, spawn, wait_tcp

HAPROXY = "/usr/sbin/haproxy"


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_ca(workdir: Path, name: str = "kit-test-ca") -> tuple[Path, Path]:
    """A self-signed CA: (certificate PEM, key PEM)."""
    workdir.mkdir(parents=True, exist_ok=True)
    crt, key = workdir / f"{name}.crt", workdir / f"{name}.key"
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(crt),
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    return crt, key


def make_server_pem(
    workdir: Path, ca: tuple[Path, Path], addresses: list[str], names: list[str], name: str = "server"
) -> Path:
    """A server certificate signed by *ca* for *addresses* (IP SANs) and *names* (DNS SANs), written
    with its key into one PEM (HAProxy's ``crt`` format)."""
    key, csr, crt, ext = (workdir / f"{name}.{s}" for s in ("key", "csr", "crt", "ext"))
    _openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        f"/CN={(names or addresses)[0]}",
    )
    san = ",".join([f"IP:{a}" for a in addresses] + [f"DNS:{n}" for n in names])
    ext.write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca[0]),
        "-CAkey",
        str(ca[1]),
        "-CAcreateserial",
        "-out",
        str(crt),
        "-days",
        "2",
        "-extfile",
        str(ext),
    )
    pem = workdir / f"{name}.pem"
    pem.write_text(crt.read_text() + key.read_text())
    pem.chmod(0o600)
    return pem


@dataclass
class TlsBalancer:
    proc: Proc
    host: str
    https_port: int
    wss_port: int

    @property
    def api_url(self) -> str:
        return f"https://{self.host}:{self.https_port}"

    @property
    def ws_url(self) -> str:
        return f"wss://{self.host}:{self.wss_port}"


def start_tls_haproxy(
    workdir: Path,
    pem: Path,
    *,
    host: str,
    sim: tuple[str, int],
    wsproxy: tuple[str, int],
    https_port: int | None = None,
    wss_port: int | None = None,
) -> TlsBalancer:
    """HAProxy with ``ssl crt <pem>`` on both frontends (HTTP to *sim*, WebSocket to *wsproxy*)."""
    https_port = https_port or free_port(host)
    wss_port = wss_port or free_port(host)
    cfg = workdir / "haproxy-tls.cfg"
    cfg.write_text(f"""global
    log stdout format short local0 notice
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout tunnel 120s
frontend http_in
    bind {host}:{https_port} ssl crt {pem}
    default_backend sim
frontend ws_in
    bind {host}:{wss_port} ssl crt {pem}
    default_backend wsproxy
backend sim
    server sim {sim[0]}:{sim[1]}
backend wsproxy
    server ws {wsproxy[0]}:{wsproxy[1]}
""")
    subprocess.run([HAPROXY, "-c", "-q", "-f", str(cfg)], check=True, capture_output=True, timeout=30)
    proc = spawn(f"haproxy-tls-{https_port}", [HAPROXY, "-db", "-f", str(cfg)], env=None, log_dir=workdir)
    try:
        wait_tcp(host, https_port, proc=proc)
        wait_tcp(host, wss_port, proc=proc)
    except BaseException:
        proc.stop()
        raise
    return TlsBalancer(proc, host, https_port, wss_port)
