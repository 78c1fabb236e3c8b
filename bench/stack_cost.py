"""What a request costs the whole stack, service against baseline, counted in instructions.

Each side runs under gunicorn (`gunicorn.conf.py`, one sync worker) inside valgrind
(callgrind, children traced), against a private redis-server seeded as for `make bench`,
and is sent requests one at a time: after 20 to warm up, the worker's counters are zeroed,
`--requests` more are sent, and its counters dumped (`callgrind_control`), so start-up
never enters the figure. Everything a worker does for a request is in it: gunicorn's
parsing and access line, the app, redis-py and its socket calls (the kernel's share and
redis-server are not). Sync by default: one request at a time, so the count is the
request's own, not a share of whatever else the event loop was doing; `--worker gevent`
counts the production worker class the same way (its event loop, hub switches and
greenlet per connection included); what its scheduling does to latency under load shows
only in `make bench`.

    python -m bench.stack_cost                       # every endpoint (slow: all under valgrind)
    python -m bench.stack_cost --cases get_id,post   # some of them
    python -m bench.stack_cost --worker gevent       # under the production worker class
    python -m bench.stack_cost --no-valgrind         # the same requests, nothing counted (smoke test)

valgrind runs its x86 code without the SHA extensions, so SHA-256 (HMAC fingerprints,
digests) counts several times what it costs on the real CPU: the service's figure leans
high for every request that hashes a token.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench.run import BASELINE_PREFIX, ENDPOINTS, Bench, RequestMaker, gunicorn, seed
from tests.redis_server import RedisServer

RECORDS = 100
WARMUP = 20
TOTALS = re.compile(r"^(?:summary|totals):\s+(\d+)", re.MULTILINE)


@contextlib.contextmanager
def worker(app: str, env: dict[str, str], workdir: Path, counted: bool,
           worker_class: str = "sync") -> Iterator[tuple[int, int]]:
    """gunicorn with one worker of `worker_class`, under valgrind's callgrind when `counted`; yields
    its port and the worker's pid. The worker timeout is long: under valgrind a worker
    boots slowly and must not be replaced."""
    wrapper = ("valgrind", "--tool=callgrind", "--trace-children=yes",
               f"--callgrind-out-file={workdir}/callgrind.%p") if counted else ()
    # sync is forced; gevent is the class gunicorn.conf.py picks (the service's own)
    forced = ("-k", "sync") if worker_class == "sync" else ()
    extra = (*forced, "-w", "1", "--timeout", "900")
    with gunicorn(app, env, workdir, "stack", extra, wrapper, boot_seconds=300) as server:
        children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
        yield int(server.url.rsplit(":", 1)[1]), int(children[0])


def send(port: int, mode: str, requests: int, expires: str, tag: str) -> None:
    """`requests` requests of one kind, each on its own connection (sync workers close them)."""
    maker = RequestMaker(RECORDS, expires, 800, tag)
    for _ in range(requests):
        method, path, body = maker.make(mode)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        response = connection.getresponse()
        response.read()
        connection.close()
        if response.status >= 300:
            raise RuntimeError(f"{method} {path}: {response.status}")


def control(pid: int, option: str, port: int, workdir: Path) -> None:
    """callgrind_control `option` (-z zero, -d dump) on the worker. callgrind acts on it
    when the worker next runs, so one /healthz wakes it; that request's cost is the same
    for both sides and both counts."""
    command = subprocess.Popen(["callgrind_control", option, str(pid)], cwd=workdir,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("GET", "/healthz")
    connection.getresponse().read()
    command.wait(120)


def count(app: str, env: dict[str, str], mode: str, requests: int, workdir: Path, expires: str,
          counted: bool, worker_class: str = "sync") -> int:
    """Instructions the worker spent on `requests` requests, after a warm-up of 20."""
    with worker(app, env, workdir, counted, worker_class) as (port, pid):
        send(port, mode, WARMUP, expires, "warm-up")
        if counted:
            control(pid, "-z", port, workdir)
        send(port, mode, requests, expires, "counted")
        if not counted:
            return 0
        control(pid, "-d", port, workdir)
        dumps = sorted(workdir.glob(f"callgrind.{pid}.*"), key=lambda path: path.stat().st_mtime)
        if not dumps:
            raise RuntimeError("callgrind wrote no dump for the worker")
        return int(TOTALS.search(dumps[-1].read_text()).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(ENDPOINTS))
    parser.add_argument("--requests", type=int, default=300, help="requests counted per side and endpoint")
    parser.add_argument("--worker", default="sync", choices=("sync", "gevent"), help="gunicorn worker class")
    parser.add_argument("--no-valgrind", dest="counted", action="store_false", help="send the requests only")
    args = parser.parse_args()
    print(f"{'endpoint':10} {'service':>10} {'baseline':>10} {'ratio':>6}   (instructions per request, whole stack)")
    with tempfile.TemporaryDirectory() as directory, RedisServer(Path(directory)) as redis_server:
        url, workdir = redis_server.url, Path(directory)
        bench = Bench(argparse.Namespace(driver="python"), workdir)  # the key, expiry and settings of `make bench`
        seed(url, bench.key, RECORDS)
        seed(url, None, RECORDS, key_prefix=BASELINE_PREFIX)
        sides = {"service": ("wsgi:app", bench.service_env(url)),
                 "baseline": ("bench.baseline_app:app", bench.baseline_env(url))}
        for mode in args.cases.split(","):
            per_request = {}
            for side, (app, env) in sides.items():
                spent = count(app, env, mode, args.requests, workdir, bench.expires, args.counted, args.worker)
                per_request[side] = spent // args.requests
            ratio = per_request["service"] / per_request["baseline"] if per_request["baseline"] else 0.0
            print(f"{mode:10} {per_request['service']:10,} {per_request['baseline']:10,} {ratio:6.2f}", flush=True)


if __name__ == "__main__":
    main()
