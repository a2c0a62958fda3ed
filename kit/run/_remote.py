"""Reaching inventory hosts: Fabric connections over SSH, or this machine for local hosts.

:func:`connect` turns an inventory :class:`~kit.inventory.Host` into a
:class:`HostConnection`, a ``fabric.Connection`` (address, user, port, key file and
known-hosts file from the inventory; unknown host keys are refused when the inventory
asks for ``StrictHostKeyChecking=yes``) or, for ``ansible_connection: local``, a
:class:`LocalConnection` with the same ``run``/``get``/``put``/``close``.  Either
(a :data:`Conn`) knows the inventory host it reaches: ``conn.inventory_host``.

:func:`fan_out` runs one function per connection in threads, the way
``fabric.ThreadingGroup`` runs one method: it returns a ``GroupResult`` and
raises ``GroupException`` whose ``.result`` maps each connection to its result
or its exception, so every host's failure is reported, never swallowed.  The
caller owns the connections and closes them (``close_all``).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import fabric
import invoke
import paramiko
from fabric.exceptions import GroupException
from fabric.group import GroupResult

from kit.inventory import Host

__all__ = [
    "connect",
    "Conn",
    "HostConnection",
    "LocalConnection",
    "fan_out",
    "close_all",
    "describe_failures",
    "GroupException",
    "GroupResult",
    "CONNECT_TIMEOUT",
    "SFTP_TIMEOUT",
]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 15
#: seconds any one read or write of a file transfer (SFTP) may wait for the host: a host that stops
#: answering mid-copy fails the copy (``TimeoutError``) instead of hanging the run; a slow copy that
#: keeps moving is not cut
SFTP_TIMEOUT = 60.0

#: Every command runs without our stdin (fan-out threads must not read the terminal) and hidden
#: (its output is returned, and shown by the caller when it matters).
RUN_DEFAULTS = {"run": {"in_stream": False, "hide": True}}


class HostConnection(fabric.Connection):
    """A Fabric connection to an inventory host, which it keeps as ``inventory_host``."""

    inventory_host: Host

    #: the bound on each SFTP read or write of ``put``/``get`` (a test may lower it)
    sftp_timeout: float = SFTP_TIMEOUT

    def __init__(self, host: Host, **kwargs: Any) -> None:
        super().__init__(host.address, user=host.user, port=host.port, **kwargs)
        self.inventory_host = host

    def sftp(self) -> paramiko.SFTPClient:
        """Fabric's one SFTP client of this connection (``put`` and ``get`` use it), its channel bounded
        by :attr:`sftp_timeout`: Fabric's transfers have no timeout of their own."""
        client = super().sftp()
        channel = client.get_channel()
        if channel is not None and channel.gettimeout() != self.sftp_timeout:
            channel.settimeout(self.sftp_timeout)
        return client

    def get(self, remote: str, local: str | None = None, preserve_mode: bool = True) -> Any:
        try:
            return super().get(remote, local, preserve_mode=preserve_mode)
        except TimeoutError:
            raise TimeoutError(self._stalled(f"copying {remote} from it")) from None

    def put(self, local: str, remote: str | None = None, preserve_mode: bool = True) -> Any:
        try:
            return super().put(local, remote, preserve_mode=preserve_mode)
        except TimeoutError:
            raise TimeoutError(self._stalled(f"copying {local} to {remote or 'it'}")) from None

    def _stalled(self, what: str) -> str:
        return f"{self.inventory_host.name}: {what}: no answer for {self.sftp_timeout:g} s (SFTP_TIMEOUT), host unreachable?"


class LocalConnection:
    """This machine, for inventory hosts with ``ansible_connection: local``.

    ``run`` has the subset of ``fabric.Connection.run`` the kit uses (``hide``, ``warn``,
    ``timeout``): it runs the command under bash and returns an ``invoke.Result``, raising
    ``invoke.UnexpectedExit`` on a non-zero exit unless ``warn``.  Output is always captured.
    """

    inventory_host: Host

    def __init__(self, host: Host) -> None:
        self.host = host.name
        self.inventory_host = host
        self.original_host = host.name

    def run(
        self, command: str, *, hide: Any = True, warn: bool = False, timeout: float | None = None, **_: Any
    ) -> invoke.Result:
        try:
            proc = subprocess.run(
                ["/bin/bash", "-c", command], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            raise invoke.CommandTimedOut(
                invoke.Result(command=command, exited=-1, hide=("stdout", "stderr")),
                timeout,  # type: ignore[arg-type]  # invoke annotates int; its own runner passes float seconds too
            ) from None
        result = invoke.Result(
            stdout=proc.stdout,
            stderr=proc.stderr,
            exited=proc.returncode,
            command=command,
            shell="/bin/bash",
            hide=("stdout", "stderr"),
        )
        if proc.returncode != 0 and not warn:
            raise invoke.UnexpectedExit(result)
        return result

    def open(self) -> None:
        pass

    def get(self, remote: str, local: str | None = None, preserve_mode: bool = True) -> Path:
        src = Path(remote)
        dest = Path(local) if local else Path.cwd() / src.name
        if str(local or "").endswith("/") or dest.is_dir():
            dest = dest / src.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest) if preserve_mode else shutil.copyfile(src, dest)
        return dest

    def put(self, local: str, remote: str | None = None, preserve_mode: bool = True) -> Path:
        dest = Path(remote or Path(local).name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(local, dest)
        return dest

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<LocalConnection {self.host}>"

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other


#: a connection to one inventory host, either kind
Conn = HostConnection | LocalConnection


def connect(host: Host) -> Conn:
    """A connection to *host* as the inventory describes it (not yet opened; opening is lazy)."""
    if host.local:
        return LocalConnection(host)
    kwargs: dict[str, Any] = {"banner_timeout": CONNECT_TIMEOUT, "auth_timeout": CONNECT_TIMEOUT}
    if host.key_file:
        kwargs["key_filename"] = [host.key_file]
        kwargs["look_for_keys"] = False
        kwargs["allow_agent"] = False
    conn = HostConnection(
        host, connect_timeout=CONNECT_TIMEOUT, connect_kwargs=kwargs, config=fabric.Config(overrides=RUN_DEFAULTS)
    )
    if host.known_hosts:
        conn.client.load_host_keys(host.known_hosts)
    if host.strict_host_keys:
        conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return conn


def fan_out(conns: Iterable[Any], fn: Callable[[Any], Any]) -> GroupResult:
    """Run ``fn(conn)`` for every connection in parallel threads; raise GroupException if any failed."""
    conns = list(conns)
    results = GroupResult()
    lock = threading.Lock()
    excepted = False

    def work(c: Any) -> None:
        nonlocal excepted
        try:
            value = fn(c)
        except Exception as exc:  # reported per host through GroupException.result
            with lock:
                results[c] = exc
                excepted = True
        else:
            with lock:
                results[c] = value

    threads = [
        threading.Thread(target=work, args=(c,), name=f"fan-out-{getattr(c, 'host', c)}", daemon=True) for c in conns
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if excepted:
        raise GroupException(results)
    return results


def describe_failures(exc: GroupException) -> list[str]:
    """One line per failed host: ``host: what went wrong``."""
    lines = []
    for conn, value in exc.result.items():
        if isinstance(value, BaseException):
            name = getattr(getattr(conn, "inventory_host", None), "name", getattr(conn, "host", conn))
            text = str(value).strip().splitlines()
            detail = text[-1] if text else type(value).__name__
            if isinstance(value, invoke.UnexpectedExit):
                detail = f"`{value.result.command}` exited {value.result.exited}: " + (
                    value.result.stderr.strip()[-300:] or value.result.stdout.strip()[-300:]
                )
            lines.append(f"{name}: {type(value).__name__}: {detail}")
    return lines


def close_all(conns: Iterable[Any]) -> None:
    for c in conns:
        try:
            c.close()
        except Exception as exc:  # closing is best effort; report and go on
            log.warning("closing %s: %s", getattr(c, "host", c), exc)
