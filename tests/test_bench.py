"""The benchmark script itself, run for a moment against tiny stores so that it does not
rot. Nothing here checks a number: benchmarks are noisy and are not tests."""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import NO_REDIS_REASON, REDIS_SERVER

ROOT = Path(__file__).resolve().parent.parent
ENDPOINTS = {"get_id", "current", "validity", "list", "post", "put"}


def run_bench(tmp_path: Path, *options: str) -> dict[str, dict]:
    if REDIS_SERVER is None:
        pytest.skip(NO_REDIS_REASON)
    docs = tmp_path / "benchmarks.md"
    shutil.copy(ROOT / "docs" / "benchmarks.md", docs)
    command = [sys.executable, "-m", "bench.run", "--driver", "python", "--warmup", "0", "--rounds", "1",
               "--connections", "2", "--seed", "30", "--results", str(tmp_path), "--docs", str(docs), *options]
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    reports = {path.name.split("-")[0]: json.loads(path.read_text()) for path in tmp_path.glob("*.json")}
    reports["docs"] = {"text": docs.read_text()}
    return reports


def test_bench_table_runs_service_and_both_baselines_on_every_endpoint(tmp_path):
    reports = run_bench(tmp_path, "--duration", "0.3", "--heavy-connections", "3")
    endpoints = reports["main"]["endpoints"]
    assert set(endpoints) == ENDPOINTS | {"mixed", "mixed@3"}
    for result in endpoints.values():
        for side in ("service", "baseline", "naive"):
            assert result[side]["requests"] > 0 and result[side]["errors"] == 0, result
        for pair in ("vs_baseline", "vs_naive"):
            assert result[pair]["ratio"] > 0 and result[pair]["p99_ratio"] > 0, result
    assert endpoints["get_id"]["vs_naive"]["target"] == 0.8 and endpoints["mixed@3"]["vs_naive"]["p99_limit"] == 2.0
    text = reports["docs"]["text"]
    assert "| GET /current |" in text and "ratio to naive" in text and "| mixed workload, 3 connections |" in text


def test_the_naive_app_answers_every_endpoint_from_seeded_records(tmp_path):
    """One command per request, against what bench/run.py seeds for it."""
    if REDIS_SERVER is None:
        pytest.skip(NO_REDIS_REASON)
    from bench.run import Bench, gunicorn, seed_naive
    from tests.redis_server import RedisServer

    bench = Bench(argparse.Namespace(driver="python"), tmp_path)
    with RedisServer(tmp_path) as redis_server:
        url = redis_server.url
        seed_naive(url, 5, token_chars=100)
        with gunicorn("bench.naive_app:app", bench.naive_env(url), tmp_path, "naive",
                      config="bench/naive_gunicorn.conf.py") as naive:
            def call(method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
                connection = http.client.HTTPConnection(naive.url.removeprefix("http://"), timeout=10)
                connection.request(method, "/api/v1/session-storage" + path, json.dumps(body) if body else None,
                                   {"Content-Type": "application/json"} if body else {})
                response = connection.getresponse()
                status, answer = response.status, json.loads(response.read())
                connection.close()
                return status, answer

            status, record = call("GET", "/store_002")  # the path pads the number, the key does not
            assert status == 200 and record["id"] == "store_002" and len(record["token"]) == 100
            assert call("GET", "/current")[1]["token"].endswith("x")
            assert call("GET", "/validity")[1]["is_valid"] is True
            listed = call("GET", "?page=1&limit=2")[1]["data"]
            assert [item["id"] for item in listed] == ["store_005", "store_004"]
            body = {"user_id": "u", "token": "t" * 40, "expires_at": "2099-01-01T00:00:00Z"}
            assert call("POST", "", body)[0] == 201
            assert call("PUT", "/store_001", {"token": "t" * 40, "expires_at": "2099-01-01T00:00:00Z"})[0] == 200
        assert "access" not in (tmp_path / "naive.log").read_text().lower()


def test_bench_sweep_scale_memory_and_burst_runs_complete(tmp_path):
    reports = run_bench(
        tmp_path, "--sweep", "--sweep-configs", "gevent:1:1", "--duration", "0.3",
        "--scale", "--scale-sizes", "20,60", "--scale-duration", "0.3",
        "--memory", "--memory-records", "200",
        "--burst", "--burst-records", "300", "--burst-seconds", "1", "--burst-first", "0.5",
        "--burst-normal", "0.5", "--burst-lead", "5",
    )
    assert reports["sweep"]["sweep"][0]["service"]["errors"] == 0
    assert set(reports["scale"]["scale"]["p50_ratio_last_first"]) == {
        "list page 1", "list page 500", "current", "validity", "post"}
    assert reports["memory"]["memory"]["bytes_per_record"] > 0
    burst = reports["burst"]["burst"]
    assert burst["index"]["exact"], burst["index"]
    assert burst["minute_p99_ms"]["list"] > 0 and burst["minute_p99_ms"]["post"] > 0
    assert "histogram" not in burst["first"]["list"]  # merged, not stored
    assert burst["burst"]["post"]["errors"] == 0 and burst["burst"]["list"]["errors"] == 0
    text = reports["docs"]["text"]
    assert "**exact**" in text and "bytes per record" in text and "gevent-w1" in text


def test_app_cost_times_both_apps_on_every_endpoint():
    if REDIS_SERVER is None:
        pytest.skip(NO_REDIS_REASON)
    command = [sys.executable, "-m", "bench.app_cost", "--number", "3", "--repeat", "1"]
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    rows = {line.split()[0] for line in finished.stdout.splitlines()[1:] if line.strip()}
    assert rows == ENDPOINTS, finished.stdout


def redis_cost(tmp_path, *arguments: str) -> tuple[str, dict]:
    """bench/redis_cost.py run small, once: its printout and its report on this tree."""
    out = tmp_path / "cost.json"
    command = [sys.executable, "bench/redis_cost.py", "--rounds", "1", "--out", str(out), *arguments]
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    return finished.stdout, json.loads(out.read_text())["sides"]["this tree"]


def test_redis_cost_reads_redis_time_per_script_and_bytes_per_record(tmp_path):
    if REDIS_SERVER is None:
        pytest.skip(NO_REDIS_REASON)
    _, side = redis_cost(tmp_path, "--records", "300", "--users", "30", "--calls", "5")
    assert all(value > 0 for value in side["median_usec_per_call"].values()), side["median_usec_per_call"]
    assert side["memory"]["structures"]["record_encoding"] == {"listpack": 100}
    assert side["memory"]["bytes_per_record"] > side["memory"]["sealed_bytes"]


def test_each_flat_twin_runs_the_same_redis_commands_as_its_script(tmp_path):
    """A twin that drifted from its script (a command added to one and not the other)
    would make "the script's own Lua" in docs/benchmarks.md measure something else."""
    if REDIS_SERVER is None:
        pytest.skip(NO_REDIS_REASON)
    printed, side = redis_cost(tmp_path, "--records", "300", "--users", "30", "--calls", "20")
    measured = side["rounds"][0]

    def commands(operation):  # less the loader's, the probe's and the id blocks' own commands
        return {name: calls for name, calls in measured[operation]["inner_calls_per_call"].items()
                if not name.startswith(("config", "script", "incrby"))}

    twins = [name for name in measured if name.endswith(" (flat twin)")]
    assert len(twins) == 7, sorted(measured)
    for twin in twins:
        assert commands(twin) == commands(twin.removesuffix(" (flat twin)")), twin
    assert "| page 1 | " in printed and "flat twin" in printed


def test_redis_cost_counts_redis_instructions_per_script_under_callgrind(tmp_path):
    if REDIS_SERVER is None or shutil.which("valgrind") is None:
        pytest.skip("needs redis-server and valgrind")
    printed, side = redis_cost(tmp_path, "--records", "100", "--users", "10", "--calls", "5", "--instructions")
    counts = side["median_instructions_per_call"]
    floor = counts["EVALSHA of `return 1`"]
    assert floor > 0 and all(count > floor for name, count in counts.items() if name != "EVALSHA of `return 1`"), counts
    assert counts["page 1"] > counts["page 1 (flat twin)"] > counts["validity"], counts
    assert "instructions/call" in printed


def test_stack_cost_drives_both_sides_under_gunicorn():
    if REDIS_SERVER is None:
        pytest.skip(NO_REDIS_REASON)
    command = [sys.executable, "-m", "bench.stack_cost", "--no-valgrind", "--cases", "get_id", "--requests", "2"]
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    assert finished.stdout.splitlines()[1].split()[0] == "get_id", finished.stdout


def test_decompose_measures_every_part_of_a_request(tmp_path):
    if REDIS_SERVER is None:
        pytest.skip(NO_REDIS_REASON)
    command = [sys.executable, "-m", "bench.decompose", "--no-valgrind", "--driver", "python", "--cases", "get_id,post",
               "--records", "30", "--seconds", "0.3", "--rounds", "1", "--passes", "1", "--repeat", "1", "--number",
               "3", "--json", str(tmp_path / "decompose.json")]
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    report = json.loads((tmp_path / "decompose.json").read_text())
    assert set(report["rows_us"]) == {"get_id", "post"}
    assert report["sides"]["naive"]["post"]["errors"] == 0 and report["sides"]["service"]["get_id"]["errors"] == 0
    assert "| audit line | " in finished.stdout and "HMGET" in finished.stdout


def test_runs_are_merged_by_their_latencies_not_their_percentiles():
    from bench.run import merged_p99

    assert merged_p99([[1000, 99]], [[5000, 1]]) == 1.0  # the slow run's one request is the top 1 %
    assert merged_p99([[1000, 98]], [[5000, 2]]) == 5.0
    assert merged_p99([[2000, 50], [1000, 49]], [[3000, 1]]) == 2.0
