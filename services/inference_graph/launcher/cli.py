"""``inference-graph``: run and check InferenceGraph manifests locally."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import yaml

from ..core.spec import SpecError, load_graph
from ..models import ModelSourceError, resolve_model_source
from .local import LocalOptions, check_runs_locally, serve
from .supervisor import CrashLoopError


def _graph_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("graph", help="InferenceGraph manifest (YAML)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a spec field, e.g. services.decode.replicas=2 (repeatable)",
    )
    parser.add_argument("--engine", help="engine type for every worker (overrides spec.engine.type)")
    parser.add_argument("--port", type=int, help="frontend port (overrides spec.services.frontend.port)")


def _load(args: argparse.Namespace):
    overrides = list(args.overrides)
    if args.engine:
        overrides.append(f"engine.type={args.engine}")
    if args.port:
        overrides.append(f"services.frontend.port={args.port}")
    return load_graph(args.graph, overrides)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="inference-graph", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _graph_args(commands.add_parser("serve", help="run the graph locally until Ctrl-C"))
    _graph_args(commands.add_parser("prepare-model", help="build the graph's builtin model into the cache"))
    _graph_args(commands.add_parser("validate", help="check the graph and print it with defaults filled in"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        graph = _load(args)
        if args.command == "validate":
            check_runs_locally(graph)
            print(yaml.safe_dump(graph.to_manifest(), sort_keys=False), end="")
        elif args.command == "prepare-model":
            print(resolve_model_source(graph.spec.model.source))
        else:
            asyncio.run(serve(graph, LocalOptions()))
    except (SpecError, ModelSourceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (CrashLoopError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
