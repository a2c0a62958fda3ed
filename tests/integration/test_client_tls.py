"""kit.client over https:// and wss:// through a real HAProxy terminating TLS (a test CA) in front of
the real simulator + wsproxy + Redis on loopback: certificates are verified against --ca-file, the
connect time is split into TCP, TLS and upgrade, and a refused certificate is one clear error."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from tlsutil import make_ca, make_server_pem, start_tls_haproxy

from devkit.localstack import LOOPBACK, local_stack
from kit.client._session import GaveUp, connect_with_retry
from kit.client._ws import TLSError, client_ssl_context, connect

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """(stack, balancer, CA certificate, another CA's certificate)."""
    tmp = tmp_path_factory.mktemp("tls")
    ca = make_ca(tmp / "ca")
    other_ca = make_ca(tmp / "other", "some-other-ca")
    pem = make_server_pem(tmp / "ca", ca, [LOOPBACK], ["localhost"])
    with local_stack(tmp / "stack", sim_env={"TOKEN_DELAY_MS": 2}) as stack:
        lb = start_tls_haproxy(
            tmp, pem, host=LOOPBACK, sim=(LOOPBACK, stack.sim_port), wsproxy=(LOOPBACK, stack.wsproxy_port)
        )
        try:
            yield stack, lb, ca[0], other_ca[0]
        finally:
            lb.proc.stop()


def _client(api: str, ws: str, out: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "kit.client",
            "--api-url",
            api,
            "--ws-url",
            ws,
            "--output-dir",
            str(out),
            "--quiet",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def _sessions(out: Path) -> list[dict[str, str]]:
    with open(out / "sessions.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_client_verifies_the_ca_over_https_and_wss_and_splits_connect_into_tcp_tls_upgrade(tls, tmp_path):
    stack, lb, ca, _ = tls
    out = tmp_path / "run"
    r = _client(
        lb.api_url,
        lb.ws_url,
        out,
        "--clients",
        "10",
        "--queries",
        "2",
        "--tokens",
        "5",
        "--ca-file",
        str(ca),
        "--processes",
        "2",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["success_rate"] == 100.0 and summary["lost_tokens"] == 0
    rows = _sessions(out)
    assert len(rows) == 10
    for row in rows:
        tcp, tls_ms, upgrade = float(row["tcp_ms"]), float(row["tls_ms"]), float(row["upgrade_ms"])
        assert tls_ms > 0 and tcp > 0 and upgrade > 0, row
        assert tcp + tls_ms + upgrade <= float(row["connect_ms"]) + 0.01, row
    for name in ("connect_tcp_ms", "connect_tls_ms", "connect_upgrade_ms"):
        assert summary[name]["count"] == 10, name
    assert summary["connect_tls_ms"]["p50"] > 0
    hists = json.loads((out / "histograms.json").read_text())
    assert {"connect_tcp", "connect_tls", "connect_upgrade"} <= set(hists.get("histograms", hists))


def test_plain_ws_records_the_split_with_zero_tls(tls, tmp_path):
    stack, _, _, _ = tls
    out = tmp_path / "run"
    r = _client(stack.api_url, stack.ws_url, out, "--clients", "3", "--queries", "1", "--tokens", "3")
    assert r.returncode == 0, r.stderr[-3000:]
    for row in _sessions(out):
        assert float(row["tls_ms"]) == 0 and float(row["tcp_ms"]) > 0 and float(row["upgrade_ms"]) > 0, row


def test_the_ca_file_also_comes_from_ssl_ca_file(tls, tmp_path):
    import os

    _, lb, ca, _ = tls
    out = tmp_path / "run"
    r = _client(
        lb.api_url,
        lb.ws_url,
        out,
        "--clients",
        "2",
        "--queries",
        "1",
        "--tokens",
        "3",
        env={**os.environ, "SSL_CA_FILE": str(ca)},
    )
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.parametrize("which", ["system store", "another CA"])
def test_a_refused_certificate_is_one_error_kind_per_session_not_a_traceback(tls, tmp_path, which):
    _, lb, _, other = tls
    extra = ["--ca-file", str(other)] if which == "another CA" else []
    out = tmp_path / "run"
    r = _client(lb.api_url, lb.ws_url, out, "--clients", "4", "--queries", "1", "--no-preflight", *extra)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["errors"] == {"create_tls_certificate": 4}
    assert all("certificate" in row["errors"] for row in _sessions(out))


@pytest.mark.parametrize("which", ["system store", "another CA"])
def test_preflight_refuses_the_certificate_in_one_line_exit_2(tls, tmp_path, which):
    _, lb, _, other = tls
    extra = ["--ca-file", str(other)] if which == "another CA" else []
    r = _client(lb.api_url, lb.ws_url, tmp_path / "run", "--clients", "1", *extra)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "certificate was refused" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


async def test_wss_connect_with_the_wrong_ca_gives_up_at_once_with_a_certificate_error(tls):
    _, lb, ca, other = tls
    attempts: list[BaseException | None] = []

    async def open_ws():
        with trio.fail_after(10):
            return await connect(lb.ws_url, "/a/ws/nosuch", ssl_context=client_ssl_context(str(other)))

    with trio.fail_after(30):
        with pytest.raises(GaveUp, match="certificate"):
            await connect_with_retry(
                open_ws,
                attempts=3,
                initial=5.0,
                cap=5.0,
                jitter=0.0,
                rng=__import__("random").Random(1),
                first_immediately=True,
                on_attempt=lambda n, exc: attempts.append(exc),
            )
    assert len(attempts) == 1 and isinstance(attempts[0], TLSError) and attempts[0].certificate
    # the right CA gets through TLS to the wsproxy (which refuses the unknown session: a 4xx, not TLS)
    with trio.fail_after(10):
        with pytest.raises(Exception) as info:
            await connect(lb.ws_url, "/a/ws/nosuch", ssl_context=client_ssl_context(str(ca)))
    assert not isinstance(info.value, TLSError)


def test_report_shows_the_connect_split(tls, tmp_path):
    from kit.report import render_html, render_text

    stack, lb, ca, _ = tls
    out = tmp_path / "run"
    r = _client(lb.api_url, lb.ws_url, out, "--clients", "3", "--queries", "1", "--tokens", "3", "--ca-file", str(ca))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "split p50:            TCP " in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    tls_p50 = summary["connect_tls_ms"]["p50"]
    text = render_text(summary, {})
    line = next(ln for ln in text.splitlines() if ln.startswith("Connect (ms)"))
    assert "TLS" in line and tls_p50 > 0
    assert "<th>connect_tls_ms</th>" in render_html(summary, {}, [], text)
