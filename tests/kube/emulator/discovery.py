"""Legacy (unaggregated) discovery documents. Clients that ask for aggregated discovery
(apidiscovery.k8s.io/v2) get these and fall back, as they do against older servers."""

from __future__ import annotations

from typing import Any

from .resources import Registry

VERSION = {
    "major": "1",
    "minor": "37",
    "gitVersion": "v1.37.0-emulated",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.25.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def api_versions() -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
    }


def _group(name: str, versions: list[str]) -> dict[str, Any]:
    listed = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": listed, "preferredVersion": listed[0]}


def api_group_list(registry: Registry) -> dict[str, Any]:
    groups = [_group(name, versions) for name, versions in sorted(registry.group_versions().items()) if name]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group(registry: Registry, name: str) -> dict[str, Any] | None:
    versions = registry.group_versions().get(name)
    return (
        None
        if not versions or not name
        else {"kind": "APIGroup", "apiVersion": "v1", **_group(name, versions)}
    )


def api_resource_list(registry: Registry, group: str, version: str) -> dict[str, Any] | None:
    types = registry.in_group_version(group, version)
    if not types:
        return None
    resources = [entry for rtype in sorted(types, key=lambda t: t.plural) for entry in rtype.discovery()]
    group_version = f"{group}/{version}" if group else version
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }


def root_paths(registry: Registry) -> dict[str, Any]:
    paths = {
        "/api",
        "/api/v1",
        "/apis",
        "/version",
        "/openapi/v2",
        "/openapi/v3",
        "/healthz",
        "/readyz",
        "/livez",
    }
    for group, versions in registry.group_versions().items():
        if group:
            paths.add(f"/apis/{group}")
            paths |= {f"/apis/{group}/{v}" for v in versions}
    return {"paths": sorted(paths)}
