"""Readiness/liveness probe of the roles that have no HTTP listener (processor, workers).

``python -m inference_graph_operator.probe --role decode`` exits 0 when etcd holds
this pod's instance key (``/ig/{IG_NAMESPACE}/instances/{role}/{POD_NAME}-…``).
A role registers once it can serve (a worker after its engine loaded) and keeps
the key alive with a lease; a hung or stopped process loses it within the lease
TTL. So one check answers both "ready" and "alive", with no port to open in the
role. It uses only the standard library and etcd's JSON gateway (``/v3/kv/range``),
so it starts fast enough to run every few seconds.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import urllib.error
import urllib.request

from inference_graph.environment import FIXED, Env, environ
from inference_graph.runtime.names import instances_prefix, key_segment

# RuntimeSettings' default, without importing pydantic (this runs every 10 s in every role pod).
DEFAULT_ETCD = f"http://127.0.0.1:{FIXED.etcd_port}"


def key_range(namespace: str, role: str, pod_name: str) -> tuple[bytes, bytes]:
    """[start, end) of the keys of the instances this pod registered (ids are ``POD_NAME-<hex>``)."""
    start = (instances_prefix(namespace, role) + key_segment(pod_name) + "-").encode()
    return start, start[:-1] + bytes([start[-1] + 1])


def registered(endpoint: str, start: bytes, end: bytes, timeout: float = 3.0) -> bool:
    body = json.dumps(
        {
            "key": base64.b64encode(start).decode(),
            "range_end": base64.b64encode(end).decode(),
            "count_only": True,
        }
    ).encode()
    request = urllib.request.Request(
        endpoint.rstrip("/") + "/v3/kv/range", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        reply = json.load(response)
    return int(reply.get("count", 0)) > 0  # int64 arrives as a string; absent when 0


def check(values, role: str) -> tuple[bool, str]:
    pod = values.get(Env.POD_NAME, "")
    namespace = values.get(Env.IG_NAMESPACE, "")
    if not pod or not namespace:
        return False, f"{Env.POD_NAME} and {Env.IG_NAMESPACE} must be set (the operator injects them)"
    start, end = key_range(namespace, role, pod)
    endpoints = [e.strip() for e in values.get(Env.ETCD_ENDPOINTS, DEFAULT_ETCD).split(",") if e.strip()]
    errors = []
    for endpoint in endpoints:
        try:
            if registered(endpoint, start, end):
                return True, f"registered: {start.decode()}*"
            return False, f"not registered in etcd: no key {start.decode()}*"
        except (OSError, urllib.error.URLError, ValueError) as exc:
            errors.append(f"{endpoint}: {exc}")
    return False, "etcd unreachable: " + "; ".join(errors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", required=True)
    args = parser.parse_args(argv)
    ok, message = check(environ(), args.role)
    print(message, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
