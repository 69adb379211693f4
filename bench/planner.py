"""Planner benchmark: a bursty trace on the simulated cluster, planner vs static provisioning at peak.

    .venv/bin/python bench/planner.py            # or: make bench-planner

The cluster is the simulated engine's own scheduler, KV cache and default timing
model (polynomial, fitted on a GPU engine) for every worker, on a simulated clock
(inference_graph.planning.simulation): deterministic, minutes of traffic in
seconds. Trace: quiet -> 10x burst of long prompts -> long-output phase -> quiet.
Reported per run: SLA attainment (requests with TTFT <= 500 ms and mean ITL <=
50 ms), replica-seconds, their ratio to static provisioning at the planner's
peak, and changes of direction per role. Writes JSON and an SVG plot (replicas
and load over time) to bench/results/; the last line sums up the SLA planner.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from harness import fmt, output_args, table, write_json
from inference_graph.core.spec import GraphSpec, parse_graph
from inference_graph.engines.mocker.timing import PolynomialTiming
from inference_graph.planning import Planner, make_policy
from inference_graph.planning.simulation import Cluster, ClusterConfig, EngineShape, Phase, SimResult

TTFT_MS, ITL_MS = 500.0, 50.0
# An 8B-class model on one GPU: the timing model's defaults; 25 GB/s KV transfer of
# 128 KiB per token (32 layers x 8 KV heads x 128 dims x 2 (K, V) x 2 bytes).
ENGINE = EngineShape(PolynomialTiming(), transfer_s_per_token=131072 / 25e9)
# quiet -> long prompts ramping to 10x the quiet rate over 90 s -> 10x plateau -> long outputs -> quiet
RAMP = [Phase(f"ramp-{i}", 15, 2 + 3 * i, 6000, 150) for i in range(1, 7)]
TRACE = [
    Phase("quiet", 120, 2, 3000, 150),
    *RAMP,
    Phase("burst", 90, 20, 6000, 150),
    Phase("long-output", 180, 4, 1000, 2000),
    Phase("quiet-again", 180, 2, 3000, 150),
]
# --step: the same 10x burst arriving at once (no ramp)
STEP_TRACE = [TRACE[0], Phase("burst", 180, 20, 6000, 150), *TRACE[-2:]]


def graph(policy: str, prefill_min: int = 1) -> GraphSpec:
    autoscaling = {"enabled": True, "maxReplicas": 12}
    return parse_graph(
        {
            "apiVersion": "inferencegraph.dev/v1alpha1",
            "kind": "InferenceGraph",
            "metadata": {"name": "bench"},
            "spec": {
                "model": {"name": "m", "source": "builtin://tiny-llama"},
                "engine": {"type": "mocker"},  # capacity from the simulated engine's timing model
                "disaggregation": {"enabled": True, "conditional": {"maxPrefillQueueSize": 8}},
                "planner": {"policy": policy, "intervalSeconds": 10},
                "services": {
                    "prefill": {
                        "replicas": prefill_min,
                        "autoscaling": {**autoscaling, "minReplicas": prefill_min},
                    },
                    "decode": {"replicas": 1, "autoscaling": {**autoscaling, "minReplicas": 1}},
                },
            },
        }
    ).spec


def config(spec: GraphSpec, startup_s: float) -> ClusterConfig:
    rule = spec.disaggregation.conditional
    return ClusterConfig(
        ENGINE,
        max_local_prefill_length=rule.max_local_prefill_length,
        max_prefill_queue_size=rule.max_prefill_queue_size,
        startup_s=startup_s,
        interval_s=spec.planner.interval_seconds,
    )


def run_planner(policy: str, startup_s: float, trace: list[Phase], prefill_min: int) -> SimResult:
    spec = graph(policy, prefill_min)
    planner = Planner.for_graph(spec, make_policy(spec, ENGINE.capacity()))
    return Cluster(config(spec, startup_s), {"prefill": prefill_min, "decode": 1}, planner).run(trace)


def run_static(replicas: dict[str, int], startup_s: float, trace: list[Phase]) -> SimResult:
    return Cluster(config(graph("sla"), startup_s), replicas).run(trace)


def summary(name: str, res: SimResult, static_replica_s: float) -> dict:
    total = sum(res.replica_seconds.values())
    return {
        "run": name,
        "requests": len(res.requests),
        "completed": sum(r.done for r in res.requests),
        "attainment": res.attainment(TTFT_MS, ITL_MS),
        "replica_seconds": total,
        "ratio_to_static_peak": total / static_replica_s,
        "peak": {
            role: max(row[f"{role}_replicas"] for row in res.timeline) if res.timeline else 0
            for role in ("prefill", "decode")
        },
        "direction_changes": {role: len(res.direction_changes(role)) for role in ("prefill", "decode")},
    }


def cells(r: dict) -> list:
    return [
        r["run"], r["requests"], r["completed"], fmt(r["attainment"], 3), fmt(r["replica_seconds"], 0),
        fmt(r["ratio_to_static_peak"], 2), "{prefill}, {decode}".format(**r["peak"]),
        "{prefill}, {decode}".format(**r["direction_changes"]),
    ]  # fmt: skip


def svg_plot(res: SimResult, path: Path, trace: list[Phase]) -> None:
    """Replicas per role (left axis) and prompt tokens/s (right axis, scaled) over time."""
    rows = res.timeline
    width, height, pad = 900, 320, 40
    t_max = max(r["time"] for r in rows)
    r_max = max(max(r["prefill_replicas"], r["decode_replicas"]) for r in rows) + 1
    load_max = max(r["prompt_tokens_per_s"] for r in rows) or 1.0

    def x(t: float) -> float:
        return pad + (width - 2 * pad) * t / t_max

    def y(v: float, top: float) -> float:
        return height - pad - (height - 2 * pad) * v / top

    def line(key: str, top: float, color: str) -> str:
        points = " ".join(f"{x(r['time']):.1f},{y(r[key], top):.1f}" for r in rows)
        return f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}"/>'

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        line("prompt_tokens_per_s", load_max, "#bbbbbb"),
        line("prefill_replicas", r_max, "#d62728"),
        line("decode_replicas", r_max, "#1f77b4"),
        f'<text x="{pad}" y="20">replicas: prefill (red), decode (blue); prompt tokens/s (grey, peak '
        f"{load_max:,.0f}); {t_max:.0f} s</text>",
    ]
    start = 0.0
    for phase in trace:
        if phase.name.startswith("ramp-") and phase.name != "ramp-1":
            start += phase.seconds
            continue
        parts.append(f'<text x="{x(start) + 4:.1f}" y="{height - 10}">{phase.name}</text>')
        start += phase.seconds
    for v in range(0, r_max + 1, max(1, r_max // 6)):
        parts.append(f'<text x="8" y="{y(v, r_max) + 4:.1f}">{v}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--startup", type=float, default=30.0, help="seconds from scale-up to serving")
    parser.add_argument(
        "--prefill-min", type=int, default=2, help="prefill minReplicas: headroom for the first startup delay"
    )
    parser.add_argument("--step", action="store_true", help="the burst arrives at once instead of ramping")
    output_args(parser)
    args = parser.parse_args()
    trace = STEP_TRACE if args.step else TRACE
    trace_s = sum(p.seconds for p in trace)
    runs: dict[str, SimResult] = {}
    began = time.process_time()
    for policy in ("sla", "load"):
        runs[policy] = run_planner(policy, args.startup, trace, args.prefill_min)
    peak = {
        role: max(row[f"{role}_replicas"] for row in runs["sla"].timeline) for role in ("prefill", "decode")
    }
    runs["static-peak"] = run_static(peak, args.startup, trace)
    static_replica_s = sum(peak.values()) * trace_s
    rows = [summary(name, res, static_replica_s) for name, res in runs.items()]
    print(
        f"trace: {', '.join(f'{p.name} {p.seconds:.0f}s {p.rate}/s {p.input_tokens}in/{p.output_tokens}out' for p in trace)}"
    )
    print(
        f"startup {args.startup:.0f} s; prefill minReplicas {args.prefill_min}; static peak = {peak} for {trace_s:.0f} s; {time.process_time() - began:.1f} s CPU"
    )
    head = [
        "run",
        "requests",
        "done",
        "attain",
        "replica-s",
        "vs static",
        "peak (P, D)",
        "dir. changes (P, D)",
    ]
    print(table(head, [cells(r) for r in rows]))
    sla_run = runs["sla"]
    path = write_json(
        "planner",
        args,
        {
            "trace": [p.__dict__ for p in trace],
            "runs": rows,
            "timeline": sla_run.timeline,
            "decisions": sla_run.decisions,
        },
    )
    svg_plot(sla_run, path.with_suffix(".svg"), trace)
    print(f"wrote {path.with_suffix('.svg').name}")
    sla = rows[0]
    print(
        f"attainment {sla['attainment']:.3f}, replica-seconds {sla['ratio_to_static_peak']:.2f}x static peak, "
        f"direction changes prefill {sla['direction_changes']['prefill']} decode {sla['direction_changes']['decode']}"
    )


if __name__ == "__main__":
    main()
