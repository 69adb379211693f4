"""bench/kv_routing_sim.py: the simulated-clock routing benchmark keeps working and stays faithful.

It drives the real ``KvPolicy``/``KvIndex`` with the simulated engine's own event batches, so it also
checks, on a busy scarce cache, that the index never falls out of step with the engines' events.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import kv_routing_sim as sim  # noqa: E402


@pytest.fixture(scope="module")
def small_run():
    args = sim.parse_args(["--requests", "96", "--warmup-requests", "32", "--concurrency", "16"])
    requests = sim.workload(args)
    strategies = ("round-robin", "kv", "active", "clairvoyant")
    return args, {s: sim.summarise(args, sim.Simulation(args, s, requests).run()) for s in strategies}


def test_every_request_completes_once_under_every_strategy(small_run):
    args, rows = small_run
    for row in rows.values():
        assert row["requests"] == args.requests
        assert sum(row["requests_per_worker"].values()) == args.requests


def test_kv_routing_caches_more_than_round_robin(small_run):
    _, rows = small_run
    assert rows["kv"]["cached_fraction"] > 1.5 * rows["round-robin"]["cached_fraction"]
    assert rows["active"]["cached_fraction"] > rows["round-robin"]["cached_fraction"]


def test_same_seed_same_result():
    args = sim.parse_args(["--requests", "48", "--warmup-requests", "16", "--concurrency", "8"])
    requests = sim.workload(args)
    first, second = (sim.Simulation(args, "kv", requests).run() for _ in range(2))
    assert first == second
