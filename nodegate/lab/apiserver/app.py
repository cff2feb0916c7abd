"""HTTP layer: authentication, faults, discovery, and the generic REST verbs on every resource.

Resource-specific behaviour (pod defaults, graceful deletion, eviction, logs, exec) lives in
`cluster.Cluster`; this module only maps URLs and verbs onto the store and the cluster.
"""
from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import re
import time

from aiohttp import web

from nodegate.lab.apiserver import auth, protobuf, resources, status, tables
from nodegate.lab.apiserver.cluster import Cluster
from nodegate.lab.apiserver.faults import Faults
from nodegate.lab.apiserver.patch import json_patch, merge_patch, strategic_merge_patch
from nodegate.lab.apiserver.resources import Resource
from nodegate.lab.apiserver.selectors import field_selector, label_selector

log = logging.getLogger(__name__)

WATCH_DEFAULT_TIMEOUT_S = 1800   # kube-apiserver's --min-request-timeout
BOOKMARK_EVERY_S = 10.0
UNAUTHENTICATED_PATHS = {"/healthz", "/livez", "/readyz"}
TOKEN_ADMIN = "nodegate-operator"
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

JSON_TYPE = "application/json"


def json_response(body: dict, code: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(body=json.dumps(body, separators=(",", ":")).encode(), status=code,
                        content_type=JSON_TYPE, headers=headers)


def version_doc(kube_version: str) -> dict:
    major, minor = kube_version.lstrip("v").split(".")[:2]
    return {"major": major, "minor": minor, "gitVersion": kube_version,
            "gitCommit": "ff2c119726cc1f8926fb0585c74b92c8a2b3f2e6", "gitTreeState": "clean",
            "buildDate": "2023-01-18T19:15:26Z", "goVersion": "go1.19.5", "compiler": "gc",
            "platform": "linux/amd64"}


class Api:
    def __init__(self, cluster: Cluster, faults: Faults, token: str, *, tls: bool = False,
                 tokens: dict[str, dict] | None = None) -> None:
        self.cluster = cluster
        self.store = cluster.store
        self.faults = faults
        self.tls = tls
        # token -> User: the admin token of lab.json, plus the static token table (pki.py)
        self._tokens = [(token.encode(), auth.User(TOKEN_ADMIN, (auth.ADMIN_GROUP,)))]
        for value, who in (tokens or {}).items():
            self._tokens.append((value.encode(), auth.User(who["user"], tuple(who.get("groups", ())))))
        self.requests = 0

    # -- app -----------------------------------------------------------------
    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self.middleware], client_max_size=16 << 20)
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        return app

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        # Always read the body: an unread body corrupts the next request on a kept-alive connection.
        body = await request.read()
        self.requests += 1
        path = request.path
        if path not in UNAUTHENTICATED_PATHS:
            flaky = self.faults.flakiness()
            action = Faults.roll(flaky) if flaky else None
            if action == "drop":
                if request.transport is not None:
                    request.transport.abort()  # the client sees its connection reset
                return web.Response(status=503)  # never sent: the connection is gone
            if action == "503":
                return json_response(status.unavailable().body(), 503, {"Retry-After": "1"})
            if action == "429":
                return json_response(status.ApiError(429, "TooManyRequests", "Too many requests, please try again later.",
                                                     {"retryAfterSeconds": 1}).body(), 429, {"Retry-After": "1"})
            if action == "500":
                return json_response(status.ApiError(500, "InternalError", "Internal error occurred: "
                                                     "etcdserver: request timed out").body(), 500)
            user = self._authenticate(request)
            if user is None:
                return json_response(status.unauthorized().body(), 401)
            request["user"] = user
        try:
            request["body"] = body
            return await handler(request)
        except status.ApiError as exc:
            return json_response(exc.body(), exc.code, exc.headers)
        except (web.HTTPException, asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as exc:  # a server bug: answer like kube-apiserver's panic handler, log the trace
            log.exception("%s %s failed", request.method, request.path_qs)
            return json_response(status.ApiError(500, "InternalError", f"Internal error occurred: {exc}").body(), 500)

    def _authenticate(self, request: web.Request) -> auth.User | None:
        """The requesting user, or None (401). Over TLS: the verified client certificate, else a
        bearer token of the table; nothing else is accepted."""
        header = request.headers.get("Authorization", "")
        if self.tls and request.transport is not None:
            user = auth.user_from_peercert(request.transport.get_extra_info("peercert"))
            if user is not None and not header:
                return user
        if not header:
            if self.tls:
                return None
            # kubectl (client-go) never sends credentials over plain HTTP (kubernetes/kubectl#744),
            # so a request without any is served as kube-apiserver's old insecure port served
            # it: this server listens on loopback only. A wrong or malformed token is refused.
            return auth.User(TOKEN_ADMIN, (auth.ADMIN_GROUP,))
        if not header.startswith("Bearer "):
            return None
        offered = header[len("Bearer "):].strip().encode()
        found = None
        for value, user in self._tokens:
            if hmac.compare_digest(offered, value):  # compare with every token: no early exit
                found = user
        return found

    # -- routing ----------------------------------------------------------------
    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        parts = [p for p in path.split("/") if p]
        if path in UNAUTHENTICATED_PATHS:
            return web.Response(text="ok")
        if path == "/openapi/v3":
            return json_response(resources.openapi_v3_root())
        if path.startswith("/openapi/v3/"):
            doc = resources.openapi_v3_gv(path[len("/openapi/v3/"):])
            if doc is None:
                raise self._path_not_found()
            return json_response(doc)
        if path == "/version":
            return json_response(version_doc(self.cluster.config.kube_version))
        if path == "/api":
            return json_response(resources.api_versions(f"{self.cluster.config.api_address}:{self.cluster.config.api_port}"))
        if path == "/apis":
            return json_response(resources.api_group_list())
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif parts and parts[0] == "apis" and len(parts) >= 2:
            if len(parts) == 2:
                doc = resources.api_group(parts[1])
                if doc is None:
                    raise self._path_not_found()
                return json_response(doc)
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise self._path_not_found()
        if not rest:
            doc = resources.resource_list(group, version)
            if doc is None:
                raise self._path_not_found()
            return json_response(doc)
        return await self.resource_request(request, group, version, rest)

    @staticmethod
    def _authorize(request: web.Request, res: Resource, namespace: str | None, name: str | None,
                   sub: str | None) -> None:
        user = request.get("user")
        if user is None or user.admin:
            return
        verb = auth.request_verb(request.method, collection=name is None,
                                 watch=request.query.get("watch") in ("1", "true", "True"), subresource=sub)
        resource = f"{res.plural}/{sub}" if sub else res.plural
        if not auth.allowed(user, verb, res.group, resource):
            raise auth.forbidden(user, verb, res.group, resource, res.plural, name, namespace)

    @staticmethod
    def _path_not_found() -> status.ApiError:
        return status.ApiError(404, "NotFound", "the server could not find the requested resource")

    def _resolve(self, group: str, version: str, rest: list[str]) -> tuple[Resource, str | None, str | None, str | None]:
        """(resource, namespace, name, subresource) from the path after /api/v1 or /apis/g/v."""
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3 and resources.find(group, version, rest[2]):
            namespace, rest = rest[1], rest[2:]
        res = resources.find(group, version, rest[0])
        if res is None or len(rest) > 3:
            raise self._path_not_found()
        name = rest[1] if len(rest) >= 2 else None
        sub = rest[2] if len(rest) == 3 else None
        if sub and sub not in res.subresources:
            raise self._path_not_found()
        if namespace is not None and not res.namespaced:
            raise self._path_not_found()
        if res.namespaced and name is not None and namespace is None:
            raise self._path_not_found()
        return res, namespace, name, sub

    async def resource_request(self, request: web.Request, group: str, version: str, rest: list[str]) -> web.StreamResponse:
        res, namespace, name, sub = self._resolve(group, version, rest)
        method = request.method
        q = request.query
        self._authorize(request, res, namespace, name, sub)
        if res.plural == "selfsubjectaccessreviews":
            if method != "POST" or name is not None:
                raise status.method_not_allowed()
            return json_response(auth.self_subject_access_review(request["user"], self._body(request)), 201)
        if name is None:
            if method == "GET":
                if q.get("watch") in ("1", "true", "True"):
                    return await self.watch(request, res, namespace)
                return self.list(request, res, namespace)
            if method == "POST":
                return self.create(request, res, namespace)
            if method == "DELETE":
                return self.delete_collection(request, res, namespace)
            raise status.method_not_allowed()
        if sub == "exec":
            return await self.cluster.exec(request, namespace, name)
        if sub == "log":
            if method != "GET":
                raise status.method_not_allowed()
            text = self.cluster.pod_log(namespace, name, q)
            if q.get("follow") not in ("true", "1"):
                return web.Response(text=text, content_type="text/plain")
            return await self.follow_log(request, namespace, name, text)
        if sub == "eviction":
            if method != "POST":
                raise status.method_not_allowed()
            body = self._body(request)
            code, out = await self.cluster.evict(namespace, name, body, dry_run=bool(q.get("dryRun")))
            return json_response(out, code)
        if sub == "scale":
            return self.scale(request, res, namespace or "", name)
        if method == "GET":
            obj = self.store.get(res, namespace or "", name)
            if self._wants_table(request):
                return json_response(tables.table(res.kind, res.api_version, [obj], obj["metadata"]["resourceVersion"],
                                                  q.get("includeObject", "PartialObjectMetadata")))
            return json_response(obj)
        if method == "PUT":
            return self.update(request, res, namespace, name, sub)
        if method == "PATCH":
            return self.patch(request, res, namespace, name, sub)
        if method == "DELETE":
            return await self.delete(request, res, namespace, name)
        raise status.method_not_allowed()

    async def follow_log(self, request: web.Request, namespace: str, name: str, text: str) -> web.StreamResponse:
        """`logs -f`: what is there, then new lines as the container prints them, until the pod
        or its container instance goes away (or the client leaves)."""
        response = web.StreamResponse(status=200, headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        query = {k: v for k, v in request.query.items() if k not in ("tailLines", "limitBytes", "sinceSeconds")}
        sent = self.cluster.pod_log(namespace, name, query)  # `text` may be its tail
        uid = self.store.get(resources.find("", "v1", "pods"), namespace, name)["metadata"]["uid"]
        try:
            await response.write(text.encode())
            while True:
                await asyncio.sleep(1.0)
                pod = self.store.find(resources.find("", "v1", "pods"), namespace, name)
                if pod is None or pod["metadata"]["uid"] != uid:
                    break
                try:
                    full = self.cluster.pod_log(namespace, name, query)
                except status.ApiError:
                    break  # the container stopped
                if not full.startswith(sent):
                    break  # a new container instance: kubectl's follow ends there too
                if len(full) > len(sent):
                    await response.write(full[len(sent):].encode())
                    sent = full
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        try:
            await response.write_eof()
        except (ConnectionResetError, RuntimeError):
            pass
        return response

    # -- helpers ----------------------------------------------------------------
    @staticmethod
    def _body(request: web.Request) -> dict:
        raw = request["body"]
        if not raw:
            return {}
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
        if ctype == "application/vnd.kubernetes.protobuf":
            try:
                return protobuf.decode(raw)  # kubectl create namespace|configmap|secret|serviceaccount
            except protobuf.Unsupported:
                pass
        if ctype in ("application/vnd.kubernetes.protobuf", "application/cbor", "application/yaml"):
            # What kube-apiserver answers for a type it does not decode; client-go then resends JSON.
            raise status.ApiError(415, "UnsupportedMediaType",
                                  'the body of the request was in an unknown format - accepted media types include: '
                                  'application/json, application/merge-patch+json, application/json-patch+json, '
                                  'application/strategic-merge-patch+json')
        try:
            data = json.loads(raw)
        except ValueError:
            # kubectl and the client send JSON; YAML bodies would come from `kubectl create --raw`.
            raise status.bad_request("the object provided is unrecognized (must be of type JSON)")
        return data

    @staticmethod
    def _wants_table(request: web.Request) -> bool:
        return "as=Table" in request.headers.get("Accept", "")

    def _selected(self, request: web.Request, res: Resource, namespace: str | None) -> list[dict]:
        labels = label_selector(request.query.get("labelSelector"))
        fields = field_selector(request.query.get("fieldSelector"), res.field_selectors, res.kind)
        return [obj for obj in self.store.list(res, namespace)
                if labels(obj["metadata"].get("labels") or {}) and fields(obj)]

    # -- verbs ------------------------------------------------------------------
    def list(self, request: web.Request, res: Resource, namespace: str | None) -> web.Response:
        items = self._selected(request, res, namespace)
        rv = str(self.store.rv)
        meta: dict = {"resourceVersion": rv}
        limit = int(request.query.get("limit") or 0)
        offset = 0
        if request.query.get("continue"):
            try:
                offset = int(base64.urlsafe_b64decode(request.query["continue"]).decode())
            except ValueError:
                raise status.bad_request("continue key is not valid")
        if offset:
            items = items[offset:]
        if limit and len(items) > limit:
            items = items[:limit]
            meta["continue"] = base64.urlsafe_b64encode(str(offset + limit).encode()).decode()
            meta["remainingItemCount"] = len(self._selected(request, res, namespace)) - offset - limit
        if self._wants_table(request):
            body = tables.table(res.kind, res.api_version, items, rv, request.query.get("includeObject", "PartialObjectMetadata"))
            body["metadata"].update({k: v for k, v in meta.items() if k != "resourceVersion"})
            return json_response(body)
        for obj in items:  # a real list's items carry no kind/apiVersion
            obj.pop("kind", None)
            obj.pop("apiVersion", None)
        return json_response({"kind": f"{res.kind}List", "apiVersion": res.api_version, "metadata": meta,
                              "items": items})

    async def watch(self, request: web.Request, res: Resource, namespace: str | None) -> web.StreamResponse:
        q = request.query
        labels = label_selector(q.get("labelSelector"))
        fields = field_selector(q.get("fieldSelector"), res.field_selectors, res.kind)
        since = q.get("resourceVersion")
        if since and not since.isdigit():
            raise status.bad_request(f"invalid resource version: {since}")
        since_rv = int(since) if since and since != "0" else None
        timeout = min(float(q.get("timeoutSeconds") or WATCH_DEFAULT_TIMEOUT_S), WATCH_DEFAULT_TIMEOUT_S)
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
        watcher, backlog = self.store.watch(res, namespace, since_rv)
        response = web.StreamResponse(status=200, headers={"Content-Type": JSON_TYPE})
        response.enable_chunked_encoding()
        await response.prepare(request)
        deadline = time.monotonic() + timeout

        async def send(type_: str, obj: dict) -> None:
            await response.write(json.dumps({"type": type_, "object": obj}, separators=(",", ":")).encode() + b"\n")

        def matches(obj: dict) -> bool:
            return labels(obj["metadata"].get("labels") or {}) and fields(obj)

        def translate(event) -> str | None:
            """A filtered watch as the API server's: an object entering the filter is ADDED,
            one leaving it is DELETED (e.g. a pod whose label no longer matches)."""
            now_in = matches(event.obj)
            if event.type != "MODIFIED" or event.old is None:
                return event.type if now_in else None
            was_in = matches(event.old)
            if now_in and was_in:
                return "MODIFIED"
            if now_in:
                return "ADDED"
            return "DELETED" if was_in else None

        try:
            for event in backlog:
                kind = translate(event)
                if kind:
                    await send(kind, event.obj)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    event = await asyncio.wait_for(watcher.queue.get(), min(left, BOOKMARK_EVERY_S))
                    if event is None:
                        break  # fell too far behind
                except asyncio.TimeoutError:
                    if bookmarks:
                        await send("BOOKMARK", {"kind": res.kind, "apiVersion": res.api_version,
                                                "metadata": {"resourceVersion": str(self.store.rv)}})
                    continue
                kind = translate(event)
                if kind:
                    await send(kind, event.obj)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            watcher.close()
        try:
            await response.write_eof()
        except (ConnectionResetError, RuntimeError):
            pass
        return response

    @staticmethod
    def _scale_doc(obj: dict) -> dict:
        meta = obj["metadata"]
        selector = obj["spec"].get("selector") or {}
        text = ",".join(f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items()))
        return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
                             "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"]},
                "spec": {"replicas": obj["spec"].get("replicas", 1)},
                "status": {"replicas": (obj.get("status") or {}).get("replicas", 0), "selector": text}}

    def scale(self, request: web.Request, res: Resource, namespace: str, name: str) -> web.Response:
        """deployments/scale and replicasets/scale speak autoscaling/v1 Scale (kubectl scale)."""
        current = self.store.get(res, namespace, name)
        if request.method == "GET":
            return json_response(self._scale_doc(current))
        body = self._body(request)
        if request.method == "PUT":
            wanted = body
        elif request.method == "PATCH":
            ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
            doc = self._scale_doc(current)
            wanted = json_patch(doc, body) if ctype == "application/json-patch+json" else merge_patch(doc, body)
        else:
            raise status.method_not_allowed()
        replicas = (wanted.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            raise status.invalid("Scale", "autoscaling", name, [(
                "FieldValueInvalid", "spec.replicas", f"Invalid value: {replicas}: must be greater than or equal to 0")])
        rv = (wanted.get("metadata") or {}).get("resourceVersion")
        current["spec"]["replicas"] = replicas
        updated = self.store.update(res, current, expect_rv=rv if request.method == "PUT" else None)
        self.cluster.kick()
        return json_response(self._scale_doc(updated))

    def _check_create(self, res: Resource, namespace: str | None, obj: dict) -> dict:
        if not isinstance(obj, dict):
            raise status.bad_request("the object provided is unrecognized")
        meta = obj.setdefault("metadata", {})
        if res.namespaced:
            if meta.get("namespace") and namespace and meta["namespace"] != namespace:
                raise status.bad_request("the namespace of the provided object does not match the namespace sent on the request")
            meta["namespace"] = namespace or meta.get("namespace") or "default"
            if self.store.find(resources.find("", "v1", "namespaces"), "", meta["namespace"]) is None:
                raise status.not_found("namespaces", "", meta["namespace"])
        name = meta.get("name") or ""
        if not name and not meta.get("generateName"):
            raise status.invalid(res.kind, res.group, "", [("FieldValueRequired", "metadata.name",
                                                              "Required value: name or generateName is required")])
        if name and (len(name) > 253 or not NAME_RE.match(name)):
            raise status.invalid(res.kind, res.group, name, [(
                "FieldValueInvalid", "metadata.name",
                f"Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case "
                "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character "
                "(e.g. 'example.com', regex used for validation is "
                "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")])
        return obj

    def create(self, request: web.Request, res: Resource, namespace: str | None) -> web.Response:
        obj = self._check_create(res, namespace, self._body(request))
        obj = self.cluster.admit(res, obj, old=None)
        if request.query.get("dryRun"):
            return json_response(obj, 201)
        created = self.store.create(res, obj)
        self.cluster.kick()
        return json_response(created, 201)

    def update(self, request: web.Request, res: Resource, namespace: str | None, name: str, sub: str | None) -> web.Response:
        obj = self._body(request)
        meta = obj.setdefault("metadata", {})
        if meta.get("name") and meta["name"] != name:
            raise status.bad_request("the name of the object (%s) does not match the name on the URL (%s)" % (meta["name"], name))
        meta["name"] = name
        if res.namespaced:
            meta["namespace"] = namespace
        current = self.store.get(res, namespace or "", name)
        rv = meta.get("resourceVersion")
        merged = self._split_status(res, current, obj, sub)
        merged = self.cluster.admit(res, merged, old=current)
        if request.query.get("dryRun"):  # validated and admitted, never stored
            return json_response(merged)
        updated = self.cluster.finish_update(res, self.store.update(res, merged, expect_rv=rv))
        self.cluster.kick()
        return json_response(updated)

    @staticmethod
    def _split_status(res: Resource, current: dict, new: dict, sub: str | None) -> dict:
        """The status subresource writes only status; the object itself never writes status."""
        if not res.has_status:
            return new
        if sub == "status":
            merged = dict(current)
            merged["status"] = new.get("status", {})
            merged["metadata"] = {**current["metadata"], "resourceVersion": new["metadata"].get("resourceVersion")}
            if not merged["metadata"]["resourceVersion"]:
                merged["metadata"].pop("resourceVersion")
            return merged
        merged = dict(new)
        if "status" in current:
            merged["status"] = current["status"]
        else:
            merged.pop("status", None)
        return merged

    def patch(self, request: web.Request, res: Resource, namespace: str | None, name: str, sub: str | None) -> web.Response:
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
        current = self.store.get(res, namespace or "", name)
        body = self._body(request)
        if ctype == "application/strategic-merge-patch+json":
            patched = strategic_merge_patch(current, body)
        elif ctype == "application/merge-patch+json":
            patched = merge_patch(current, body)
        elif ctype == "application/json-patch+json":
            patched = json_patch(current, body)
        else:
            raise status.ApiError(415, "UnsupportedMediaType",
                                  "the body of the request was in an unknown format - accepted media types include: "
                                  "application/json-patch+json, application/merge-patch+json, "
                                  "application/apply-patch+yaml, application/strategic-merge-patch+json")
        if not isinstance(patched, dict):
            raise status.bad_request("the patch did not produce an object")
        meta = patched.setdefault("metadata", {})
        if meta.get("name") != name:
            raise status.bad_request("metadata.name: the name of the object may not be changed by a patch")
        expect = meta.get("resourceVersion")
        if expect == current["metadata"]["resourceVersion"]:
            expect = None
        elif expect:
            raise status.conflict(res.plural, res.group, name)
        merged = self._split_status(res, current, patched, sub)
        merged = self.cluster.admit(res, merged, old=current)
        if request.query.get("dryRun"):
            return json_response(merged)
        updated = self.cluster.finish_update(
            res, self.store.update(res, merged, expect_rv=current["metadata"]["resourceVersion"]))
        self.cluster.kick()
        return json_response(updated)

    async def delete(self, request: web.Request, res: Resource, namespace: str | None, name: str) -> web.Response:
        body = self._body(request)
        grace = request.query.get("gracePeriodSeconds")
        if grace is None and body.get("gracePeriodSeconds") is not None:
            grace = body["gracePeriodSeconds"]
        precondition = (body.get("preconditions") or {})
        current = self.store.get(res, namespace or "", name)
        if precondition.get("uid") and precondition["uid"] != current["metadata"]["uid"]:
            raise status.ApiError(409, "Conflict",
                                  f'Operation cannot be fulfilled on {status.qualified(res.plural, res.group)} "{name}": '
                                  f'Precondition failed: UID in precondition: {precondition["uid"]}, '
                                  f'UID in object meta: {current["metadata"]["uid"]}',
                                  {"name": name, **({"group": res.group} if res.group else {}), "kind": res.plural})
        if precondition.get("resourceVersion") and precondition["resourceVersion"] != current["metadata"]["resourceVersion"]:
            raise status.conflict(res.plural, res.group, name)
        if request.query.get("dryRun") or body.get("dryRun"):
            return json_response(current)
        out = self.cluster.delete(res, namespace or "", name, grace=None if grace is None else int(grace),
                                  propagation=body.get("propagationPolicy") or request.query.get("propagationPolicy"))
        self.cluster.kick()
        return json_response(out)

    def delete_collection(self, request: web.Request, res: Resource, namespace: str | None) -> web.Response:
        grace = request.query.get("gracePeriodSeconds")
        items = self._selected(request, res, namespace)
        for obj in items:
            self.cluster.delete(res, obj["metadata"].get("namespace", ""), obj["metadata"]["name"],
                                grace=None if grace is None else int(grace), propagation=None)
        self.cluster.kick()
        for obj in items:
            obj.pop("kind", None)
            obj.pop("apiVersion", None)
        return json_response({"kind": f"{res.kind}List", "apiVersion": res.api_version,
                              "metadata": {"resourceVersion": str(self.store.rv)}, "items": items})
