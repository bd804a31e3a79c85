"""bench/delayline.py: a round trip through the line takes at least its RTT, and bytes cross intact, in order, both ways.

Only lower bounds on time are asserted: a loaded machine may be slower, never faster than the line allows.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from bench.delayline import DelayLine

ONE_WAY = 0.02
RTT = 2 * ONE_WAY


class Server:
    """A loopback TCP server running ``handle(conn)`` for each connection in its own thread."""

    def __init__(self, handle: Callable[[socket.socket], None]):
        self.handle = handle
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(5)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            self.handle(conn)

    def close(self) -> None:
        self.sock.close()
        self.thread.join(timeout=10)


def echo(conn: socket.socket) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while data := conn.recv(65536):
        conn.sendall(data)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        data = sock.recv(n - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def recv_all(sock: socket.socket) -> bytes:
    parts = []
    while data := sock.recv(65536):
        parts.append(data)
    return b"".join(parts)


@pytest.fixture
def echo_line() -> Iterator[DelayLine]:
    server = Server(echo)
    line = DelayLine(server.port, ONE_WAY, lifetime_s=60).start()
    yield line
    line.stop()
    server.close()


def connect(line: DelayLine) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", line.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def test_each_echo_through_the_line_takes_at_least_the_round_trip_time(echo_line):
    with connect(echo_line) as sock:
        took = []
        for i in range(5):
            message = f"ping {i}".encode()
            started = time.monotonic()
            sock.sendall(message)
            assert recv_exactly(sock, len(message)) == message
            took.append(time.monotonic() - started)
    assert took[0] >= 0.9 * 2 * RTT  # the first bytes also pay for the emulated TCP handshake
    assert min(took[1:]) >= 0.9 * RTT


def test_a_megabyte_echoed_through_the_line_comes_back_intact_and_in_order(echo_line):
    payload = os.urandom(1 << 20)
    with connect(echo_line) as sock:
        writer = threading.Thread(
            target=lambda: [sock.sendall(payload[i : i + 1000]) for i in range(0, len(payload), 1000)]
        )
        writer.start()
        back = recv_exactly(sock, len(payload))
        writer.join(timeout=10)
    assert back == payload


def test_each_direction_carries_its_own_stream_intact_and_the_end_of_each_stream_crosses():
    upstream, downstream = os.urandom(700_000), os.urandom(900_000)
    received: list[bytes] = []

    def swap(conn: socket.socket) -> None:
        sender = threading.Thread(target=lambda: (conn.sendall(downstream), conn.shutdown(socket.SHUT_WR)))
        sender.start()
        received.append(recv_all(conn))
        sender.join(timeout=10)

    server = Server(swap)
    with DelayLine(server.port, ONE_WAY, lifetime_s=60) as line, connect(line) as sock:
        sender = threading.Thread(target=lambda: (sock.sendall(upstream), sock.shutdown(socket.SHUT_WR)))
        sender.start()
        got = recv_all(sock)
        sender.join(timeout=10)
        server.close()  # waits for the server to read to the end, before the line is stopped
    assert got == downstream
    assert received == [upstream]


def test_a_bandwidth_cap_makes_an_echo_take_at_least_its_size_over_the_rate():
    size, rate = 500_000, 5_000_000.0
    server = Server(echo)
    with DelayLine(server.port, 0.0, rate_bytes_per_s=rate, lifetime_s=60) as line, connect(line) as sock:
        started = time.monotonic()
        writer = threading.Thread(target=sock.sendall, args=(b"z" * size,))
        writer.start()
        back = recv_exactly(sock, size)
        took = time.monotonic() - started
        writer.join(timeout=10)
    server.close()
    assert back == b"z" * size
    assert took >= 0.9 * size / rate  # the way back overlaps the way there: one size over the rate


def test_the_line_stops_by_itself_after_its_lifetime_and_leaves_no_thread():
    server = Server(echo)
    line = DelayLine(server.port, ONE_WAY, lifetime_s=0.5).start()
    with connect(line) as sock:
        sock.sendall(b"hello")
        assert recv_exactly(sock, 5) == b"hello"
        assert line.stopped.wait(timeout=10)
        assert sock.recv(10) == b""  # the line closed the connection when it stopped
    server.close()
    assert not any(t.is_alive() for t in line.threads())


def test_a_line_to_a_port_nobody_listens_on_closes_the_client_connection():
    free = socket.create_server(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    with DelayLine(port, ONE_WAY, lifetime_s=60) as line, connect(line) as sock:
        assert sock.recv(10) == b""
