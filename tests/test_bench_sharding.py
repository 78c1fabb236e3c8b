"""bench/sharding.py run for a moment on tiny stores so that it does not rot (no number is
checked: benchmarks are noisy and are not tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import NO_REDIS_REASON, REDIS_SERVER
from redis_nodes import REDIS_CLI

ROOT = Path(__file__).resolve().parent.parent


def test_the_sharding_bench_measures_every_shard_count_and_the_cluster():
    if REDIS_SERVER is None:
        pytest.skip(NO_REDIS_REASON)
    cluster = [] if REDIS_CLI else ["--skip-cluster"]
    command = [sys.executable, "-m", "bench.sharding", "--records", "200", "--users", "20", "--shards", "1,4",
               "--calls", "20", "--operations", "40", *cluster]
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    for shards in (1, 4):
        assert f"S={shards}:" in finished.stdout
    assert "whole store" in finished.stdout and "per Redis CPU-second" in finished.stdout
    if REDIS_CLI:
        assert "busiest/mean" in finished.stdout
