"""Label and field selectors, parsed as apimachinery parses them."""
from __future__ import annotations

import re
from typing import Callable

from nodegate.lab.apiserver import status

_REQ = re.compile(r"""^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9._/-]+)\s*
                     (?:(?P<op>==|!=|=|\s+in\s+|\s+notin\s+)\s*(?P<val>\([^)]*\)|[A-Za-z0-9._-]*))?\s*$""", re.X)


def _split_top(text: str) -> list[str]:
    """Split on commas outside parentheses: `a in (x,y),b` has two requirements."""
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p for p in parts if p.strip()]


Matcher = Callable[[dict], bool]


def label_selector(text: str | None) -> Matcher:
    if not text:
        return lambda labels: True
    checks: list[Matcher] = []
    for part in _split_top(text):
        m = _REQ.match(part)
        if not m:
            raise status.bad_request(f"unable to parse requirement: {part.strip()!r}")
        key, op, val, neg = m["key"], (m["op"] or "").strip(), m["val"], m["neg"]
        if neg and op:
            raise status.bad_request(f"unable to parse requirement: {part.strip()!r}")
        if neg:
            checks.append(lambda labels, k=key: k not in labels)
        elif not op:
            checks.append(lambda labels, k=key: k in labels)
        elif op in ("=", "=="):
            checks.append(lambda labels, k=key, v=val: labels.get(k) == v)
        elif op == "!=":
            checks.append(lambda labels, k=key, v=val: labels.get(k) != v)
        else:
            values = {v.strip() for v in val.strip("()").split(",") if v.strip()}
            if op == "in":
                checks.append(lambda labels, k=key, vs=values: labels.get(k) in vs)
            else:
                checks.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)
    return lambda labels: all(check(labels) for check in checks)


def match_label_selector(selector: dict | None, labels: dict) -> bool:
    """A structured LabelSelector (matchLabels + matchExpressions); empty selects everything."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], set(expr.get("values") or [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _field_value(obj: dict, path: str) -> str:
    value: object = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def field_selector(text: str | None, allowed: tuple[str, ...], kind: str) -> Callable[[dict], bool]:
    if not text:
        return lambda obj: True
    checks = []
    for part in _split_top(text):
        m = re.match(r"^\s*([A-Za-z0-9._]+)\s*(==|!=|=)\s*(.*?)\s*$", part)
        if not m:
            raise status.bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        key, op, val = m.groups()
        if key not in allowed:
            raise status.bad_request(f"field label not supported: {key}")
        if op == "!=":
            checks.append(lambda obj, k=key, v=val: _field_value(obj, k) != v)
        else:
            checks.append(lambda obj, k=key, v=val: _field_value(obj, k) == v)
    return lambda obj: all(check(obj) for check in checks)
