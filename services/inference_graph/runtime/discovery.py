"""Discovery in etcd: who is alive, and which models are served.

Each instance writes ``InstanceInfo`` (JSON) under a lease it keeps alive; when
the process dies the lease expires and the keys vanish, so every watcher learns
of the loss within one TTL without any "goodbye" message.

Client library: ``aetcd`` (asyncio, gRPC). The older ``etcd3`` package is
unmaintained since 2020, is blocking (it would need a thread per watch), and its
generated protobuf code needs the slow pure-Python protobuf fallback on modern
protobuf. ``aetcd`` 1.0 was checked against etcd 3.5.1 with grpcio 1.85 /
protobuf 7: range, put with lease, lease grant/keepalive/revoke, prefix watch,
and recovery after an etcd restart all work (see tests/runtime/test_discovery.py).

aetcd talks to one endpoint; :meth:`Discovery.connect` uses the first endpoint
that answers. gRPC then reconnects to it by itself after an outage; the retry
loops here only have to re-establish *our* state (lease, watch) on top.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Self, TypeVar
from urllib.parse import urlsplit

import aetcd
import msgspec

from .. import wire
from ..environment import FIXED
from . import names
from .errors import DiscoveryUnavailableError

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")
W = TypeVar("W", bound="PrefixWatch[Any, Any]")

# gRPC's default reconnect backoff grows to 120 s; after an etcd restart we want
# to be back within a couple of seconds.
_GRPC_OPTIONS = {
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 2000,
}
_RETRY_MIN, _RETRY_MAX = 0.1, 2.0

_info_encoder = msgspec.json.Encoder()
_info_decoder = msgspec.json.Decoder(wire.InstanceInfo)

Listener = Callable[[str, V], None]  # ("added" | "removed", value)
Decode = Callable[[str, bytes, bytes], tuple[K, V] | None]  # (prefix, key, value) -> (id, value) or skip


class Discovery:
    """A connection to etcd with the operations roles need."""

    def __init__(self, client: aetcd.Client, endpoint: str):
        self._client = client
        self.endpoint = endpoint
        # Strong references: asyncio holds tasks weakly, and a keepalive must not be
        # garbage-collected because its caller dropped the Registration.
        self._registrations: set[Registration] = set()
        self._watches: set[PrefixWatch[Any, Any]] = set()

    @classmethod
    async def connect(cls, endpoints: list[str], *, timeout: float = 5.0) -> Discovery:
        """Connect to the first endpoint that answers a status call within ``timeout``.

        ``timeout`` is per endpoint and also becomes aetcd's per-call gRPC deadline.
        """
        errors = []
        for endpoint in endpoints:
            parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
            client = aetcd.Client(
                host=parts.hostname or "127.0.0.1",
                port=parts.port or FIXED.etcd_port,
                timeout=timeout,
                options=_GRPC_OPTIONS,
            )
            try:
                await asyncio.wait_for(client.status(), timeout)
            except (aetcd.ClientError, TimeoutError, OSError) as exc:
                errors.append(f"{endpoint}: {exc}")
                await client.close()
                continue
            return cls(client, endpoint)
        raise DiscoveryUnavailableError(endpoints, "; ".join(errors))

    async def close(self) -> None:
        """Revoke registrations (their keys vanish at once), close watches, disconnect."""
        for registration in list(self._registrations):
            await registration.revoke()
        for watch in list(self._watches):
            await watch.close()
        await self._client.close()

    async def __aenter__(self) -> Discovery:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def client(self) -> aetcd.Client:
        """The raw client, for tests and for things this class does not cover yet."""
        return self._client

    # ------------------------------------------------------------ registration

    async def register(self, info: wire.InstanceInfo, ttl: float, model: str | None = None) -> Registration:
        """Publish ``info`` (and ``model`` in the registry) under a lease kept alive until revoked."""
        registration = Registration(
            self._client, _registration_keys(info, model), ttl, self._registrations.discard
        )
        await registration._grant_and_put()
        registration._start()
        self._registrations.add(registration)
        return registration

    # ------------------------------------------------------------ reads and watches

    async def mark_draining(
        self, registration: Registration, info: wire.InstanceInfo, model: str | None = None
    ) -> None:
        """Announce that the instance is leaving: callers stop routing to it, while its lease (and
        so its streams in flight) lives on until it revokes. A removed key means lost; this does not."""
        draining = msgspec.structs.replace(info, draining=True)
        await registration.replace(_registration_keys(draining, model))

    async def list_instances(
        self, namespace: str, component: str | None = None
    ) -> dict[str, wire.InstanceInfo]:
        prefix = names.instances_prefix(namespace, component)
        result = await self._client.get_prefix(prefix.encode())
        return dict(filter(None, (_decode_instance(prefix, kv.key, kv.value) for kv in result)))

    async def list_models(self, namespace: str) -> dict[str, list[str]]:
        """``{model: [instance_id, ...]}`` of every model registered in ``namespace``."""
        prefix = names.models_prefix(namespace)
        result = await self._client.get_prefix(prefix.encode())
        entries = dict(filter(None, (_decode_model(prefix, kv.key, kv.value) for kv in result)))
        return _models_view(entries)

    async def watch_instances(self, namespace: str, component: str | None = None) -> InstanceWatch:
        """Live ``{instance_id: InstanceInfo}`` of a namespace (or one component)."""
        prefix = names.instances_prefix(namespace, component)
        return await self._track(InstanceWatch(self._client, prefix, _decode_instance))

    async def watch_models(self, namespace: str) -> ModelWatch:
        """Live model registry; ``models`` gives ``{model: [instance_id, ...]}``."""
        return await self._track(ModelWatch(self._client, names.models_prefix(namespace), _decode_model))

    # ------------------------------------------------------------ planner decisions

    async def put_replicas(self, namespace: str, replicas: Mapping[str, int]) -> None:
        """Store the planner's decision. No lease: it outlives a planner restart."""
        key = names.planner_replicas_key(namespace)
        await self._client.put(key.encode(), msgspec.json.encode(dict(replicas)))

    async def get_replicas(self, namespace: str) -> dict[str, int] | None:
        value = await self._client.get(names.planner_replicas_key(namespace).encode())
        decoded = _decode_replicas("", b"", value.value) if value is not None else None
        return decoded[1] if decoded is not None else None

    async def watch_replicas(self, namespace: str) -> PrefixWatch[str, dict[str, int]]:
        """Live planner decision: ``snapshot`` is ``{"replicas": {role: n}}`` once one exists."""
        return await self._track(
            PrefixWatch(self._client, names.planner_replicas_key(namespace), _decode_replicas)
        )

    async def watch_planner_decisions(self) -> PrefixWatch[str, tuple[str, dict[str, int]]]:
        """Every namespace's planner decision (the operator applies them): ``snapshot`` is
        ``{namespace: (namespace, {role: replicas})}``; listeners get ``(namespace, replicas)``."""
        return await self._track(PrefixWatch(self._client, names.KEY_ROOT + "/", _decode_any_replicas))

    async def _track(self, watch: W) -> W:
        await watch._start()
        self._watches.add(watch)
        watch._on_close = self._watches.discard
        return watch


# ---------------------------------------------------------------- registration


class Registration:
    """Keys held under one lease, kept alive in the background.

    The keepalive refreshes every ``ttl/3``. If etcd says the lease is gone (TTL 0:
    it expired while this process was paused or partitioned, or etcd lost its data),
    a new lease is granted and the keys are written again, so a live process always
    comes back. Transient errors are retried at the next tick.
    """

    def __init__(
        self,
        client: aetcd.Client,
        keys: Mapping[str, bytes],
        ttl: float,
        on_revoke: Callable[[Registration], None] = lambda _r: None,
    ):
        self._client = client
        self._on_revoke = on_revoke
        self._keys = dict(keys)
        self.ttl = max(2, math.ceil(ttl))  # etcd TTLs are whole seconds
        self.lease_id: int | None = None
        self._stopped = False
        self.regrants = 0  # how often a lost lease was re-created (observability, tests)
        self._task: asyncio.Task[None] | None = None

    @property
    def keys(self) -> list[str]:
        return list(self._keys)

    async def _grant_and_put(self) -> None:
        """One transaction, so watchers never see the instance without its model entry."""
        lease = await self._client.lease(self.ttl)
        txn = self._client.transactions
        puts = [txn.put(key.encode(), value, lease=lease.id) for key, value in self._keys.items()]
        await self._client.transaction(compare=[], success=puts, failure=[])
        self.lease_id = lease.id

    def _start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._keepalive(), name="etcd-keepalive")

    async def _keepalive(self) -> None:
        interval = self.ttl / 3
        while True:
            await asyncio.sleep(interval)
            if self._stopped:  # in case a cancel() was swallowed (see _stop_task)
                return
            try:
                if self.lease_id is not None:
                    reply = await self._client.refresh_lease(self.lease_id)
                    if reply is not None and reply.TTL > 0:
                        continue
                    log.warning("etcd lease %x is gone; registering again", self.lease_id)
                    self.lease_id = None
                await self._grant_and_put()
                self.regrants += 1
            except Exception as exc:  # keep the task alive whatever etcd does
                log.warning("etcd keepalive failed (will retry): %s", exc)

    def stop_keepalive(self) -> None:
        """Stop refreshing without revoking: the keys expire after the TTL (as if we died)."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def replace(self, keys: Mapping[str, bytes]) -> None:
        """Write new values for the same keys under the same lease (e.g. marked draining)."""
        if set(keys) != set(self._keys):
            raise ValueError("a registration keeps its keys; only their values change")
        self._keys = dict(keys)
        if self.lease_id is None:
            return  # the keepalive writes them with the next lease
        txn = self._client.transactions
        puts = [txn.put(key.encode(), value, lease=self.lease_id) for key, value in self._keys.items()]
        await self._client.transaction(compare=[], success=puts, failure=[])

    async def revoke(self) -> None:
        """Remove the keys now. Best effort: if etcd is unreachable they expire by TTL."""
        self._stopped = True
        task, self._task = self._task, None
        await _stop_task(task)
        self._on_revoke(self)
        lease_id, self.lease_id = self.lease_id, None
        if lease_id is not None:
            try:
                await self._client.revoke_lease(lease_id)
            except aetcd.ClientError as exc:
                log.warning("etcd lease revoke failed; keys expire by TTL: %s", exc)


# ---------------------------------------------------------------- watches


class PrefixWatch(Generic[K, V]):
    """An immutable snapshot of the keys under a prefix, kept current by a watch.

    ``decode(prefix, key, value)`` turns a key into ``(id, value)`` or ``None`` to
    skip it. Each change replaces ``snapshot`` with a new dict, so readers may keep
    a reference without locks. On any watch error the task re-lists and emits
    "added"/"removed" for what changed while it was blind.
    """

    def __init__(self, client: aetcd.Client, prefix: str, decode: Decode[K, V]):
        self._client = client
        self.prefix = prefix
        self._decode = decode
        self._snapshot: dict[K, V] = {}
        self._key_ids: dict[bytes, K] = {}  # etcd key -> id, to apply deletes
        self._listeners: list[Listener[V]] = []
        self._changed = asyncio.Event()
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._on_close: Callable[[PrefixWatch[K, V]], None] = lambda _w: None
        self.resyncs = 0  # completed re-lists after the first (observability, tests)

    @property
    def snapshot(self) -> dict[K, V]:
        return self._snapshot

    def add_listener(self, callback: Listener[V]) -> Callable[[], None]:
        """``callback(event, value)`` on join ("added") and leave ("removed").

        Called on the event loop; it must not block (start a task for I/O).
        A changed value for an existing id re-fires "added"; an identical re-put
        does not. Returns a function that removes the listener.
        """
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    async def wait_for(self, predicate: Callable[[dict[K, V]], bool], timeout: float | None) -> dict[K, V]:
        """Wait until ``predicate(snapshot)`` holds; ``TimeoutError`` after ``timeout`` s (None: never)."""
        async with asyncio.timeout(timeout):
            while not predicate(self._snapshot):
                self._changed.clear()
                await self._changed.wait()
        return self._snapshot

    async def close(self) -> None:
        self._on_close(self)
        task, self._task = self._task, None
        await _stop_task(task)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- internals

    async def _start(self) -> None:
        """Start the task and return once the first listing is loaded (or raise its error)."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"etcd-watch {self.prefix}")
        ready = asyncio.ensure_future(self._ready.wait())
        await asyncio.wait([ready, self._task], return_when=asyncio.FIRST_COMPLETED)
        if not self._ready.is_set():
            ready.cancel()
            self._task.result()  # raises the task's error

    async def _run(self) -> None:
        delay = _RETRY_MIN
        while True:
            try:
                revision = await self._relist()
                delay = _RETRY_MIN
                watch = await self._client.watch_prefix(self.prefix.encode(), start_revision=revision + 1)
                try:
                    async for event in watch:
                        self._apply(event)
                finally:
                    with contextlib.suppress(Exception):
                        await watch.cancel()
            except Exception as exc:
                if not self._ready.is_set():
                    raise  # the first listing failed: let watch_*() raise it
                log.warning("etcd watch on %s failed (re-listing in %.1fs): %s", self.prefix, delay, exc)
            await asyncio.sleep(delay)  # retry backoff, not synchronisation
            delay = min(delay * 2, _RETRY_MAX)

    async def _relist(self) -> int:
        result = await self._client.get_prefix(self.prefix.encode())
        fresh: dict[K, V] = {}
        key_ids: dict[bytes, K] = {}
        for kv in result:
            item = self._decode(self.prefix, kv.key, kv.value)
            if item is not None:
                fresh[item[0]] = item[1]
                key_ids[kv.key] = item[0]
        old = self._snapshot
        self._key_ids = key_ids
        self._publish(fresh)
        for id_, value in old.items():
            if id_ not in fresh:
                self._emit("removed", value)
        for id_, value in fresh.items():
            if old.get(id_) != value:
                self._emit("added", value)
        if self._ready.is_set():
            self.resyncs += 1
        self._ready.set()
        revision: int = result.header.revision
        return revision

    def _apply(self, event: aetcd.Event) -> None:
        if event.kind == aetcd.EventKind.PUT:
            item = self._decode(self.prefix, event.kv.key, event.kv.value)
            if item is None:
                return
            self._key_ids[event.kv.key] = item[0]
            unchanged = self._snapshot.get(item[0]) == item[1]  # e.g. re-put after a lease re-grant
            self._publish({**self._snapshot, item[0]: item[1]})
            if not unchanged:
                self._emit("added", item[1])
        else:
            id_ = self._key_ids.pop(event.kv.key, None)
            if id_ is None or id_ not in self._snapshot:
                return
            fresh = dict(self._snapshot)
            value = fresh.pop(id_)
            self._publish(fresh)
            self._emit("removed", value)

    def _publish(self, snapshot: dict[K, V]) -> None:
        self._snapshot = snapshot
        self._changed.set()

    def _emit(self, event: str, value: V) -> None:
        for listener in list(self._listeners):
            try:
                listener(event, value)
            except Exception:
                log.exception("discovery listener %r failed", listener)


class InstanceWatch(PrefixWatch[str, wire.InstanceInfo]):
    """``instances``: ``{instance_id: InstanceInfo}``; listeners get the InstanceInfo."""

    @property
    def instances(self) -> dict[str, wire.InstanceInfo]:
        return self._snapshot


@dataclass(frozen=True)
class ModelInstance:
    """One instance serving one model (an entry of the model registry)."""

    model: str
    instance_id: str
    info: wire.InstanceInfo


class ModelWatch(PrefixWatch[tuple[str, str], ModelInstance]):
    """The model registry; listeners get a ModelInstance per (model, instance)."""

    @property
    def models(self) -> dict[str, list[str]]:
        return _models_view(self._snapshot)


# ---------------------------------------------------------------- helpers


async def _stop_task(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` and wait until it has finished.

    One ``cancel()`` is not always enough: on Python 3.11, ``asyncio.wait_for``
    (which aetcd uses while creating a watch or connecting) swallows a
    cancellation that races with the awaited result (CPython gh-86296, fixed in
    3.12), and the task runs on. Seen here as a watch whose close() hung forever
    about once in 200 runs; so keep cancelling until the task is done.
    """
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=0.05)
    if not task.cancelled() and task.exception() is not None:
        log.warning("%s ended with %r", task.get_name(), task.exception())


# ---------------------------------------------------------------- decoding


def _registration_keys(info: wire.InstanceInfo, model: str | None) -> dict[str, bytes]:
    keys = {names.instance_key(info.namespace, info.component, info.instance_id): _info_encoder.encode(info)}
    if model:
        keys[names.model_key(info.namespace, model, info.instance_id)] = _info_encoder.encode(info)
    return keys


def _decode_replicas(prefix: str, key: bytes, value: bytes) -> tuple[str, dict[str, int]] | None:
    try:
        replicas = msgspec.json.decode(value, type=dict[str, int])
    except msgspec.DecodeError:
        log.warning("ignoring undecodable planner decision %r", value[:200])
        return None
    return "replicas", replicas


def _decode_any_replicas(
    prefix: str, key: bytes, value: bytes
) -> tuple[str, tuple[str, dict[str, int]]] | None:
    parts = names.split_key(prefix, key.decode())
    if len(parts) != 3 or parts[1:] != ["planner", "replicas"]:
        return None  # instances, models, ...: not a decision
    decoded = _decode_replicas(prefix, key, value)
    return None if decoded is None else (parts[0], (parts[0], decoded[1]))


def _decode_instance(prefix: str, key: bytes, value: bytes) -> tuple[str, wire.InstanceInfo] | None:
    try:
        info = _info_decoder.decode(value)
    except msgspec.DecodeError:
        log.warning("ignoring undecodable instance key %r", key)
        return None
    return info.instance_id, info


def _decode_model(prefix: str, key: bytes, value: bytes) -> tuple[tuple[str, str], ModelInstance] | None:
    parts = names.split_key(prefix, key.decode())
    if len(parts) != 2:
        return None
    try:
        info = _info_decoder.decode(value)
    except msgspec.DecodeError:
        info = wire.InstanceInfo(instance_id=parts[1], namespace="", component="")
    return (parts[0], parts[1]), ModelInstance(parts[0], parts[1], info)


def _models_view(entries: Mapping[tuple[str, str], ModelInstance]) -> dict[str, list[str]]:
    models: dict[str, list[str]] = {}
    for model, instance_id in sorted(entries):
        models.setdefault(model, []).append(instance_id)
    return models
