"""The three patch types the API accepts: strategic merge, JSON merge (RFC 7386) and JSON
patch (RFC 6902). Strategic merge knows the merge keys of the lists this server's objects
carry, as the real types' `patchMergeKey` tags do."""
from __future__ import annotations

import copy

from nodegate.lab.apiserver import status

# list field name -> merge key (from the Kubernetes API types' patchMergeKey tags)
MERGE_KEYS = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name",
    "volumes": "name", "env": "name", "volumeMounts": "mountPath", "ports": "containerPort",
    "imagePullSecrets": "name", "ownerReferences": "uid", "conditions": "type",
    "addresses": "type", "hostAliases": "ip", "topologySpreadConstraints": "topologyKey",
    "containerStatuses": "name", "initContainerStatuses": "name", "volumeDevices": "devicePath",
}
# lists of scalars merged as sets (patchStrategy:"merge" on primitive lists)
MERGED_SCALAR_LISTS = {"finalizers"}


def merge_patch(target: object, patch: object) -> object:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: object, patch: object, field: str = "") -> object:
    if isinstance(patch, dict):
        if patch.get("$patch") == "replace":
            return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
        if patch.get("$patch") == "delete":
            return None
        result = copy.deepcopy(target) if isinstance(target, dict) else {}
        for key, value in patch.items():
            if key.startswith("$setElementOrder/") or key.startswith("$deleteFromPrimitiveList/"):
                if key.startswith("$deleteFromPrimitiveList/"):
                    name = key.split("/", 1)[1]
                    result[name] = [v for v in result.get(name, []) if v not in value]
                continue
            if key in ("$retainKeys", "$patch"):
                continue
            if value is None:
                result.pop(key, None)
            else:
                result[key] = strategic_merge_patch(result.get(key), value, key)
        return result
    if isinstance(patch, list):
        if field in MERGE_KEYS and isinstance(target, list):
            return _merge_keyed_list(target, patch, MERGE_KEYS[field])
        if field in MERGED_SCALAR_LISTS and isinstance(target, list):
            return list(dict.fromkeys([*target, *patch]))
        return copy.deepcopy(patch)
    return copy.deepcopy(patch)


def _merge_keyed_list(target: list, patch: list, key: str) -> list:
    result = copy.deepcopy(target)
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            if isinstance(item, dict) and item.get("$patch") == "replace":
                return [i for i in patch if not (isinstance(i, dict) and "$patch" in i)]
            continue
        index = next((i for i, old in enumerate(result) if old.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if index is not None:
                result.pop(index)
        elif index is None:
            result.append(strategic_merge_patch({}, item))
        else:
            result[index] = strategic_merge_patch(result[index], item)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise status.ApiError(422, "Invalid", "the server rejected our request due to an error in our request")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: object, parts: list[str]) -> object:
    for part in parts:
        if isinstance(doc, list):
            doc = doc[int(part)]
        elif isinstance(doc, dict):
            doc = doc[part]
        else:
            raise KeyError(part)
    return doc


def json_patch(target: object, operations: list) -> object:
    """RFC 6902; a failed `test` or a missing path is the real API's 422."""
    doc = copy.deepcopy(target)
    if not isinstance(operations, list):
        raise status.bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    for op in operations:
        try:
            doc = _apply_op(doc, op)
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise status.ApiError(422, "Invalid", f"the server rejected our request due to an error in our request: {exc}") from exc
    return doc


def _apply_op(doc: object, op: dict) -> object:
    kind = op.get("op")
    parts = _pointer(op.get("path", ""))
    if kind == "test":
        if _walk(doc, parts) != op.get("value"):
            raise ValueError(f"testing value {op.get('path')} failed")
        return doc
    if kind in ("move", "copy"):
        src = _pointer(op["from"])
        value = copy.deepcopy(_walk(doc, src))
        if kind == "move":
            doc = _remove(doc, src)
        return _add(doc, parts, value)
    if kind == "add":
        return _add(doc, parts, copy.deepcopy(op["value"]))
    if kind == "remove":
        return _remove(doc, parts)
    if kind == "replace":
        _walk(doc, parts)  # must exist
        doc = _remove(doc, parts)
        return _add(doc, parts, copy.deepcopy(op["value"]))
    raise ValueError(f"Unexpected kind: {kind}")


def _add(doc: object, parts: list[str], value: object) -> object:
    if not parts:
        return value
    parent = _walk(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if index > len(parent):
            raise IndexError(f"add operation does not apply: index {index} out of range")
        parent.insert(index, value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise KeyError(last)
    return doc


def _remove(doc: object, parts: list[str]) -> object:
    parent = _walk(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, list):
        parent.pop(int(last))
    else:
        del parent[last]
    return doc
