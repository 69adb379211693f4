"""The resource catalogue: which kinds the emulated API serves, and CRDs registered at run time.

Built-in kinds come from kmock's bundled discovery documents (captured from a real cluster: verbs,
short names, subresources), so discovery answers what kube-apiserver answers. Only the kinds the project
uses are served; extend BUILTINS to serve more. A CRD created through the API registers its versions;
deleting it unregisters them.
"""

from __future__ import annotations

import gzip
import importlib.resources
import json
from dataclasses import dataclass, field
from typing import Any

# (groupVersion, plural) served from kmock's bundle.
BUILTINS = (
    ("v1", "namespaces"),
    ("v1", "configmaps"),
    ("v1", "secrets"),
    ("v1", "services"),
    ("v1", "serviceaccounts"),
    ("v1", "events"),
    ("v1", "pods"),
    ("v1", "persistentvolumeclaims"),
    ("v1", "endpoints"),
    ("apps/v1", "deployments"),
    ("apps/v1", "replicasets"),
    ("apps/v1", "statefulsets"),
    ("events.k8s.io/v1", "events"),
    ("rbac.authorization.k8s.io/v1", "roles"),
    ("rbac.authorization.k8s.io/v1", "rolebindings"),
    ("rbac.authorization.k8s.io/v1", "clusterroles"),
    ("rbac.authorization.k8s.io/v1", "clusterrolebindings"),
    ("apiextensions.k8s.io/v1", "customresourcedefinitions"),
    ("coordination.k8s.io/v1", "leases"),
)
# kube-apiserver puts these in the `all` category (`kubectl get all`); kmock's bundle omits categories.
ALL_CATEGORY = {"pods", "services", "deployments", "replicasets", "statefulsets"}
SERVED_SUBRESOURCES = {"status", "scale"}  # others (exec, log, proxy...) are not emulated


@dataclass
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    singular: str
    namespaced: bool
    verbs: list[str]
    short_names: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    subresources: set[str] = field(default_factory=set)
    schema: dict[str, Any] | None = None  # openAPIV3Schema of a CRD version
    printer_columns: list[dict[str, Any]] = field(default_factory=list)
    crd: str | None = None  # the CRD's name when CRD-backed

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> tuple[str, str]:
        """Storage key: all versions of one group/plural share the objects."""
        return self.group, self.plural

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    def discovery(self) -> list[dict[str, Any]]:
        """APIResource entries: the resource itself and its subresources."""
        main = {
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": self.verbs,
        }
        if self.short_names:
            main["shortNames"] = self.short_names
        if self.categories:
            main["categories"] = self.categories
        entries = [main]
        for sub in sorted(self.subresources):
            entry = {"name": f"{self.plural}/{sub}", "singularName": "", "namespaced": self.namespaced}
            entry |= {"kind": "Scale" if sub == "scale" else self.kind, "verbs": ["get", "patch", "update"]}
            if sub == "scale":
                entry |= {"group": "autoscaling", "version": "v1"}
            entries.append(entry)
        return entries


def _bundled() -> dict[tuple[str, str], dict[str, Any]]:
    data = importlib.resources.files("kmock._internal").joinpath("resources.json.gz").read_bytes()
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for doc in json.loads(gzip.decompress(data)):
        for entry in doc["resources"]:
            found[doc["groupVersion"], entry["name"]] = entry
    return found


def builtin_types() -> list[ResourceType]:
    bundle = _bundled()
    types = []
    for group_version, plural in BUILTINS:
        entry = bundle[group_version, plural]
        group, _, version = group_version.rpartition("/")
        subs = {sub for sub in SERVED_SUBRESOURCES if (group_version, f"{plural}/{sub}") in bundle}
        types.append(
            ResourceType(
                group=group,
                version=version,
                plural=plural,
                kind=entry["kind"],
                singular=entry.get("singularName") or entry["kind"].lower(),
                namespaced=entry["namespaced"],
                verbs=list(entry["verbs"]),
                short_names=list(entry.get("shortNames", [])),
                categories=["all"] if plural in ALL_CATEGORY else list(entry.get("categories", [])),
                subresources=subs,
            )
        )
    return types


def crd_types(crd: dict[str, Any]) -> list[ResourceType]:
    """One ResourceType per served version of a CustomResourceDefinition."""
    spec = crd["spec"]
    names = spec["names"]
    verbs = ["delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"]
    types = []
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        subresources = set(version.get("subresources") or spec.get("subresources") or {})
        types.append(
            ResourceType(
                group=spec["group"],
                version=version["name"],
                plural=names["plural"],
                kind=names["kind"],
                singular=names.get("singular") or names["kind"].lower(),
                namespaced=spec["scope"] == "Namespaced",
                verbs=verbs,
                short_names=list(names.get("shortNames", [])),
                categories=list(names.get("categories", [])),
                subresources=subresources & SERVED_SUBRESOURCES,
                schema=(version.get("schema") or {}).get("openAPIV3Schema"),
                printer_columns=list(version.get("additionalPrinterColumns", [])),
                crd=crd["metadata"]["name"],
            )
        )
    return types


class Registry:
    """Resource types by group, version and plural; CRDs come and go with their objects."""

    def __init__(self) -> None:
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        self.generation = 0  # bumped whenever discovery changes (clients' caches go stale)
        for rtype in builtin_types():
            self._add(rtype)

    def _add(self, rtype: ResourceType) -> None:
        self._types[rtype.group, rtype.version, rtype.plural] = rtype
        self.generation += 1

    def register_crd(self, crd: dict[str, Any]) -> None:
        self.unregister_crd(crd["metadata"]["name"])
        for rtype in crd_types(crd):
            self._add(rtype)

    def unregister_crd(self, name: str) -> None:
        for key, rtype in list(self._types.items()):
            if rtype.crd == name:
                del self._types[key]
                self.generation += 1

    def get(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._types.get((group, version, plural))

    def all(self) -> list[ResourceType]:
        return list(self._types.values())

    def by_kind(self, api_version: str, kind: str) -> ResourceType | None:
        group, _, version = api_version.rpartition("/")
        return next(
            (t for t in self._types.values() if (t.group, t.version, t.kind) == (group, version, kind)), None
        )

    def group_versions(self) -> dict[str, list[str]]:
        """Group → served versions, preferred (storage order) first; the core group is ''."""
        found: dict[str, list[str]] = {}
        for rtype in self._types.values():
            versions = found.setdefault(rtype.group, [])
            if rtype.version not in versions:
                versions.append(rtype.version)
        return found

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return [t for t in self._types.values() if (t.group, t.version) == (group, version)]

    def versions_of(self, group: str, plural: str) -> list[ResourceType]:
        return [t for t in self._types.values() if t.key == (group, plural)]
