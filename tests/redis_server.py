"""Private redis-servers that a test starts, stops, kills and restarts at will, on free
loopback ports (never the machine's shared Redis), plus a latency-injecting TCP proxy and
the small helpers every process-starting test uses (free_port, wait_until)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from conftest import REDIS_SERVER


def free_port(with_bus: bool = False) -> int:
    """A free loopback port; `with_bus` also needs port + 10000 free (the cluster bus)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if not with_bus:
            return port
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus, contextlib.suppress(OSError):
            bus.bind(("127.0.0.1", port + 10000))
            return port
    raise RuntimeError("no free port pair")


def wait_until(condition, timeout: float = 15.0, interval: float = 0.05, what: str = "condition"):
    """Poll `condition` until it returns something true (Redis or socket errors count as
    not yet); its value, or AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError, OSError):
            value = condition()
            if value:
                return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


class RedisServer:
    """One redis-server process on a fixed port and data directory, so a restart finds the
    same address and the same persistence files."""

    def __init__(self, directory: Path, *options: str):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.options = options
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, **kwargs) -> redis.Redis:
        kwargs.setdefault("socket_timeout", 5)
        kwargs.setdefault("retry", Retry(NoBackoff(), 0))
        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)

    def start(self, wait: bool = True) -> RedisServer:
        assert self.process is None or self.process.poll() is not None, "already running"
        command = [
            REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
            "--save", "", "--appendonly", "no", "--enable-debug-command", "yes", "--daemonize", "no",
            "--logfile", str(self.directory / "redis.log"), *self.options,
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        client = self.client(socket_connect_timeout=0.5)
        try:
            while True:
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError):
                    pass  # includes BusyLoadingError: still loading
                if time.monotonic() > deadline or (self.process and self.process.poll() is not None):
                    raise RuntimeError(f"redis-server on {self.port} did not come up; see {self.directory}/redis.log")
                time.sleep(0.05)
        finally:
            client.close()

    def loading(self) -> bool:
        """Whether the server answers PING with LOADING (a raw socket: no client retries)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"-LOADING")

    def _signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signum)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        """A clean shutdown (SIGTERM): Redis flushes its AOF, if any, and exits."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """kill -9: no chance to flush anything."""
        self._signal(signal.SIGKILL)

    def restart(self, wait: bool = True) -> None:
        self.stop()
        self.start(wait)


class LatencyProxy:
    """A loopback TCP proxy that holds every chunk from Redis for `delay` seconds.

    Chunks keep their order; each connection's two directions are pumped by their own
    threads, so a slow reply never stalls the request direction."""

    def __init__(self, target_port: int, delay: float):
        self.target_port = target_port
        self.delay = delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                downstream, _ = self.listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                return
            self.sockets += [downstream, upstream]
            threading.Thread(target=self._pump, args=(downstream, upstream, 0.0), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, downstream, self.delay), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, delay: float) -> None:
        try:
            while chunk := source.recv(65536):
                if delay:
                    time.sleep(delay)
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.closed.set()
        self.listener.close()
        for sock in self.sockets:
            sock.close()
