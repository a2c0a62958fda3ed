"""Raw-socket WebSocket handshakes for the wsproxy tests (what a hostile or minimal client sends)."""

from __future__ import annotations

import socket


def read_101(sock: socket.socket) -> bytes:
    """Read the server's answer to an upgrade request; assert it is a 101; return the bytes past it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, "connection closed during the handshake"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return rest
