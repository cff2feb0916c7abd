"""parse_etcd_endpoint_health on what the lab's etcdctl 3.4.23 printed (captured on node1 with
Kubespray's /etc/etcd.env sourced), and the quorum arithmetic."""
from __future__ import annotations

import pytest

from nodegate.core.parsing import parse_etcd_endpoint_health

HEALTHY = ('[{"endpoint":"http://127.21.1.1:2379","health":true,"took":"3.991537ms"},'
           '{"endpoint":"http://127.21.1.3:2379","health":true,"took":"15.106093ms"},'
           '{"endpoint":"http://127.21.1.2:2379","health":true,"took":"7.749878ms"}]\n')
NODE3_DOWN = ('[{"endpoint":"http://127.21.1.2:2379","health":true,"took":"3.336986ms"},'
              '{"endpoint":"http://127.21.1.1:2379","health":true,"took":"10.857575ms"},'
              '{"endpoint":"http://127.21.1.3:2379","health":false,"took":"2.001152563s",'
              '"error":"context deadline exceeded"}]\n')
NODE3_DOWN_STDERR = ('{"level":"warn","ts":"2026-11-29T19:00:28.530Z","caller":"clientv3/retry_interceptor.go:62",'
                     '"msg":"retrying of unary invoker failed","target":"endpoint://client-5c49/127.21.1.3:2379",'
                     '"attempt":0,"error":"rpc error: code = DeadlineExceeded desc = latest balancer error: all '
                     'SubConns are in TransientFailure"}\nError: unhealthy cluster\n')


def test_healthy_cluster():
    health = parse_etcd_endpoint_health(HEALTHY, 0, "")
    assert [e.endpoint for e in health.endpoints] == [f"http://127.21.1.{i}:2379" for i in (1, 2, 3)]
    assert health.read and not health.unhealthy and health.message == ""
    assert health.majority == 2
    assert health.healthy_without("127.21.1.1") == 2 and health.survives_losing("127.21.1.1")


def test_one_member_down():
    health = parse_etcd_endpoint_health(NODE3_DOWN, 1, NODE3_DOWN_STDERR)
    assert [(e.host, e.error) for e in health.unhealthy] == [("127.21.1.3", "context deadline exceeded")]
    assert health.message == "Error: unhealthy cluster"
    # losing node1's member leaves node2 alone: 1 < 2
    assert health.healthy_without("127.21.1.1") == 1 and not health.survives_losing("127.21.1.1")
    # the down member's own node going changes nothing: node1 and node2 stay
    assert health.survives_losing("127.21.1.3")
    # an address no endpoint uses: a healthy member is assumed to go (cautious)
    assert health.healthy_without("10.0.0.9") == 1


def test_five_members_survive_one_loss_with_one_down():
    members = ",".join(f'{{"endpoint":"https://10.0.0.{i}:2379","health":{"false" if i == 5 else "true"}}}'
                       for i in range(1, 6))
    health = parse_etcd_endpoint_health(f"[{members}]", 1)
    assert health.majority == 3 and health.survives_losing("10.0.0.1")


def test_ipv6_endpoint_host():
    health = parse_etcd_endpoint_health('[{"endpoint":"https://[fd00::1]:2379","health":true}]')
    assert health.endpoints[0].host == "fd00::1"


@pytest.mark.parametrize("text, rc, stderr", [
    ("", 1, "Error: open /etc/ssl/etcd/ssl/admin.pem: no such file or directory\n"),
    ("<html>", 0, ""), ("null", 0, ""), ('{"endpoint": 3}', 0, ""), ('[1, null, {"health": "true"}]', 0, ""),
    ('[{"endpoint":"http://a:2379","health":"true"}]', 0, ""),
])
def test_total_on_junk(text, rc, stderr):
    health = parse_etcd_endpoint_health(text, rc, stderr)
    # junk is never read as healthy
    assert not health.read or health.unhealthy
    assert health.read or health.message
    assert not health.survives_losing("a")


def test_error_line_is_the_message():
    health = parse_etcd_endpoint_health("", 1, "Error: open /etc/ssl/etcd/ssl/admin.pem: no such file\n")
    assert health.message == "Error: open /etc/ssl/etcd/ssl/admin.pem: no such file"
