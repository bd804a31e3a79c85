"""A TCP delay line on 127.0.0.1: every byte is forwarded a fixed time after it arrived, both ways (RTT = 2 x delay).

Each accepted connection gets its own connection to the target; per direction one thread reads and stamps what
arrives, another delivers it when its time has come, so the line adds no waits of its own (TCP_NODELAY on both
sockets, TCP_QUICKACK re-armed after each read, data forwarded as it arrives, in order). Optionally a bandwidth cap
serialises each direction at a fixed rate before the delay, like a slow link. The line terminates TCP at each end:
the sender's window over the "link" is the line's buffer (``buffer_bytes`` per direction), not a real TCP window.
The first bytes of a connection wait one extra round trip, as a real TCP handshake would have cost it.
"""

from __future__ import annotations

import collections
import contextlib
import select
import socket
import threading
import time

LOOPBACK = "127.0.0.1"
READ_SIZE = 256 * 1024
PIECE = 64 * 1024  # with a bandwidth cap, a read is paced in pieces this size, so the link stays smooth
TICK = 0.2  # how often a blocked thread looks at the stop flag


def _tune(sock: socket.socket) -> None:
    sock.settimeout(None)  # blocking: a timeout would bound a whole sendall() of a slow receiver
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    _quickack(sock)


def _quickack(sock: socket.socket) -> None:
    # Linux clears TCP_QUICKACK by itself: re-armed after every read, so the line never delays an ACK.
    if hasattr(socket, "TCP_QUICKACK"):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


class _Direction:
    """One direction of one connection: bytes read from ``src`` are written to ``dst`` at their deadline."""

    def __init__(self, conn: _Connection, src: socket.socket, dst: socket.socket, not_before: float):
        self.conn, self.line, self.src, self.dst = conn, conn.line, src, dst
        self.not_before = not_before  # nothing is delivered earlier (the emulated handshake)
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()  # b"" is the end of the stream
        self.queued = 0
        self.cond = threading.Condition()
        self.link_free = 0.0  # with a bandwidth cap: when the link has sent what was read so far
        self.last_deadline = 0.0

    def start(self) -> list[threading.Thread]:
        threads = [
            threading.Thread(target=self._guard, args=(self._read,), name="delayline-read", daemon=True),
            threading.Thread(target=self._guard, args=(self._write,), name="delayline-write", daemon=True),
        ]
        for t in threads:
            t.start()
        return threads

    def _guard(self, loop) -> None:  # type: ignore[no-untyped-def]
        try:
            loop()
        except (OSError, ValueError):  # ValueError: select() on a socket the other side has just closed
            self.conn.finished(failed=True)  # a reset ends the whole connection, as on a real link
        with self.cond:
            self.cond.notify_all()

    def _over(self) -> bool:
        return self.line.stopping.is_set() or self.conn.closed.is_set()

    def _deadlines(self, data: bytes, now: float) -> list[tuple[float, bytes]]:
        rate = self.line.rate_bytes_per_s
        if not rate or not data:
            pieces = [(now, data)]
        else:
            pieces = []
            for i in range(0, len(data), PIECE):
                piece = data[i : i + PIECE]
                self.link_free = max(now, self.link_free) + len(piece) / rate
                pieces.append((self.link_free, piece))
        out = []
        for sent, piece in pieces:
            # max() keeps the order even if the clock were to step: a later read never overtakes an earlier one.
            self.last_deadline = max(sent + self.line.delay_s, self.not_before, self.last_deadline)
            out.append((self.last_deadline, piece))
        return out

    def _read(self) -> None:
        while not self._over():
            # poll, not a socket timeout: the same socket is written by the other direction, and a timeout
            # would apply to its sendall() too.
            if not select.select([self.src], [], [], TICK)[0]:
                continue
            data = self.src.recv(READ_SIZE)
            now = time.monotonic()
            _quickack(self.src)
            with self.cond:
                self.queue.extend(self._deadlines(data, now))
                self.queued += len(data)
                self.cond.notify_all()
                while self.queued > self.line.buffer_bytes and not self._over():
                    self.cond.wait(TICK)  # back-pressure: the sender waits, as on a full link
            if not data:
                return

    def _due(self) -> tuple[bytes, bool] | None:
        """Wait for the head's deadline; return everything due (joined) and whether the stream ended there."""
        with self.cond:
            while not self._over():
                if self.queue:
                    wait = self.queue[0][0] - time.monotonic()
                    if wait <= 0:
                        break
                    self.cond.wait(min(wait, TICK))
                else:
                    self.cond.wait(TICK)
            else:
                return None
            now, parts, ended = time.monotonic(), [], False
            while self.queue and self.queue[0][0] <= now:
                data = self.queue.popleft()[1]
                if not data:
                    ended = True
                    break
                parts.append(data)
            out = b"".join(parts)
            self.queued -= len(out)
            self.cond.notify_all()
            return out, ended

    def _write(self) -> None:
        while (due := self._due()) is not None:
            data, ended = due
            if data:
                self.dst.sendall(data)
            if ended:
                self.dst.shutdown(socket.SHUT_WR)  # the FIN, delayed like the bytes before it
                self.conn.finished(failed=False)
                return


class _Connection:
    """A client's connection and the line's own connection to the target, closed together when both ends finish."""

    def __init__(self, line: DelayLine, client: socket.socket, accepted_at: float):
        self.line, self.client = line, client
        self.server = socket.create_connection((LOOPBACK, line.target_port), timeout=10)
        _tune(client)
        _tune(self.server)
        self.lock = threading.Lock()
        self.open_directions = 2
        self.closed = threading.Event()
        d = line.delay_s
        # A real client would send its first byte after SYN / SYN-ACK (2 d) and it would arrive d later.
        upstream_start = accepted_at + (3 * d if line.handshake else 0.0)
        downstream_start = accepted_at + (2 * d if line.handshake else 0.0)
        self.threads = _Direction(self, client, self.server, upstream_start).start()
        self.threads += _Direction(self, self.server, client, downstream_start).start()

    def finished(self, failed: bool) -> None:
        """Note that one direction has ended; close both sockets after a failure or when both have ended."""
        with self.lock:
            self.open_directions -= 1
            last = self.open_directions <= 0
        if failed or last:
            self.close()

    def close(self) -> None:
        """Close both sockets; the threads see it and end."""
        self.closed.set()
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class DelayLine:
    """Listen on 127.0.0.1 (a free port, ``port`` after start()) and forward to 127.0.0.1:``target_port``, delayed.

    ``delay_s`` is one way (RTT = 2 x delay_s); ``rate_bytes_per_s`` caps each direction's bandwidth (None: no cap).
    The line stops by itself after ``lifetime_s`` seconds; stop() ends it earlier.
    """

    def __init__(
        self,
        target_port: int,
        delay_s: float,
        *,
        rate_bytes_per_s: float | None = None,
        buffer_bytes: int = 32 * 1024 * 1024,
        lifetime_s: float = 3600.0,
        max_connections: int = 64,
        handshake: bool = True,
    ):
        if delay_s < 0 or (rate_bytes_per_s is not None and rate_bytes_per_s <= 0):
            raise ValueError("delay_s must be >= 0 and rate_bytes_per_s > 0")
        self.target_port, self.delay_s = target_port, delay_s
        self.rate_bytes_per_s, self.buffer_bytes = rate_bytes_per_s, buffer_bytes
        self.lifetime_s, self.max_connections, self.handshake = lifetime_s, max_connections, handshake
        self.port = 0
        self.stopping = threading.Event()
        self.stopped = threading.Event()
        self.connections: list[_Connection] = []
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None

    def start(self) -> DelayLine:
        """Bind a free loopback port, start accepting and return self."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOOPBACK, 0))
        listener.listen(16)
        listener.settimeout(TICK)
        self._listener, self.port = listener, listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name="delayline-accept", daemon=True)
        self._acceptor.start()
        return self

    def _accept_loop(self) -> None:
        assert self._listener is not None
        ends = time.monotonic() + self.lifetime_s
        try:
            while not self.stopping.is_set() and time.monotonic() < ends:
                try:
                    client, _ = self._listener.accept()
                except TimeoutError:
                    continue
                accepted_at = time.monotonic()
                self.connections = [c for c in self.connections if any(t.is_alive() for t in c.threads)]
                if len(self.connections) >= self.max_connections:
                    client.close()  # bounded: a runaway client cannot make the line start threads without end
                    continue
                try:
                    self.connections.append(_Connection(self, client, accepted_at))
                except OSError:
                    client.close()  # the target refused: the client sees its connection closed
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        self.stopping.set()
        if self._listener is not None:
            self._listener.close()
        for c in self.connections:
            c.close()
        for c in self.connections:
            for t in c.threads:
                t.join(timeout=2 * TICK + 1)
        self.stopped.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listener and every connection; return once every thread of the line has ended (or timeout)."""
        self.stopping.set()
        if self._acceptor is not None:
            self._acceptor.join(timeout=timeout)
        self.stopped.wait(timeout)

    def threads(self) -> list[threading.Thread]:
        """Return the line's threads (the acceptor and every connection's), for checks that none is left."""
        out = [self._acceptor] if self._acceptor is not None else []
        return out + [t for c in self.connections for t in c.threads]

    def __enter__(self) -> DelayLine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
