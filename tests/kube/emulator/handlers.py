"""HTTP routing: Kubernetes API paths → discovery, OpenAPI, or a verb on a resource (watch included)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import yaml
from aiohttp import web

from . import discovery, openapi, patching, protobuf, table
from .api import Api, WriteOptions
from .errors import ApiError, bad_request, method_not_allowed
from .resources import ResourceType
from .selectors import field_selector, label_selector
from .store import Event, Watch, namespace_of
from .workloads import scale_of

log = logging.getLogger(__name__)
DEFAULT_WATCH_TIMEOUT = 1800.0  # kube-apiserver picks 30-60 min when the client sets none
JSON = "application/json"


@dataclass
class Target:
    rtype: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(body), status=status, content_type=JSON)


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true")


def _initial_events_end(rtype: ResourceType, rv: int) -> dict[str, Any]:
    """The bookmark that ends the initial events of a `sendInitialEvents` watch (client-go's WatchList)."""
    annotations = {"k8s.io/initial-events-end": "true"}
    metadata = {"resourceVersion": str(rv), "annotations": annotations}
    return {"kind": rtype.kind, "apiVersion": rtype.group_version, "metadata": metadata}


class Handlers:
    def __init__(self, api: Api):
        self.api = api

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._route(request)
        except ApiError as exc:
            return _json(exc.status(), exc.code)
        except Exception as exc:  # an emulator bug: tell the client in the API's own terms, and the log
            log.exception("%s %s failed", request.method, request.path_qs)
            return _json(ApiError(500, "InternalError", f"emulator error: {exc!r}").status(), 500)

    async def _route(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        parts = [p for p in path.split("/") if p]
        fixed = self._fixed(path, parts)
        if fixed is not None:
            return _json(fixed)
        if parts[:2] == ["openapi", "v3"] and len(parts) > 2:
            return self._openapi(parts[2:])
        target = self._target(parts)
        if target is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return await self._verb(request, target)

    def _fixed(self, path: str, parts: list[str]) -> Any:
        registry = self.api.registry
        simple = {
            "/": lambda: discovery.root_paths(registry),
            "/version": lambda: discovery.VERSION,
            "/api": discovery.api_versions,
            "/apis": lambda: discovery.api_group_list(registry),
            "/openapi/v3": lambda: openapi.index(registry),
            "/healthz": lambda: "ok",
            "/readyz": lambda: "ok",
            "/livez": lambda: "ok",
        }
        if path in simple:
            return simple[path]()
        with self.api.store.lock:
            if len(parts) == 2 and parts[0] == "api":
                return self._or_404(discovery.api_resource_list(registry, "", parts[1]))
            if len(parts) == 2 and parts[0] == "apis":
                return self._or_404(discovery.api_group(registry, parts[1]))
            if len(parts) == 3 and parts[0] == "apis":
                return self._or_404(discovery.api_resource_list(registry, parts[1], parts[2]))
        return None

    @staticmethod
    def _or_404(document: Any) -> Any:
        if document is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return document

    def _openapi(self, parts: list[str]) -> web.Response:
        if parts[0] == "api" and len(parts) == 2:
            group, version = "", parts[1]
        elif parts[0] == "apis" and len(parts) == 3:
            group, version = parts[1], parts[2]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        with self.api.store.lock:
            return _json(self._or_404(openapi.group_version_document(self.api.registry, group, version)))

    def _target(self, parts: list[str]) -> Target | None:
        if parts and parts[0] == "api" and len(parts) >= 3:
            group, version, rest = "", parts[1], parts[2:]
        elif parts and parts[0] == "apis" and len(parts) >= 4:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        registry = self.api.registry
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3 and registry.get(group, version, rest[2]):
            namespace, rest = rest[1], rest[2:]
        rtype = registry.get(group, version, rest[0])
        if rtype is None or len(rest) > 3 or (namespace and not rtype.namespaced):
            return None
        name = rest[1] if len(rest) > 1 else None
        if name and rtype.namespaced and namespace is None:
            return None
        return Target(rtype, namespace, name, rest[2] if len(rest) > 2 else None)

    # --- verbs -------------------------------------------------------------------------------------

    async def _verb(self, request: web.Request, target: Target) -> web.StreamResponse:
        query = request.query
        opts = WriteOptions(
            strict=query.get("fieldValidation") == "Strict",
            dry_run="dryRun" in query,
            # the real server names an unnamed manager after the client's user agent ("kubectl/v1.37...")
            manager=query.get("fieldManager") or request.headers.get("User-Agent", "unknown").split("/")[0],
            force=_truthy(query.get("force")),
        )
        if target.name is None:
            return await self._collection_verb(request, target, opts)
        return await self._object_verb(request, target, opts)

    async def _collection_verb(
        self, request: web.Request, target: Target, opts: WriteOptions
    ) -> web.StreamResponse:
        api, rtype, query, method = self.api, target.rtype, request.query, request.method
        selectors = (query.get("labelSelector"), query.get("fieldSelector"))
        if method == "GET" and _truthy(query.get("watch")):
            return await self._watch(request, target)
        if method == "GET":
            listed = api.list(rtype, target.namespace, *selectors)
            return self._respond(request, rtype, listed, listed)
        if method == "POST" and (target.namespace or not rtype.namespaced):
            return _json(api.create(rtype, target.namespace, await self._body(request), opts), 201)
        if method == "DELETE":
            options = await self._delete_options(request)
            return _json(api.delete_collection(rtype, target.namespace, *selectors, options))
        raise method_not_allowed()

    async def _object_verb(
        self, request: web.Request, target: Target, opts: WriteOptions
    ) -> web.StreamResponse:
        api, rtype, method = self.api, target.rtype, request.method
        where = (rtype, target.namespace, target.name)
        if method == "GET":
            obj = api.get(*where)
            return (
                _json(scale_of(obj))
                if target.subresource == "scale"
                else self._respond(request, rtype, obj, None)
            )
        if method == "PUT":
            return _json(api.update(*where, await self._body(request), target.subresource, opts))
        if method == "PATCH":
            content_type = request.content_type
            body = await self._body(request, yaml_ok=content_type == patching.APPLY)
            if content_type == patching.APPLY and not request.query.get("fieldManager"):
                raise bad_request("PATCH, application/apply-patch+yaml requires fieldManager to be set")
            return _json(api.patch(*where, content_type, body, target.subresource, opts))
        if method == "DELETE" and target.subresource is None:
            return _json(api.delete(*where, await self._delete_options(request)))
        raise method_not_allowed()

    def _respond(self, request: web.Request, rtype: ResourceType, obj: Any, listed: Any) -> web.Response:
        if not table.wants_table(request.headers.get("Accept", "")):
            return _json(obj)
        items = listed["items"] if listed is not None else [obj]
        meta = {"resourceVersion": listed["metadata"]["resourceVersion"]} if listed is not None else {}
        return _json(table.table(rtype, items, meta, request.query.get("includeObject", "Metadata")))

    @staticmethod
    async def _body(request: web.Request, yaml_ok: bool = False) -> Any:
        raw = await request.read()
        if request.content_type == protobuf.MEDIA_TYPE:
            return protobuf.decode(raw)
        try:
            return yaml.safe_load(raw) if yaml_ok else json.loads(raw or b"null")
        except (ValueError, yaml.YAMLError) as exc:
            raise bad_request(f"the body of the request could not be decoded: {exc}") from exc

    async def _delete_options(self, request: web.Request) -> dict[str, Any]:
        options = (await self._body(request)) if request.can_read_body else {}
        options = dict(options or {})
        for name in ("propagationPolicy", "dryRun"):
            if name in request.query:
                options[name] = request.query[name]
        return options

    # --- watch -------------------------------------------------------------------------------------

    async def _watch(self, request: web.Request, target: Target) -> web.StreamResponse:
        query = request.query
        try:
            watch, replay, current_rv = self._subscribe(target, query)
        except (
            ApiError
        ) as exc:  # e.g. 410 Expired: the real server says so as a watch event, not a status code
            response = web.StreamResponse(headers={"Content-Type": JSON})
            await response.prepare(request)
            await response.write(json.dumps({"type": "ERROR", "object": exc.status()}).encode() + b"\n")
            return response
        send = functools.partial(
            self._send, as_table=table.wants_table(request.headers.get("Accept", "")),
            include=query.get("includeObject", "Metadata"),
        )  # fmt: skip
        response = web.StreamResponse(headers={"Content-Type": JSON, "Transfer-Encoding": "chunked"})
        await response.prepare(request)
        deadline = time.monotonic() + float(query.get("timeoutSeconds") or DEFAULT_WATCH_TIMEOUT)
        try:
            for event in replay:
                await send(response, target.rtype, event.type, event.obj)
            if _truthy(query.get("sendInitialEvents")) and _truthy(query.get("allowWatchBookmarks")):
                await send(response, target.rtype, "BOOKMARK", _initial_events_end(target.rtype, current_rv))
            while (remaining := deadline - time.monotonic()) > 0:
                try:
                    event = await asyncio.wait_for(watch.queue.get(), remaining)
                except TimeoutError:
                    break
                await send(response, target.rtype, event.type, event.obj)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.api.store.unsubscribe(watch)
        return response

    def _subscribe(self, target: Target, query: Any) -> tuple[Watch, list[Event], int]:
        """Subscribe, and return the events to replay first: the current objects when the client asks
        for initial events (no resourceVersion, "0", or sendInitialEvents), else the history after it."""
        rtype, namespace = target.rtype, target.namespace
        by_label = label_selector(query.get("labelSelector"))
        by_field = field_selector(query.get("fieldSelector"))

        def visible(obj: dict[str, Any]) -> bool:
            in_scope = namespace is None or namespace_of(obj) == namespace
            return in_scope and by_label(obj) and by_field(obj)

        def view(event: Event) -> Event | None:
            """What this watcher sees: an object that starts or stops matching the selectors is
            ADDED or DELETED for it, as the real watch cache reports."""
            if event.key != rtype.key:
                return None
            now = visible(event.obj)
            if event.type == "MODIFIED" and event.old is not None and visible(event.old) != now:
                return dataclasses.replace(event, type="ADDED" if now else "DELETED")
            return event if now else None

        watch = Watch(asyncio.get_running_loop(), view)
        since = query.get("resourceVersion") or None
        send_initial = _truthy(query.get("sendInitialEvents")) or since in (None, "0")
        store = self.api.store
        with store.lock:  # the initial state and the subscription are one atomic step
            current = store.list(rtype.key, namespace) if send_initial else []
            initial = [Event(store.resource_version, "ADDED", rtype.key, o) for o in current if visible(o)]
            backlog = store.subscribe(watch, None if send_initial else int(since))
            return watch, [*initial, *backlog], store.resource_version

    async def _send(
        self,
        response: web.StreamResponse,
        rtype: ResourceType,
        event_type: str,
        obj: dict[str, Any],
        as_table: bool = False,
        include: str = "Metadata",
    ) -> None:
        served = obj if event_type == "BOOKMARK" else self.api.as_version(rtype, obj)
        if as_table and event_type != "BOOKMARK":  # `kubectl get -w`: each event carries a one-row Table
            meta = {"resourceVersion": obj["metadata"]["resourceVersion"]}
            served = table.table(rtype, [served], meta, include)
        await response.write(json.dumps({"type": event_type, "object": served}).encode() + b"\n")
