"""The operator's few Kubernetes API calls, behind one small interface.

:class:`KubeApi` is what the reconcile loop needs; :class:`RestKubeApi` implements
it with the official client's REST layer (plain dicts in and out, no generated
models: the reconcile core compares dicts). The client is built from an explicit
kubeconfig path or the in-cluster service account, never from the module-level
default the official client computes at import time (it freezes ``$KUBECONFIG``
then, which breaks any process that sets it later, tests included).

Every write of a child is a server-side apply (``PATCH`` with
``application/apply-patch+yaml``) under the one field manager :data:`FIELD_MANAGER`:
the server merges what the operator renders with what others set on the object, keeps
track of who owns each field, and answers 409 naming the other manager when a field the
operator applies was last set, to another value, by someone else (see docs/kubernetes.md,
"Server-side apply").
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Mapping
from typing import Any, Protocol

from inference_graph.core.spec import API_GROUP
from inference_graph.settings import OperatorSettings

from .crd import PLURAL, SCALER_KIND, SCALER_PLURAL, VERSION

FIELD_MANAGER = "inference-graph-operator"  # the operator's one field manager, for every write
APPLY = "application/apply-patch+yaml"
# kind -> (apiVersion, plural)
_CHILD_PATHS = {
    "ConfigMap": ("v1", "configmaps"),
    "Service": ("v1", "services"),
    "Deployment": ("apps/v1", "deployments"),
    "PodDisruptionBudget": ("policy/v1", "poddisruptionbudgets"),
    SCALER_KIND: (f"{API_GROUP}/{VERSION}", SCALER_PLURAL),
}
GRAPH_PATH = f"/apis/{API_GROUP}/{VERSION}"
REQUEST_TIMEOUT = (5.0, 30.0)  # connect, read (seconds)


class ApiError(Exception):
    """A failed API call: ``status`` is the HTTP status (0: no response), ``reason`` the server's message."""

    def __init__(self, status: int, reason: str):
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


class KubeApi(Protocol):
    missing_kinds: set[str]  # child kinds the server does not serve (the scaler CRD not installed)

    def get_graph(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def list_graphs(self, namespace: str) -> list[tuple[str, str]]: ...
    def list_children(self, namespace: str, selector: str) -> list[dict[str, Any]]: ...
    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...
    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]: ...
    def apply(self, obj: Mapping[str, Any], force: bool = False) -> dict[str, Any]: ...
    def apply_status(self, obj: Mapping[str, Any]) -> dict[str, Any]: ...
    def delete(self, obj: Mapping[str, Any]) -> None: ...
    def patch_graph_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None: ...
    def event(self, graph: Mapping[str, Any], reason: str, message: str) -> None: ...


def _collection(kind: str, namespace: str) -> str:
    api_version, plural = _CHILD_PATHS[kind]
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"  # a core kind, or a group's
    return f"{prefix}/namespaces/{namespace}/{plural}"


def _item(obj: Mapping[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{_collection(obj['kind'], meta['namespace'])}/{meta['name']}"


class RestKubeApi:
    """:class:`KubeApi` over ``kubernetes.client.ApiClient`` (synchronous; the handlers run it in threads)."""

    def __init__(self, api_client):
        self._client = api_client
        self.missing_kinds: set[str] = set()

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> RestKubeApi:
        """:meth:`connect` with ``KUBECONFIG`` and ``KUBERNETES_SERVICE_HOST`` from ``environ``
        (default: this process's environment)."""
        settings = OperatorSettings.load(environ)
        return cls.connect(settings.kubeconfig, settings.kubernetes_service_host is not None)

    @classmethod
    def connect(cls, kubeconfig: str | None, in_cluster: bool) -> RestKubeApi:
        """The first file in ``kubeconfig``, else the pod's service account, else ~/.kube/config."""
        from kubernetes import client, config

        if not kubeconfig and in_cluster:
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            return cls(client.ApiClient(configuration))
        path = (kubeconfig or "~/.kube/config").split(os.pathsep)[0]
        return cls(config.new_client_from_config(config_file=os.path.expanduser(path)))

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        headers = {"Accept": "application/json", "Content-Type": content_type}
        params = self._client.param_serialize(
            method,
            path,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self._client.call_api(*params, _request_timeout=REQUEST_TIMEOUT)
            response.read()
        except ApiException as exc:
            raise ApiError(exc.status or 0, _reason(exc.body, exc.reason)) from None
        except OSError as exc:  # urllib3 connection errors are OSErrors
            raise ApiError(0, str(exc)) from None
        # call_api returns error responses as they are (the generated APIs raise while deserializing)
        if not 200 <= response.status < 300:
            raise ApiError(response.status, _reason(response.data, response.reason))
        return json.loads(response.data) if response.data else {}

    def get_graph(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get(f"{GRAPH_PATH}/namespaces/{namespace}/{PLURAL}/{name}")

    def list_graphs(self, namespace: str) -> list[tuple[str, str]]:
        """(namespace, name) of every graph in ``namespace``, or in all namespaces for ""."""
        scope = f"/namespaces/{namespace}" if namespace else ""
        items = self._call("GET", f"{GRAPH_PATH}{scope}/{PLURAL}").get("items") or []
        return [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in items]

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self._get(f"{_collection(kind, namespace)}/{name}")
        return _typed(obj, kind) if obj is not None else None

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """The graph's pods (read only: the scheduler's verdict on the ones still Pending)."""
        query = {"labelSelector": selector}
        return self._call("GET", f"/api/v1/namespaces/{namespace}/pods", query=query).get("items") or []

    def _get(self, path: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", path)
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    def list_children(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        out = []
        for kind in _CHILD_PATHS:
            try:
                listing = self._call("GET", _collection(kind, namespace), query={"labelSelector": selector})
            except ApiError as err:
                # The scaler CRD not installed (a chart upgraded without `kubectl apply -f crds/`):
                # the operator scales the roles' Deployments directly, as before scalers existed.
                if err.status == 404 and kind == SCALER_KIND:
                    self.missing_kinds.add(kind)
                    continue
                raise
            self.missing_kinds.discard(kind)
            out += [_typed(item, kind) for item in listing.get("items") or []]
        return out

    def apply(self, obj: Mapping[str, Any], force: bool = False) -> dict[str, Any]:
        """Server-side apply of the whole rendered object under :data:`FIELD_MANAGER` (creates it when
        missing). Without ``force`` a field another manager set to another value is a 409 whose reason
        names the manager and the fields; with it the operator takes those fields over."""
        query = {"fieldManager": FIELD_MANAGER, "force": "true" if force else "false"}
        return self._call("PATCH", _item(obj), body=dict(obj), query=query, content_type=APPLY)

    def apply_status(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply of ``obj``'s status (apiVersion, kind, name and ``status``) to its status
        subresource. Forced: the operator is the only writer of its children's status."""
        query = {"fieldManager": FIELD_MANAGER, "force": "true"}
        return self._call("PATCH", f"{_item(obj)}/status", body=dict(obj), query=query, content_type=APPLY)

    def event(self, graph: Mapping[str, Any], reason: str, message: str) -> None:
        """A Warning Event on ``graph`` (``kubectl describe ig`` and ``kubectl get events`` show it)."""
        meta = graph["metadata"]
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": graph.get("apiVersion", f"{API_GROUP}/{VERSION}"),
                "kind": graph.get("kind", "InferenceGraph"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": "Warning",
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        self._call("POST", f"/api/v1/namespaces/{meta['namespace']}/events", body=body)

    def delete(self, obj: Mapping[str, Any]) -> None:
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        try:
            self._call("DELETE", _item(obj), body=body)
        except ApiError as err:
            if err.status != 404:
                raise

    def patch_graph_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        path = f"{GRAPH_PATH}/namespaces/{namespace}/{PLURAL}/{name}/status"
        self._call("PATCH", path, body={"status": dict(status)}, content_type="application/merge-patch+json")


def _typed(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    """List items come without kind/apiVersion; the reconcile core compares them with rendered objects."""
    return {**obj, "kind": kind, "apiVersion": _CHILD_PATHS[kind][0]}


def _reason(body: bytes | str | None, fallback: str | None) -> str:
    """The API server's Status message when there is one, else the HTTP reason."""
    if body is None:
        return str(fallback)
    try:
        return json.loads(body).get("message") or str(fallback)
    except (TypeError, ValueError, AttributeError):
        return str(fallback)
