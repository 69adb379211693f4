"""In-memory object storage: one global resourceVersion counter, an event history for watches that
start from a resourceVersion, and fan-out of events to live watches on the server's event loop.

Thread-safe (one lock): the server runs in a background thread while tests call into it directly.
"""

from __future__ import annotations

import asyncio
import copy
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import expired

Key = tuple[str, str]  # (group, plural): every version of a resource shares its objects
Obj = dict[str, Any]


@dataclass(frozen=True)
class Event:
    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    key: Key
    obj: Obj
    old: Obj | None = None  # the state before a MODIFIED event, for selector transitions


class Watch:
    """A live subscription: `view` decides what a watcher sees of an event (None: nothing, or the
    event retyped); what it sees is queued on the watching request's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, view: Callable[[Event], Event | None]):
        self.loop, self.view = loop, view
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    def offer(self, event: Event) -> None:
        if (seen := self.view(event)) is not None:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, seen)


def namespace_of(obj: Obj) -> str | None:
    return obj.get("metadata", {}).get("namespace") or None


class Store:
    def __init__(self, history: int = 100_000):
        self.lock = threading.RLock()
        self._objects: dict[Key, dict[tuple[str | None, str], Obj]] = {}
        self._rv = 1000  # resourceVersions are opaque strings to clients; start away from 0 and 1
        self._history: deque[Event] = deque(maxlen=history)
        self._watches: set[Watch] = set()
        # indexes for the garbage collector: uid -> where the object lives; owner uid -> dependents' places
        self._by_uid: dict[str, tuple[Key, str | None, str]] = {}
        self._dependents: dict[str, set[tuple[Key, str | None, str]]] = {}

    @property
    def resource_version(self) -> int:
        return self._rv

    def get(self, key: Key, namespace: str | None, name: str) -> Obj | None:
        with self.lock:
            return self._objects.get(key, {}).get((namespace, name))

    def list(self, key: Key, namespace: str | None = None) -> list[Obj]:
        """Objects of one resource, in one namespace or (None) in all."""
        with self.lock:
            found = self._objects.get(key, {}).items()
            return [
                obj
                for (ns, _), obj in sorted(found, key=lambda kv: (kv[0][0] or "", kv[0][1]))
                if namespace in (None, ns)
            ]

    def keys(self) -> list[Key]:
        with self.lock:
            return [key for key, objects in self._objects.items() if objects]

    def put(self, key: Key, obj: Obj, event_type: str) -> Obj:
        """Store obj with the next resourceVersion and emit ADDED or MODIFIED."""
        with self.lock:
            self._rv += 1
            obj["metadata"]["resourceVersion"] = str(self._rv)
            place = (key, namespace_of(obj), obj["metadata"]["name"])
            previous = self._objects.setdefault(key, {}).get(place[1:])
            if previous is not None:
                self._unindex(previous, place)
            self._objects[key][place[1:]] = obj
            self._index(obj, place)
            self._emit(Event(self._rv, event_type, key, copy.deepcopy(obj), previous))
            return obj

    def remove(self, key: Key, obj: Obj) -> Obj:
        """Drop obj and emit DELETED with a fresh resourceVersion, as etcd's delete revision."""
        with self.lock:
            place = (key, namespace_of(obj), obj["metadata"]["name"])
            stored = self._objects.get(key, {}).pop(place[1:], None)
            if stored is not None:
                self._unindex(stored, place)
            self._rv += 1
            gone = copy.deepcopy(obj)
            gone["metadata"]["resourceVersion"] = str(self._rv)
            self._emit(Event(self._rv, "DELETED", key, gone))
            return gone

    def _index(self, obj: Obj, place: tuple[Key, str | None, str]) -> None:
        self._by_uid[obj["metadata"]["uid"]] = place
        for ref in obj["metadata"].get("ownerReferences") or []:
            self._dependents.setdefault(ref.get("uid", ""), set()).add(place)

    def _unindex(self, obj: Obj, place: tuple[Key, str | None, str]) -> None:
        self._by_uid.pop(obj["metadata"]["uid"], None)
        for ref in obj["metadata"].get("ownerReferences") or []:
            self._dependents.get(ref.get("uid", ""), set()).discard(place)

    def by_uid(self, uid: str) -> tuple[Key, Obj] | None:
        with self.lock:
            place = self._by_uid.get(uid)
            return None if place is None else (place[0], self._objects[place[0]][place[1:]])

    def dependents(self, owner_uid: str) -> list[tuple[Key, Obj]]:
        """Objects with an ownerReference to owner_uid."""
        with self.lock:
            places = sorted(self._dependents.get(owner_uid, ()), key=lambda p: (p[0], p[1] or "", p[2]))
            return [(key, self._objects[key][(ns, name)]) for key, ns, name in places]

    def _emit(self, event: Event) -> None:
        self._history.append(event)
        for watch in list(self._watches):
            watch.offer(event)

    def subscribe(self, watch: Watch, since: int | None) -> list[Event]:
        """Register watch; return the events after `since` it must replay first (None: none)."""
        with self.lock:
            backlog: list[Event] = []
            if since is not None and since < self._rv:
                oldest = self._history[0].rv if self._history else self._rv + 1
                if since < oldest - 1:
                    raise expired(since)
                backlog = [
                    seen for e in self._history if e.rv > since and (seen := watch.view(e)) is not None
                ]
            self._watches.add(watch)
            return backlog

    def unsubscribe(self, watch: Watch) -> None:
        with self.lock:
            self._watches.discard(watch)
