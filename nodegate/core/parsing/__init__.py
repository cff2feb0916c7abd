"""Pure parsers for what nodes, apt, Ansible and Ceph print, each returning frozen dataclasses.

Every parser is total: any text (junk, a truncated output, an error page) gives a result,
never an exception, because a check must be able to report "could not read X" instead of
crashing with a traceback. A property test (tests/unit/core/parsing/test_properties.py) holds them to it.
"""
from __future__ import annotations

from nodegate.core.parsing.ansible import FailedTask, RecapLine, failed_tasks, parse_ansible_recap
from nodegate.core.parsing.apt import (
    AptSource,
    AptUpdateReport,
    AptUpgradable,
    DpkgEntry,
    UpgradablePackage,
    parse_apt_mark_showhold,
    parse_apt_update,
    parse_apt_upgradable,
    parse_dpkg_l,
    parse_sources_list,
)
from nodegate.core.parsing.ceph import (
    CephHealth,
    CephStatus,
    HealthCheck,
    OkToStop,
    OsdFlags,
    parse_ceph_health,
    parse_ceph_status,
    parse_ls_tree,
    parse_ok_to_stop,
    parse_osd_dump_flags,
)
from nodegate.core.parsing.etcd import (
    EtcdEndpoint,
    EtcdHealth,
    EtcdMember,
    EtcdMembers,
    EtcdMemberStatus,
    EtcdStatus,
    parse_etcd_endpoint_health,
    parse_etcd_endpoint_status,
    parse_etcd_member_list,
)
from nodegate.core.parsing.system import OsRelease, parse_os_release, strip_ansi

__all__ = ['strip_ansi', 'OsRelease', 'parse_os_release', 'DpkgEntry', 'parse_dpkg_l', 'parse_apt_mark_showhold', 'AptUpdateReport', 'parse_apt_update', 'UpgradablePackage', 'AptUpgradable', 'parse_apt_upgradable', 'AptSource', 'parse_sources_list', 'RecapLine', 'parse_ansible_recap', 'FailedTask', 'failed_tasks', 'HealthCheck', 'CephHealth', 'parse_ceph_health', 'CephStatus', 'parse_ceph_status', 'OkToStop', 'parse_ok_to_stop', 'OsdFlags', 'parse_osd_dump_flags', 'parse_ls_tree', 'EtcdEndpoint', 'EtcdHealth', 'parse_etcd_endpoint_health', 'EtcdMemberStatus', 'EtcdStatus', 'parse_etcd_endpoint_status', 'EtcdMember', 'EtcdMembers', 'parse_etcd_member_list']
