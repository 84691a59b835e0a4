"""A backend on raw sockets for fault tests: it sends exactly the bytes a test wants.

``RawOrigin(handler)`` listens on 127.0.0.1 and serves each accepted connection in a
thread by calling ``handler(conn, origin)``; ``conn`` is a ``RawConn`` that reads
requests (head and body, Content-Length or chunked) and records them, and that the
test can reset (RST) while it waits idle between requests. Everything is bounded in
time: reads poll with a short timeout and give up after ``IDLE_LIMIT_S``.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time

IDLE_LIMIT_S = 30.0


class RawConn:
    def __init__(self, sock: socket.socket, origin: "RawOrigin", number: int) -> None:
        self.sock = sock
        self.origin = origin
        self.number = number       # connection number at this origin, from 1
        self.requests = 0          # requests read on this connection
        self.buf = b""
        self.eof = False

    # ---- reading

    def _fill(self) -> bool:
        """Read more bytes; False at EOF, on reset, on a reset request, or after IDLE_LIMIT_S."""
        deadline = time.monotonic() + IDLE_LIMIT_S
        while time.monotonic() < deadline:
            if self.origin.reset_requested.is_set() and not self.buf:
                self.reset()
                self.origin.reset_done.set()
                return False
            ready, _, _ = select.select([self.sock], [], [], 0.02)
            if not ready:
                continue
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                self.eof = True
                return False
            self.buf += data
            return True
        return False

    def _take_line(self) -> bytes | None:
        while b"\r\n" not in self.buf:
            if not self._fill():
                return None
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _take(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            if not self._fill():
                return None
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_request(self) -> dict | None:
        """The next request: {'line', 'headers' (lower-case dict), 'raw_head', 'body'}; None at EOF."""
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                return None
        raw_head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = raw_head.split(b"\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        body = b""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size_line = self._take_line()
                if size_line is None:
                    return None
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    while (trailer := self._take_line()) not in (b"", None):
                        pass
                    break
                piece = self._take(size + 2)
                if piece is None:
                    return None
                body += piece[:-2]
        elif "content-length" in headers:
            body = self._take(int(headers["content-length"]))
            if body is None:
                return None
        self.requests += 1
        req = {"line": lines[0].decode("latin-1"), "headers": headers, "raw_head": raw_head, "body": body,
               "conn": self.number, "n": self.requests}
        self.origin.record(req)
        return req

    # ---- writing and closing

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def reset(self) -> None:
        """Close with a TCP RST (SO_LINGER 0), as a backend's idle timer under load may."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def wait_closed_by_peer(self, timeout_s: float = 10.0) -> bool:
        """True once the other side closed this connection (EOF or reset)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.sock], [], [], 0.05)
            if ready:
                try:
                    if not self.sock.recv(65536):
                        return True
                except OSError:
                    return True
        return False


class RawOrigin:
    def __init__(self, handler) -> None:
        self.handler = handler
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.requests: list[dict] = []
        self.connections = 0
        self.closed_by_peer: list[int] = []   # connection numbers the handler saw closed by edge
        self.reset_requested = threading.Event()
        self.reset_done = threading.Event()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)

    def record(self, req: dict) -> None:
        with self._lock:
            self.requests.append(req)

    def reset_idle_connection(self, timeout_s: float = 10.0) -> bool:
        """Ask the connection waiting idle for its next request to close with RST; True once done."""
        self.reset_done.clear()
        self.reset_requested.set()
        ok = self.reset_done.wait(timeout_s)
        self.reset_requested.clear()
        return ok

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                number = self.connections
            t = threading.Thread(target=self._serve, args=(RawConn(sock, self, number),), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: RawConn) -> None:
        try:
            self.handler(conn, self)
        finally:
            try:
                conn.sock.close()
            except OSError:
                pass

    def stop(self) -> None:
        self._stop.set()
        self.listener.close()
        for t in self._threads:
            t.join(timeout=2)


def response(status: int, body: bytes, *extra: str) -> bytes:
    head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n" + "".join(f"{h}\r\n" for h in extra) + "\r\n"
    return head.encode("latin-1") + body
