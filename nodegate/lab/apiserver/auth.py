"""Who is asking, and may they: the lab API server's authentication and RBAC-like authorization.

Authentication, as kube-apiserver does it: a client certificate verified against the cluster
CA (user = CN, groups = O), or a bearer token from a static token table; a token that is not in
the table is 401. Authorization: members of `system:masters` may do everything (as that group's
cluster-admin binding gives); any other user gets the rules of its role below, and every
authenticated user may create SelfSubjectAccessReviews (Kubernetes' `system:basic-user`).

Verbs follow Kubernetes' request-info rules: GET of a collection is `list` (`watch` with
?watch=true), of an object `get`; POST `create`, PUT `update`, PATCH `patch`, DELETE `delete`
(`deletecollection` on a collection). pods/exec is authorized as `create` (kube-apiserver 1.30+
checks `create` for the websocket exec as well).
"""
from __future__ import annotations

from dataclasses import dataclass

from nodegate.lab.apiserver import status
from nodegate.lab.pki import ADMIN_GROUP, RESTRICTED_USER

READ = ("get", "list", "watch")


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ()

    @property
    def admin(self) -> bool:
        return ADMIN_GROUP in self.groups


@dataclass(frozen=True)
class Rule:
    groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]

    def allows(self, verb: str, group: str, resource: str) -> bool:
        return ((group in self.groups or "*" in self.groups)
                and (resource in self.resources or "*" in self.resources)
                and (verb in self.verbs or "*" in self.verbs))


# What an operator's read-mostly role often looks like: it can look at everything and cordon a
# node, but it cannot evict, exec into pods or take a lock. nodegate's preflight must find each
# of these before any change (not halfway through a drain).
RESTRICTED_RULES = (
    Rule(("",), ("nodes",), (*READ, "patch", "update")),
    Rule(("",), ("pods", "pods/log", "namespaces", "events", "services", "endpoints", "configmaps",
                 "serviceaccounts"), READ),
    Rule(("apps",), ("*",), READ),
    Rule(("policy",), ("poddisruptionbudgets",), READ),
    Rule(("coordination.k8s.io",), ("leases",), READ),
)
ROLES = {RESTRICTED_USER: RESTRICTED_RULES}
BASIC_USER = (Rule(("authorization.k8s.io",), ("selfsubjectaccessreviews", "selfsubjectrulesreviews"), ("create",)),)


def user_from_peercert(peercert: dict | None) -> User | None:
    """The user of a verified client certificate (ssl's getpeercert() dict), or None."""
    if not peercert:
        return None
    cn = None
    orgs: list[str] = []
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                cn = value
            elif key == "organizationName":
                orgs.append(value)
    return User(cn, tuple(orgs)) if cn else None


def allowed(user: User, verb: str, group: str, resource: str) -> bool:
    """resource is `plural` or `plural/subresource`."""
    if user.admin:
        return True
    rules = BASIC_USER + ROLES.get(user.name, ())
    return any(rule.allows(verb, group, resource) for rule in rules)


def request_verb(method: str, *, collection: bool, watch: bool, subresource: str | None) -> str:
    if subresource == "exec":
        return "create"
    if method in ("GET", "HEAD"):
        if collection:
            return "watch" if watch else "list"
        return "get"
    return {"POST": "create", "PUT": "update", "PATCH": "patch",
            "DELETE": "deletecollection" if collection else "delete"}.get(method, method.lower())


def forbidden(user: User, verb: str, group: str, resource: str, plural: str, name: str | None,
              namespace: str | None) -> status.ApiError:
    """kube-apiserver's 403 body (its wording, reason and details)."""
    subject = f'{plural} "{name}" is forbidden' if name else f"{plural} is forbidden"
    if group:
        subject = (f'{plural}.{group} "{name}" is forbidden' if name else f"{plural}.{group} is forbidden")
    where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
    message = (f'{subject}: User "{user.name}" cannot {verb} resource "{resource}" in API group "{group}"'
               f"{where}")
    details = {"kind": plural}
    if name:
        details["name"] = name
    if group:
        details["group"] = group
    return status.ApiError(403, "Forbidden", message, details)


def self_subject_access_review(user: User, body: dict) -> dict:
    """The answer to POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews."""
    spec = body.get("spec") or {}
    attrs = spec.get("resourceAttributes")
    if not isinstance(attrs, dict):
        if spec.get("nonResourceAttributes"):
            ok = True  # discovery paths: every authenticated user (system:discovery)
            reason = "non-resource URLs are readable by every authenticated user"
        else:
            raise status.ApiError(422, "Invalid", "SelfSubjectAccessReview.authorization.k8s.io is invalid: "
                                  "spec: Invalid value: exactly one of nonResourceAttributes or "
                                  "resourceAttributes must be specified")
    else:
        resource = str(attrs.get("resource") or "")
        if attrs.get("subresource"):
            resource = f"{resource}/{attrs['subresource']}"
        ok = allowed(user, str(attrs.get("verb") or ""), str(attrs.get("group") or ""), resource)
        if ok and user.admin:
            reason = f'allowed by the group "{ADMIN_GROUP}"'
        elif ok:
            reason = f'allowed by the role of user "{user.name}"'
        else:
            reason = ""
    out = {"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
           "metadata": {"creationTimestamp": None}, "spec": spec,
           "status": {"allowed": ok}}
    if reason:
        out["status"]["reason"] = reason
    return out
