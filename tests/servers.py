"""The service as a real process: gunicorn on a free loopback port (private
redis-servers come from redis_server.py), and HTTP/1.1 spoken by hand to it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from conftest import TEST_KEYS
from redis_server import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent


class Gunicorn:
    """The service as operators run it: `gunicorn -c gunicorn.conf.py wsgi:app`."""

    def __init__(self, log_path: Path, workers: int = 1, **environment: str) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.environment = {
            "SESSIONSVC_ENCRYPTION_KEYS": ",".join(TEST_KEYS),
            "SESSIONSVC_LOG_FORMAT": "json",
            "WEB_CONCURRENCY": str(workers),
            **environment,
        }
        self.process: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Gunicorn:
        environment = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("SESSIONSVC_", "PROMETHEUS_")) and name not in ("REDIS_URL", "WEB_CONCURRENCY")
        }
        environment.update(self.environment)
        self.log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", self.base[7:], "wsgi:app"],
            cwd=ROOT,
            env=environment,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
        )
        wait_until(lambda: self._healthy(), timeout=30, what="gunicorn to answer /healthz")
        return self

    def _healthy(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"gunicorn exited early:\n{self.log_path.read_text()[-3000:]}")
        try:
            return self.request("GET", "/healthz")[0] == 200
        except OSError:
            return False

    def request(self, method: str, path: str, body: dict | None = None, headers: dict | None = None):
        """(status, headers, parsed JSON or text) of one request on a new connection."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers or {})
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status, response_headers, raw = response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            status, response_headers, raw = error.code, error.headers, error.read()
        text = raw.decode()
        is_json = response_headers.get("Content-Type", "").startswith("application/json")
        return status, response_headers, json.loads(text) if is_json else text

    def stop(self) -> str:
        """Stop gunicorn and return everything it wrote."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        self.log_file.close()
        return self.log_path.read_text()


class RawConnection:
    """One keep-alive connection spoken to by hand: bytes sent as they are (pipelined
    requests, chunked bodies, requests that are not HTTP), whole responses read back one
    at a time; bytes of the next responses that came with a read wait for the next call."""

    def __init__(self, port: int) -> None:
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffered = b""

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc_info) -> None:
        self.socket.close()

    def send(self, *parts: bytes) -> None:
        for part in parts:
            self.socket.sendall(part)

    def _more(self) -> None:
        chunk = self.socket.recv(65536)
        assert chunk, "the server closed the connection"
        self.buffered += chunk

    def response(self) -> tuple[int, dict[str, str], bytes]:
        """The next response: (status, headers with lower-case names, body)."""
        while b"\r\n\r\n" not in self.buffered:
            self._more()
        head, _, self.buffered = self.buffered.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        length = int(headers.get("content-length", 0))
        while len(self.buffered) < length:
            self._more()
        body, self.buffered = self.buffered[:length], self.buffered[length:]
        return int(status_line.split()[1]), headers, body

    def rest(self) -> bytes:
        """Everything the server sends until it closes the connection."""
        while chunk := self.socket.recv(65536):
            self.buffered += chunk
        rest, self.buffered = self.buffered, b""
        return rest


def raw_exchange(port: int, *parts: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send one request's bytes on a new connection and read its response."""
    with RawConnection(port) as connection:
        connection.send(*parts)
        return connection.response()
