"""Just enough of Kubernetes' protobuf encoding to read what `kubectl create namespace |
configmap | secret | serviceaccount` and `kubectl auth can-i` send (kubectl's typed clients write built-in kinds as
`application/vnd.kubernetes.protobuf`). Any other kind answers 415, as a server that does not
decode it would.

Envelope: the bytes `k8s\\0`, then a runtime.Unknown message {1 typeMeta {1 apiVersion, 2 kind},
2 raw (the object's own message), 3 contentEncoding, 4 contentType}. Field numbers below are
those of k8s.io/api and apimachinery's generated.proto.
"""
from __future__ import annotations

import base64

MAGIC = b"k8s\x00"


class Unsupported(ValueError):
    pass


def _varint(data: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(data):
            raise Unsupported("truncated varint")
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def fields(data: bytes) -> list[tuple[int, object]]:
    """(field number, value) pairs: int for varints, bytes for length-delimited fields."""
    out: list[tuple[int, object]] = []
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 2:
            size, i = _varint(data, i)
            value, i = data[i:i + size], i + size
        elif wire == 1:
            value, i = data[i:i + 8], i + 8
        elif wire == 5:
            value, i = data[i:i + 4], i + 4
        else:
            raise Unsupported(f"wire type {wire}")
        out.append((number, value))
    return out


def _str(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _map(entries: list[bytes], *, binary: bool = False) -> dict:
    result = {}
    for entry in entries:
        kv = dict(fields(entry))
        value = kv.get(2, b"")
        result[_str(kv.get(1, b""))] = base64.b64encode(value).decode() if binary else _str(value)
    return result


def _object_meta(data: bytes) -> dict:
    meta: dict = {}
    labels, annotations, finalizers = [], [], []
    for number, value in fields(data):
        if number in (1, 2, 3) and value:
            meta[{1: "name", 2: "generateName", 3: "namespace"}[number]] = _str(value)
        elif number == 11:
            labels.append(value)
        elif number == 12:
            annotations.append(value)
        elif number == 14:
            finalizers.append(_str(value))
    if labels:
        meta["labels"] = _map(labels)
    if annotations:
        meta["annotations"] = _map(annotations)
    if finalizers:
        meta["finalizers"] = finalizers
    return meta


def decode(body: bytes) -> dict:
    """The JSON form of a protobuf-encoded Namespace, ConfigMap, Secret or ServiceAccount."""
    if not body.startswith(MAGIC):
        raise Unsupported("not a Kubernetes protobuf envelope")
    envelope = dict(fields(body[len(MAGIC):]))
    type_meta = dict(fields(envelope.get(1, b"")))
    api_version, kind = _str(type_meta.get(1, b"")), _str(type_meta.get(2, b""))
    if (api_version, kind) == ("authorization.k8s.io/v1", "SelfSubjectAccessReview"):
        return _self_subject_access_review(envelope.get(2, b""))  # `kubectl auth can-i`
    if api_version != "v1" or kind not in ("Namespace", "ConfigMap", "Secret", "ServiceAccount"):
        raise Unsupported(f"{api_version} {kind}")
    obj: dict = {"apiVersion": api_version, "kind": kind, "metadata": {}}
    grouped: dict[int, list] = {}
    for number, value in fields(envelope.get(2, b"")):
        grouped.setdefault(number, []).append(value)
    if 1 in grouped:
        obj["metadata"] = _object_meta(grouped[1][0])
    if kind == "Namespace" and 2 in grouped:
        finalizers = [_str(v) for n, v in fields(grouped[2][0]) if n == 1]
        if finalizers:
            obj["spec"] = {"finalizers": finalizers}
    elif kind == "ConfigMap":
        if 2 in grouped:
            obj["data"] = _map(grouped[2])
        if 3 in grouped:
            obj["binaryData"] = _map(grouped[3], binary=True)
        if 4 in grouped:
            obj["immutable"] = bool(grouped[4][0])
    elif kind == "Secret":
        if 2 in grouped:
            obj["data"] = _map(grouped[2], binary=True)
        if 3 in grouped:
            obj["type"] = _str(grouped[3][0])
        if 4 in grouped:
            obj["stringData"] = _map(grouped[4])
    return obj


# k8s.io/api/authorization/v1 generated.proto: SelfSubjectAccessReview {1 metadata, 2 spec};
# its spec {1 resourceAttributes, 2 nonResourceAttributes}; ResourceAttributes {1 namespace,
# 2 verb, 3 group, 4 version, 5 resource, 6 subresource, 7 name}; NonResourceAttributes {1 path, 2 verb}.
_RESOURCE_ATTRIBUTES = {1: "namespace", 2: "verb", 3: "group", 4: "version", 5: "resource", 6: "subresource",
                        7: "name"}
_NON_RESOURCE_ATTRIBUTES = {1: "path", 2: "verb"}


def _self_subject_access_review(data: bytes) -> dict:
    spec: dict = {}
    for number, value in fields(data):
        if number != 2 or not isinstance(value, bytes):
            continue
        for part, attrs in fields(value):
            names = {1: _RESOURCE_ATTRIBUTES, 2: _NON_RESOURCE_ATTRIBUTES}.get(part)
            if names is None or not isinstance(attrs, bytes):
                continue
            spec["resourceAttributes" if part == 1 else "nonResourceAttributes"] = {
                names[n]: _str(v) for n, v in fields(attrs) if n in names and v}
    return {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "metadata": {},
            "spec": spec}
