"""The lab API server's authorization rules and SelfSubjectAccessReview, as pure logic
(kube-apiserver's verbs, its 403 wording, the protobuf body `kubectl auth can-i` sends)."""
from __future__ import annotations

from nodegate.lab.apiserver import auth, protobuf
from nodegate.lab.pki import ADMIN_GROUP, RESTRICTED_USER

ADMIN = auth.User("kubernetes-admin", (ADMIN_GROUP,))
RESTRICTED = auth.User(RESTRICTED_USER)
STRANGER = auth.User("someone")


def test_verbs_follow_request_info():
    assert auth.request_verb("GET", collection=True, watch=False, subresource=None) == "list"
    assert auth.request_verb("GET", collection=True, watch=True, subresource=None) == "watch"
    assert auth.request_verb("GET", collection=False, watch=False, subresource=None) == "get"
    assert auth.request_verb("DELETE", collection=True, watch=False, subresource=None) == "deletecollection"
    assert auth.request_verb("GET", collection=False, watch=False, subresource="exec") == "create"
    assert auth.request_verb("POST", collection=False, watch=False, subresource="eviction") == "create"


def test_restricted_user_lacks_exactly_eviction_exec_and_lease_writes():
    for verb, group, resource in (("create", "", "pods/eviction"), ("create", "", "pods/exec"),
                                  ("create", "coordination.k8s.io", "leases"),
                                  ("update", "coordination.k8s.io", "leases"), ("delete", "", "pods")):
        assert not auth.allowed(RESTRICTED, verb, group, resource), (verb, resource)
        assert auth.allowed(ADMIN, verb, group, resource)
    for verb, group, resource in (("patch", "", "nodes"), ("list", "", "pods"), ("get", "", "pods/log"),
                                  ("list", "policy", "poddisruptionbudgets"), ("get", "coordination.k8s.io", "leases"),
                                  ("create", "authorization.k8s.io", "selfsubjectaccessreviews")):
        assert auth.allowed(RESTRICTED, verb, group, resource), (verb, resource)
    assert not auth.allowed(STRANGER, "list", "", "nodes")
    assert auth.allowed(STRANGER, "create", "authorization.k8s.io", "selfsubjectaccessreviews")


def test_forbidden_has_kube_apiservers_wording():
    err = auth.forbidden(RESTRICTED, "create", "", "pods/eviction", "pods", "web-1", "demo")
    assert err.code == 403 and err.reason == "Forbidden"
    assert err.message == ('pods "web-1" is forbidden: User "nodegate-restricted" cannot create resource '
                           '"pods/eviction" in API group "" in the namespace "demo"')
    err = auth.forbidden(RESTRICTED, "update", "coordination.k8s.io", "leases", "leases", None, None)
    assert err.message.startswith("leases.coordination.k8s.io is forbidden") and "at the cluster scope" in err.message


def _varint(n: int) -> bytes:
    out = b""
    while True:
        byte = n & 0x7F
        n >>= 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def test_ssar_from_protobuf_and_answered_per_user():
    attrs = _field(1, b"rook-ceph") + _field(2, b"create") + _field(5, b"pods") + _field(6, b"exec")
    review = _field(2, _field(1, attrs))
    body = protobuf.MAGIC + _field(1, _field(1, b"authorization.k8s.io/v1") + _field(2, b"SelfSubjectAccessReview")) \
        + _field(2, review)
    decoded = protobuf.decode(body)
    assert decoded["spec"]["resourceAttributes"] == {"namespace": "rook-ceph", "verb": "create", "resource": "pods",
                                                     "subresource": "exec"}
    assert auth.self_subject_access_review(ADMIN, decoded)["status"]["allowed"] is True
    assert auth.self_subject_access_review(RESTRICTED, decoded)["status"] == {"allowed": False}
