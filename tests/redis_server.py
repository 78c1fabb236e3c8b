"""The one way a private redis-server is started, for the tests, bench/ and scripts/: on a
free loopback port (never the machine's shared Redis) with its own data directory, to be
stopped, killed, paused and restarted at will; plus `free_port`, `wait_until` and a
latency-injecting TCP proxy.

Why here: the tests import it as `redis_server` (pytest.ini puts tests/ on the path);
bench/ and scripts/, run as modules from the repository root (`python -m bench.run`,
`python -m scripts.soak`, as the Makefile does), import it as `tests.redis_server` (tests/
is then a namespace package), so nobody edits sys.path. It imports nothing of the tests
(no pytest, no conftest), so it costs a benchmark nothing; and it stays out of sessionsvc/
so the service does not ship a process launcher.

The tests' shared Redis (conftest.py's `redis_proc`, flushed before each test that asks
for `real_redis`) is started by pytest-redis, the project's library for it, with this
module's REDIS_SERVER. Two ways remain because pytest-redis starts one session-wide
server with its own fixed options and only inside pytest: whatever a test stops, kills or
restarts, runs with other options (AOF, cluster mode, Sentinel) or runs outside pytest
starts here (tests/redis_nodes.py builds Sentinel groups and Clusters from RedisServer).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


def executable(name: str) -> str | None:
    """`name` on PATH, or where Debian and a source build put it (a sudo or CI PATH may be thin)."""
    return shutil.which(name) or shutil.which(name, path="/usr/bin:/usr/local/bin")


REDIS_SERVER = executable("redis-server")
REDIS_CLI = executable("redis-cli")


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
    same address and the same persistence files. No persistence unless `options` (extra
    `--name value` arguments, which win over the defaults) ask for it.

    `with RedisServer(directory) as server:` starts it (unless started) and stops it."""

    def __init__(self, directory: Path, *options: str, with_bus: bool = False, port: int | None = None):
        if REDIS_SERVER is None:
            raise RuntimeError("no redis-server binary on this machine (Debian: apt-get install redis-server)")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port(with_bus) if port is None else port
        self.options = options
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [REDIS_SERVER, *self.address_options(), "--save", "", "--appendonly", "no",
                "--enable-debug-command", "yes", *self.options]

    def address_options(self) -> list[str]:
        """Where it listens and writes: loopback, its directory and log, in the foreground."""
        return ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                "--logfile", str(self.directory / "redis.log"), "--daemonize", "no"]

    def client(self, **kwargs) -> redis.Redis:
        kwargs.setdefault("socket_timeout", 5)
        kwargs.setdefault("retry", Retry(NoBackoff(), 0))
        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)

    def start(self, *extra: str, wait: bool = True) -> RedisServer:
        """Start (or start again, on the same port with the same options, plus `extra`
        arguments); unless told not to, wait until it answers PING."""
        assert not self.running(), "already running"
        assert all(isinstance(argument, str) for argument in extra), "pass wait= by name"
        self.process = subprocess.Popen([*self.command(), *extra], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        if wait:
            try:
                self.wait_ready()
            except BaseException:
                self.kill()
                raise
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

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def pause(self) -> None:
        """SIGSTOP: the process holds its connections and answers nothing."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self, timeout: float = 30.0) -> None:
        """A clean shutdown (SIGTERM, resumed first if paused): Redis flushes its AOF, if any,
        and exits; killed if it has not within `timeout` seconds."""
        if self.running():
            os.kill(self.process.pid, signal.SIGCONT)
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """kill -9: no chance to flush anything, no goodbye to replicas or Sentinels."""
        if self.running():
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def restart(self, wait: bool = True) -> None:
        self.stop()
        self.start(wait=wait)

    def __enter__(self) -> RedisServer:
        if not self.running():
            self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


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
