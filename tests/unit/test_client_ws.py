"""kit.client._ws: the Sans-I/O frame parser and handshake (no sockets)."""

from __future__ import annotations

import struct

import pytest

from kit.client._frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    HandshakeError,
    ProtocolError,
    WsProtocol,
    accept_value,
    encode_frame,
    handshake_request,
    parse_handshake,
)


def srv(op: int, payload: bytes = b"", fin: bool = True) -> bytes:
    return encode_frame(op, payload, mask=False, fin=fin)


def unmask(frame: bytes) -> tuple[int, bytes]:
    """Decode one masked client frame: (opcode, payload)."""
    assert frame[1] & 0x80, "client frames must be masked"
    n = frame[1] & 0x7F
    key, data = frame[2:6], frame[6 : 6 + n]
    return frame[0] & 0x0F, bytes(b ^ key[i % 4] for i, b in enumerate(data))


def test_small_text_frames_in_one_read_all_come_out_in_order():
    p = WsProtocol()
    msgs = [f'{{"seq":{i}}}'.encode() for i in range(50)]
    assert p.feed(b"".join(srv(OP_TEXT, m) for m in msgs)) == msgs


def test_frame_split_at_every_byte_boundary_is_reassembled():
    data = srv(OP_TEXT, b"hello") + srv(OP_TEXT, b"x" * 300) + srv(OP_TEXT, b"y" * 70000)
    for cut in range(0, len(data), 997):
        p = WsProtocol()
        out = p.feed(data[:cut]) + p.feed(data[cut:])
        assert out == [b"hello", b"x" * 300, b"y" * 70000]
    p = WsProtocol()
    out = []
    for i in range(len(data)):  # one byte per read
        out += p.feed(data[i : i + 1])
    assert out == [b"hello", b"x" * 300, b"y" * 70000]


def test_16_bit_length_frame():
    payload = b"a" * 126
    frame = srv(OP_TEXT, payload)
    assert frame[1] == 126 and struct.unpack("!H", frame[2:4])[0] == 126
    assert WsProtocol().feed(frame) == [payload]


def test_64_bit_length_frame():
    payload = b"b" * 65536
    frame = srv(OP_TEXT, payload)
    assert frame[1] == 127 and struct.unpack("!Q", frame[2:10])[0] == 65536
    assert WsProtocol().feed(frame) == [payload]


def test_fragmented_message_with_ping_in_between():
    p = WsProtocol()
    data = (
        srv(OP_TEXT, b"hel", fin=False) + srv(OP_PING, b"p1") + srv(OP_CONT, b"lo ", fin=False) + srv(OP_CONT, b"world")
    )
    assert p.feed(data) == [b"hello world"]
    op, payload = unmask(p.take_outgoing())
    assert (op, payload) == (OP_PONG, b"p1")
    assert p.pings == 1


def test_binary_message_is_returned_too():
    assert WsProtocol().feed(srv(OP_BINARY, b"\x00\x01")) == [b"\x00\x01"]


def test_ping_gets_a_masked_pong_with_the_same_payload():
    p = WsProtocol()
    assert p.feed(srv(OP_PING, b"are you there")) == []
    op, payload = unmask(p.take_outgoing())
    assert op == OP_PONG and payload == b"are you there"
    assert p.take_outgoing() == b""


def test_server_close_is_echoed_once_and_recorded():
    p = WsProtocol()
    p.feed(srv(OP_CLOSE, struct.pack("!H", 1001) + b"going away"))
    assert p.closed and p.close_code == 1001 and p.close_reason == "going away"
    op, payload = unmask(p.take_outgoing())
    assert op == OP_CLOSE and payload == struct.pack("!H", 1001)
    with pytest.raises(ProtocolError):
        p.feed(srv(OP_TEXT, b"after close"))


def test_empty_close_means_1005():
    p = WsProtocol()
    p.feed(srv(OP_CLOSE))
    assert p.close_code == 1005


def test_our_close_is_masked_and_sent_once():
    p = WsProtocol()
    p.close(1000, "bye")
    op, payload = unmask(p.take_outgoing())
    assert op == OP_CLOSE and payload == struct.pack("!H", 1000) + b"bye"
    p.close(1000)
    p.feed(srv(OP_CLOSE, struct.pack("!H", 1000)))
    assert p.take_outgoing() == b""  # no second close


@pytest.mark.parametrize(
    "bad, why",
    [
        (bytes([0x81, 0x80 | 1]) + b"\x00\x00\x00\x00x", "masked"),
        (bytes([0xC1, 1]) + b"x", "reserved"),
        (bytes([0x09, 0]), "fragmented"),
        (bytes([0x89, 126, 0, 200]) + b"p" * 200, "125"),
        (srv(OP_CONT, b"x"), "continuation"),
        (bytes([0x83, 0]), "opcode"),
        (srv(OP_CLOSE, b"\x03"), "1-byte"),
        (srv(OP_TEXT, b"a", fin=False) + srv(OP_TEXT, b"b"), "fragmented message is open"),
    ],
)
def test_protocol_violations_are_refused(bad, why):
    with pytest.raises(ProtocolError, match=why):
        WsProtocol().feed(bad)


def test_oversized_message_is_refused_with_1009():
    p = WsProtocol(max_message=1000)
    with pytest.raises(ProtocolError) as ei:
        p.feed(srv(OP_TEXT, b"z" * 1001))
    assert ei.value.code == 1009


def test_handshake_request_carries_authorization_and_key():
    req, key = handshake_request("h:1", "/a/ws/s", [("Authorization", "Bearer abc")], key="dGhlIHNhbXBsZSBub25jZQ==")
    text = req.decode()
    assert text.startswith("GET /a/ws/s HTTP/1.1\r\n") and text.endswith("\r\n\r\n")
    assert "Authorization: Bearer abc\r\n" in text and "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" in text
    assert accept_value(key) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 section 1.3
    with pytest.raises(ValueError):
        handshake_request("h", "/", [("X", "a\r\nInjected: 1")])


def _response(status: str, key: str, extra: str = "", body: str = "") -> bytes:
    head = f"HTTP/1.1 {status}\r\n"
    if status.startswith("101"):
        head += f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept_value(key)}\r\n"
    return (head + extra + "\r\n" + body).encode()


def test_handshake_response_parsed_and_leftover_frames_kept():
    key = "k" * 22 + "=="
    data = _response("101 Switching Protocols", key) + srv(OP_TEXT, b"early")
    n = parse_handshake(data, key)
    assert n is not None and WsProtocol().feed(data[n:]) == [b"early"]
    assert parse_handshake(data[:20], key) is None


def test_handshake_401_raises_with_status_and_body():
    with pytest.raises(HandshakeError) as ei:
        parse_handshake(_response("401 Unauthorized", "k", "Content-Length: 7\r\n", "expired"), "k")
    assert ei.value.status == 401 and "expired" in str(ei.value)


def test_handshake_wrong_accept_is_refused():
    data = _response("101 Switching Protocols", "other-key")
    with pytest.raises(ProtocolError, match="Accept"):
        parse_handshake(data, "my-key")


def test_connections_leave_from_each_source_address_in_turn():
    """Loopback answers on all of 127/8: a listener on 127.0.0.1 sees its peers come from 127.0.0.2 and .3
    alternately, on the raw-socket path and on trio's (the TLS path), each with a kernel-chosen port."""
    import socket as _socket

    import trio

    from kit.client._ws import SOURCES, _connect_socket, open_tcp

    srv = _socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    port = srv.getsockname()[1]

    async def main():
        peers, socks = [], []
        for _ in range(4):
            socks.append(await _connect_socket("127.0.0.1", port))
            conn, peer = srv.accept()
            peers.append(peer[0])
            conn.close()
        for _ in range(2):
            stream = await open_tcp("127.0.0.1", port)
            conn, peer = srv.accept()
            peers.append(peer[0])
            conn.close()
            await stream.aclose()
        for s in socks:
            s.close()
        return peers

    SOURCES.set(["127.0.0.2", "127.0.0.3"])
    try:
        assert trio.run(main) == ["127.0.0.2", "127.0.0.3"] * 3
    finally:
        SOURCES.set([])
        srv.close()
