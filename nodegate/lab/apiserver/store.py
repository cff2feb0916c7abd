"""All objects, their resourceVersions and their watch stream.

One process-wide counter gives every write a resourceVersion (as etcd's revision does), so a
list's resourceVersion is a point a watch can resume from. Objects are handed out as copies:
a caller can never change stored state without a write, and every write is a watch event.
"""
from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone

from nodegate.lab.apiserver import status
from nodegate.lab.apiserver.resources import Resource

WATCH_QUEUE_MAX = 2000  # events waiting for one watch client before it is dropped
HISTORY = 4000   # watch events kept for resuming; older resourceVersions answer 410 Gone
_SUFFIX_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # apimachinery's rand.String alphabet


def clone(obj):
    """A deep copy of JSON-shaped data (dicts, lists, scalars), several times faster than
    copy.deepcopy: the reconcile loop copies every pod a few times a second."""
    if isinstance(obj, dict):
        return {k: clone(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [clone(v) for v in obj]
    return obj


def now_rfc3339(at: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if at is None else at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro(at: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if at is None else at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def random_suffix(n: int = 5) -> str:
    return "".join(secrets.choice(_SUFFIX_CHARS) for _ in range(n))


@dataclass(frozen=True)
class WatchEvent:
    rv: int
    key: str
    type: str       # ADDED | MODIFIED | DELETED
    obj: dict
    old: dict | None = None   # the object before a MODIFIED (a filtered watch needs both)


class Watcher:
    def __init__(self, store: "Store", key: str, namespace: str | None) -> None:
        self.store = store
        self.key = key
        self.namespace = namespace
        self.queue: asyncio.Queue[WatchEvent | None] = asyncio.Queue()  # None: dropped

    def offer(self, event: WatchEvent) -> None:
        if event.key != self.key:
            return
        if self.namespace and event.obj["metadata"].get("namespace") != self.namespace:
            return
        if self.queue.qsize() >= WATCH_QUEUE_MAX:
            # A client that stopped reading: like the real watch cache, drop it (it re-lists).
            self.close()
            self.queue.put_nowait(None)
            return
        self.queue.put_nowait(event)

    def close(self) -> None:
        self.store.watchers.discard(self)


class Store:
    def __init__(self) -> None:
        self.rv = 1000
        self.objects: dict[str, dict[tuple[str, str], dict]] = {}
        self.history: deque[WatchEvent] = deque(maxlen=HISTORY)
        self.watchers: set[Watcher] = set()
        self.oldest_rv = 0          # watches from before this (a restored store) answer 410

    # -- reading -----------------------------------------------------------
    def _bucket(self, res: Resource) -> dict[tuple[str, str], dict]:
        return self.objects.setdefault(res.key, {})

    def get(self, res: Resource, namespace: str, name: str) -> dict:
        obj = self._bucket(res).get((namespace if res.namespaced else "", name))
        if obj is None:
            raise status.not_found(res.plural, res.group, name)
        return clone(obj)

    def find(self, res: Resource, namespace: str, name: str) -> dict | None:
        obj = self._bucket(res).get((namespace if res.namespaced else "", name))
        return clone(obj) if obj is not None else None

    def list(self, res: Resource, namespace: str | None = None) -> list[dict]:
        items = [obj for (ns, _), obj in sorted(self._bucket(res).items())
                 if not namespace or ns == namespace]
        return clone(items)

    def peek(self, res: Resource, namespace: str | None = None) -> list[dict]:
        """The stored objects themselves, for reading only: never change what this returns
        (clone() first), or the change bypasses resourceVersions and watches."""
        return [obj for (ns, _), obj in sorted(self._bucket(res).items()) if not namespace or ns == namespace]

    def by_uid(self, res: Resource, uid: str) -> dict | None:
        for obj in self._bucket(res).values():
            if obj["metadata"]["uid"] == uid:
                return clone(obj)
        return None

    # -- writing -----------------------------------------------------------
    def _next_rv(self) -> int:
        self.rv += 1
        return self.rv

    def _emit(self, res: Resource, type_: str, obj: dict, old: dict | None = None) -> None:
        event = WatchEvent(self.rv, res.key, type_, clone(obj), old)
        self.history.append(event)
        for watcher in list(self.watchers):
            watcher.offer(event)

    def create(self, res: Resource, obj: dict, *, created_at: float | None = None) -> dict:
        obj = clone(obj)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            bucket = self._bucket(res)
            for _ in range(20):
                name = meta["generateName"] + random_suffix()
                if (meta.get("namespace", "") if res.namespaced else "", name) not in bucket:
                    break
            meta["name"] = name
        key = (meta.get("namespace", "") if res.namespaced else "", meta["name"])
        if not res.namespaced:
            meta.pop("namespace", None)
        if key in self._bucket(res):
            raise status.already_exists(res.plural, res.group, meta["name"])
        obj["apiVersion"] = res.api_version
        obj["kind"] = res.kind
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339(created_at)
        meta.pop("deletionTimestamp", None)
        if res.bumps_generation:
            meta["generation"] = 1
        meta["resourceVersion"] = str(self._next_rv())
        self._bucket(res)[key] = obj
        self._emit(res, "ADDED", obj)
        return clone(obj)

    def update(self, res: Resource, obj: dict, *, expect_rv: str | None = None) -> dict:
        """Replace the stored object; a stale expect_rv is a 409 Conflict, as in etcd's CAS."""
        obj = clone(obj)
        meta = obj["metadata"]
        key = (meta.get("namespace", "") if res.namespaced else "", meta["name"])
        current = self._bucket(res).get(key)
        if current is None:
            raise status.not_found(res.plural, res.group, meta["name"])
        if expect_rv and expect_rv != current["metadata"]["resourceVersion"]:
            raise status.conflict(res.plural, res.group, meta["name"])
        for fixed in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds"):
            if fixed in current["metadata"]:
                meta[fixed] = current["metadata"][fixed]
            else:
                meta.pop(fixed, None)
        if res.bumps_generation:
            meta["generation"] = current["metadata"].get("generation", 1)
            if obj.get("spec") != current.get("spec"):
                meta["generation"] += 1
        obj["apiVersion"] = res.api_version
        obj["kind"] = res.kind
        meta["resourceVersion"] = current["metadata"]["resourceVersion"]
        if obj == current:
            return clone(current)  # a no-op write keeps its resourceVersion, as real
        meta["resourceVersion"] = str(self._next_rv())
        self._bucket(res)[key] = obj
        self._emit(res, "MODIFIED", obj, current)  # `current` left the bucket: nobody changes it now
        return clone(obj)

    def mark_deleting(self, res: Resource, namespace: str, name: str, *, grace_s: int,
                      at: float | None = None) -> dict:
        """Graceful deletion's first half: deletionTimestamp set, the object stays."""
        key = (namespace if res.namespaced else "", name)
        current = self._bucket(res).get(key)
        if current is None:
            raise status.not_found(res.plural, res.group, name)
        obj = clone(current)
        meta = obj["metadata"]
        deadline = (time.time() if at is None else at) + grace_s
        if "deletionTimestamp" in meta and meta.get("deletionGracePeriodSeconds", 0) <= grace_s:
            return clone(current)  # already terminating, sooner than asked
        meta["deletionTimestamp"] = now_rfc3339(deadline)
        meta["deletionGracePeriodSeconds"] = grace_s
        meta["resourceVersion"] = str(self._next_rv())
        self._bucket(res)[key] = obj
        self._emit(res, "MODIFIED", obj, current)
        return clone(obj)

    def delete(self, res: Resource, namespace: str, name: str) -> dict:
        key = (namespace if res.namespaced else "", name)
        current = self._bucket(res).pop(key, None)
        if current is None:
            raise status.not_found(res.plural, res.group, name)
        current["metadata"]["resourceVersion"] = str(self._next_rv())
        self._emit(res, "DELETED", current)
        return clone(current)

    # -- persistence (a restarted server keeps the cluster's objects) ----------
    def dump(self) -> dict:
        return {"rv": self.rv, "objects": {key: list(bucket.values()) for key, bucket in self.objects.items()}}

    def load(self, data: dict, resources_by_key: dict[str, Resource]) -> None:
        # Writes lost since the last save must never reuse a resourceVersion a client saw, and a
        # watch from before the restart has no history to resume from (410, so it re-lists).
        self.rv = int(data["rv"]) + 1000
        self.oldest_rv = self.rv
        self.objects = {}
        for key, items in data["objects"].items():
            res = resources_by_key.get(key)
            if res is None:
                continue
            bucket = self._bucket(res)
            for obj in items:
                meta = obj["metadata"]
                bucket[(meta.get("namespace", "") if res.namespaced else "", meta["name"])] = obj

    # -- watching ----------------------------------------------------------
    def watch(self, res: Resource, namespace: str | None, since_rv: int | None) -> tuple[Watcher, list[WatchEvent]]:
        """A watcher for future events plus the backlog to send first: every object as ADDED
        when no resourceVersion is given, else the history after it (410 if it is gone)."""
        watcher = Watcher(self, res.key, namespace)
        backlog: list[WatchEvent] = []
        if since_rv is None:
            for obj in self.list(res, namespace):
                backlog.append(WatchEvent(int(obj["metadata"]["resourceVersion"]), res.key, "ADDED", obj))
        else:
            oldest = self.history[0].rv if self.history else self.rv + 1
            if (since_rv < oldest - 1 and len(self.history) == self.history.maxlen) or since_rv < self.oldest_rv:
                raise status.gone(f"too old resource version: {since_rv} ({self.rv})")
            for event in self.history:
                if event.rv > since_rv:
                    before = watcher.queue.qsize()
                    watcher.offer(event)
                    if watcher.queue.qsize() > before:
                        backlog.append(watcher.queue.get_nowait())
        self.watchers.add(watcher)
        return watcher, backlog
