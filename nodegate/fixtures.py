"""Fixtures that give checks and procedures their node, host, kube and ceph (filled in by the checks work)."""
