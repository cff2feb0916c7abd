"""Property-based tests (Hypothesis) of everything nodegate parses.

Two kinds of property:
- totality: any text (junk, a truncated output, an error page, hostile YAML) gives a result or
  the one documented error type (parsing.* never raise; inventory/profile readers raise only
  UsageError), never a traceback;
- round-trips: output generated in the tool's own format parses back to what was generated
  (dpkg -l lines, apt lists, sources, os-release, the Ansible recap and failures, Ceph JSON).
dpkg's version ordering in knowledge.py is held against the real `dpkg --compare-versions`.
Example counts are bounded so the whole file stays well under a minute.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml
from clusterfiles import LAB_HOSTS_YAML, write_cluster
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from nodegate.core import parsing
from nodegate.core.errors import UsageError
from nodegate.core.knowledge import compare_debian_versions
from nodegate.profile.inventory import Inventory, read_inventory
from nodegate.profile.load import load_profile

DATA = Path(__file__).parent / "data"
FAST = settings(max_examples=100, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SLOW = settings(max_examples=50, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# ------------------------------------------------------------------------------ building blocks

def samples(*relative: str) -> list[str]:
    return [(DATA / r).read_text() for r in relative]


REAL_OUTPUTS = samples("apt/dpkg-l-debian12.txt", "apt/apt-get-s-dist-upgrade-debian12.txt",
                       "apt/apt-list-upgradable-debian12.txt", "apt/debian12.sources",
                       "ansible/2.19-fatal-downgrade.txt", "ansible/2.19-failed-loop-label.txt",
                       *(f"ceph/{p.name}" for p in sorted((DATA / "ceph").glob("*.json"))))


@st.composite
def mangled(draw, originals=REAL_OUTPUTS) -> str:
    """A real output cut, spliced with junk, or with lines shuffled: what a dropped SSH session,
    an interleaved stderr or a proxy's error page leaves behind."""
    text = draw(st.sampled_from(originals))
    lines = text.splitlines(keepends=True)
    how = draw(st.sampled_from(["cut", "splice", "shuffle", "bytes"]))
    if how == "cut":
        return text[:draw(st.integers(0, len(text)))]
    if how == "splice":
        at = draw(st.integers(0, len(text)))
        return text[:at] + draw(st.text(max_size=40)) + text[at:]
    if how == "shuffle":
        return "".join(draw(st.permutations(lines))) if len(lines) < 60 else "".join(lines[::-1])
    junk = draw(st.binary(max_size=30)).decode("latin-1")
    at = draw(st.integers(0, len(text)))
    return text[:at] + junk + text[at + draw(st.integers(0, 20)):]


any_text = st.one_of(st.text(max_size=300), mangled())

PKG = st.from_regex(r"[a-z0-9][a-z0-9+.\-]{1,20}", fullmatch=True)
ARCH = st.sampled_from(["amd64", "all", "i386", "arm64"])
_UPSTREAM_CHARS = "0123456789abcz.+~"
_REV_CHARS = "0123456789abcz.+~"


@st.composite
def debian_versions(draw) -> str:
    """Valid Debian versions, from a small alphabet so near-equal pairs are common."""
    epoch = draw(st.sampled_from(["", "", "", "1:", "2:", "0:", "10:"]))
    upstream = draw(st.sampled_from("0123456789")) + draw(st.text(_UPSTREAM_CHARS, max_size=8))
    revision = draw(st.one_of(st.just(""), st.text(_REV_CHARS, min_size=1, max_size=6)))
    if revision:
        upstream = upstream + draw(st.sampled_from(["", "-1", "-rc1"])) if draw(st.booleans()) else upstream
        return f"{epoch}{upstream}-{revision}"
    return f"{epoch}{upstream}"


DESCRIPTION = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="\x85"),
                      max_size=40)
LINE_TEXT = st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="\x85\x1c\x1d\x1e")
HOST = st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True)

# ------------------------------------------------------------------------------ totality

TOTAL_TEXT_PARSERS = [parsing.parse_dpkg_l, parsing.parse_apt_mark_showhold, parsing.parse_apt_update,
                      parsing.parse_apt_upgradable, parsing.parse_sources_list, parsing.parse_os_release,
                      parsing.parse_ansible_recap, parsing.failed_tasks, parsing.parse_ceph_health,
                      parsing.parse_ceph_status, parsing.parse_osd_dump_flags, parsing.parse_ls_tree,
                      parsing.parse_etcd_endpoint_health, parsing.strip_ansi]


@pytest.mark.parametrize("parser", TOTAL_TEXT_PARSERS, ids=lambda p: p.__name__)
@FAST
@given(text=any_text)
@example(text="")
@example(text="PLAY RECAP\nnode1 : ok=99999999999999999999999 failed=1\n")
@example(text="Types: deb\nURIs:\nSuites:\n")
@example(text='fatal: [n]: FAILED! => {"results": [{"failed": true, "msg": "x"}, 3]}')
@example(text="[" * 5000 + "]" * 5000)
def test_text_parsers_are_total(parser, text):
    result = parser(text)
    # results are frozen values: printable (a report renders them) and comparable
    assert repr(result) and result == parser(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["health", "status", "checks", "summary", "detail", "message", "severity", "osdmap",
                         "num_osds", "num_up_osds", "num_in_osds", "pgmap", "num_pgs", "pgs_by_state", "state_name",
                         "count", "mgrmap", "available", "monmap", "num_mons", "quorum_names", "ok_to_stop", "osds",
                         "osd", "state", "flags", "flags_set", "crush_node_flags", "bad_become_inactive",
                         "num_ok_pgs", "muted", "OSD_FLAGS", "x"]) | st.text(max_size=5), inner, max_size=6),
    max_leaves=25)


@FAST
@given(value=json_values, rc=st.sampled_from([0, 1, 2, 16, 22, 110]), stderr=st.text(max_size=30))
def test_ceph_parsers_are_total_over_any_json(value, rc, stderr):
    text = json.dumps(value)
    status = parsing.parse_ceph_status(text)
    assert isinstance(status.reasons(), tuple)
    assert status.healthy_in_full == (not status.reasons())
    health = parsing.parse_ceph_health(text)
    assert isinstance(health.noout_hosts, tuple) and isinstance(health.noout_osds, tuple)
    flags = parsing.parse_osd_dump_flags(text)
    assert isinstance(flags.noout_for_host("node1"), bool)
    assert all(isinstance(i, int) for i in parsing.parse_ls_tree(text))
    answer = parsing.parse_ok_to_stop(text, rc, stderr)
    # a non-zero exit code is never read as "ok to stop", whatever stdout says
    assert not (rc != 0 and answer.ok)
    assert answer.ok or answer.reason


@FAST
@given(text=any_text, rc=st.integers(-1, 255), stderr=st.text(max_size=50))
def test_ok_to_stop_is_total_and_never_ok_on_failure(text, rc, stderr):
    answer = parsing.parse_ok_to_stop(text, rc, stderr)
    assert not (rc != 0 and answer.ok)
    assert answer.ok or answer.reason


# ------------------------------------------------------------------------------ dpkg -l

STATUS_WANT = st.sampled_from(list("uihrp"))
STATUS_STATE = st.sampled_from(list("ncHUFWti"))
STATUS_FLAG = st.sampled_from([" ", "R"])

dpkg_rows = st.lists(st.tuples(STATUS_WANT, STATUS_STATE, STATUS_FLAG, PKG, debian_versions(), ARCH, DESCRIPTION,
                               st.booleans()),
                     max_size=12, unique_by=lambda r: r[3])

DPKG_HEADER = """\
Desired=Unknown/Install/Remove/Purge/Hold
| Status=Not/Inst/Conf-files/Unpacked/halF-conf/Half-inst/trig-aWait/Trig-pend
|/ Err?=(none)/Reinst-required (Status,Err: uppercase=bad)
||/ Name           Version      Architecture Description
+++-==============-============-============-=================================
"""


@FAST
@given(rows=dpkg_rows)
def test_dpkg_l_lines_parse_back_to_what_was_generated(rows):
    lines = []
    for want, state, flag, name, version, arch, desc, multiarch in rows:
        shown = f"{name}:{arch}" if multiarch and arch != "all" else name
        lines.append(f"{want}{state}{flag} {shown:<15} {version:<12} {arch:<12} {desc}".rstrip())
    parsed = parsing.parse_dpkg_l(DPKG_HEADER + "\n".join(lines) + "\n")
    assert [(e.name, e.version, e.arch) for e in parsed] == [(r[3], r[4], r[5]) for r in rows]
    for entry, (want, state, flag, *_rest) in zip(parsed, rows):
        assert entry.held == (want == "h")
        assert entry.installed == (state == "i")
        assert entry.flags == ("reinst-required" if flag == "R" else "")


@FAST
@given(rows=dpkg_rows)
def test_dpkg_query_format_parses_back(rows):
    # nodes.Packages reads `dpkg-query -W -f='${db:Status-Abbrev} ${Package} ${Version} ${Architecture}\n'`
    text = "".join(f"{w}{s}{f} {n} {v} {a}\n" for w, s, f, n, v, a, *_ in rows)
    parsed = parsing.parse_dpkg_l(text)
    assert [(e.name, e.version, e.arch, e.held) for e in parsed] == [(r[3], r[4], r[5], r[0] == "h") for r in rows]


@FAST
@given(names=st.lists(st.tuples(PKG, st.sampled_from(["", ":amd64", ":i386"])), max_size=10), junk=st.text(max_size=20))
def test_apt_mark_showhold_round_trip(names, junk):
    text = "".join(f"{n}{a}\n" for n, a in names)
    assert parsing.parse_apt_mark_showhold(text) == tuple(dict.fromkeys(n for n, _ in names))


# ------------------------------------------------------------------------------ apt

URL = st.builds(lambda host, path: f"http://{host}/{path}", st.from_regex(r"127\.[0-9]{1,3}\.2\.1|[a-z]{1,8}\.example",
                                                                           fullmatch=True),
                st.from_regex(r"[a-z0-9/_.-]{0,20}", fullmatch=True))
KEY_ID = st.from_regex(r"[0-9A-F]{16}", fullmatch=True)


@FAST
@given(legacy=st.lists(st.builds(lambda u, s: f"{u}/dists/{s}/InRelease", URL, st.sampled_from(["focal", "jammy"])),
                       max_size=3, unique=True),
       keys=st.lists(KEY_ID, max_size=3, unique=True),
       noise=st.lists(st.sampled_from(["Hit:1 http://127.0.2.1/ubuntu focal InRelease", "Reading package lists...",
                                       "Get:2 http://x focal/main amd64 Packages [12 kB]", "\x1b[33mW: colour\x1b[0m",
                                       "N: Skipping acquire of configured file"]), max_size=5))
def test_apt_update_warnings_round_trip(legacy, keys, noise):
    lines = list(noise)
    lines += [f"W: {u}: Key is stored in legacy trusted.gpg keyring (/etc/apt/trusted.gpg), see the DEPRECATION "
              "section in apt-key(8) for details." for u in legacy]
    lines += [f"W: GPG error: http://x focal InRelease: The following signatures couldn't be verified because the "
              f"public key is not available: NO_PUBKEY {k}" for k in keys]
    report = parsing.parse_apt_update("\n".join(lines) + "\n")
    assert report.legacy_keyring == tuple(legacy)
    assert report.no_pubkey == tuple(keys)
    assert report.clean == (not legacy and not keys and not any("W:" in n for n in noise))


upgradable_rows = st.lists(st.tuples(PKG, st.sampled_from(["focal-updates", "oldstable", "stable"]), debian_versions(),
                                     ARCH, st.one_of(st.none(), debian_versions())),
                           max_size=10, unique_by=lambda r: r[0])


@FAST
@given(rows=upgradable_rows)
def test_apt_list_upgradable_round_trip(rows):
    text = "Listing...\n" + "".join(f"{n}/{s} {new} {a}" + (f" [upgradable from: {old}]" if old else "") + "\n"
                                    for n, s, new, a, old in rows)
    parsed = parsing.parse_apt_upgradable(text)
    assert [(p.name, p.suite, p.new_version, p.arch, p.current_version) for p in parsed.packages] == rows
    assert parsed.upgraded is None


@FAST
@given(rows=upgradable_rows, kept=st.lists(PKG, max_size=8, unique=True),
       counts=st.tuples(*[st.integers(0, 10**6)] * 4))
def test_dist_upgrade_simulation_round_trip(rows, kept, counts):
    kept = [k for k in kept if k not in {r[0] for r in rows}]
    lines = ["Reading package lists...", "Calculating upgrade..."]
    if kept:
        lines.append("The following packages have been kept back:")
        lines += ["  " + " ".join(kept[i:i + 4]) for i in range(0, len(kept), 4)]
    lines.append("{} upgraded, {} newly installed, {} to remove and {} not upgraded.".format(*counts))
    for name, suite, new, arch, old in rows:
        lines.append(f"Inst {name} " + (f"[{old}] " if old else "") + f"({new} Ubuntu:20.04/{suite} [{arch}])")
        lines.append(f"Conf {name} ({new} Ubuntu:20.04/{suite} [{arch}])")
    parsed = parsing.parse_apt_upgradable("\n".join(lines) + "\n")
    assert [(p.name, p.new_version, p.current_version, p.arch) for p in parsed.packages] == \
        [(n, new, old, a) for n, _, new, a, old in rows]
    assert parsed.kept_back == tuple(kept)
    assert (parsed.upgraded, parsed.newly_installed, parsed.to_remove, parsed.not_upgraded) == counts
    assert parsed.names == tuple(dict.fromkeys([r[0] for r in rows] + kept))


# ------------------------------------------------------------------------------ sources

SUITE = st.sampled_from(["focal", "focal-updates", "focal-security", "jammy", "noble-backports", "bookworm/updates"])
COMPONENTS = st.lists(st.sampled_from(["main", "stable", "restricted", "universe", "contrib"]), min_size=1, max_size=3)
OPTIONS = st.dictionaries(st.sampled_from(["signed-by", "arch", "trusted", "lang"]),
                          st.from_regex(r"[A-Za-z0-9/._-]{1,25}", fullmatch=True), max_size=3)


@FAST
@given(entries=st.lists(st.tuples(st.sampled_from(["deb", "deb-src"]), OPTIONS, URL, SUITE, COMPONENTS,
                                  st.sampled_from(["on", "off", "upgrade"])), max_size=6))
def test_one_line_sources_round_trip(entries):
    lines = ["# a comment line that is not an entry", ""]
    for kind, opts, uri, suite, comps, state in entries:
        opt = f"[{' '.join(f'{k}={v}' for k, v in opts.items())}] " if opts else ""
        line = f"{kind} {opt}{uri} {suite} {' '.join(comps)}"
        if state == "off":
            line = "# " + line
        elif state == "upgrade":
            line = f"# {line} # disabled on upgrade to jammy"
        lines.append(line)
    parsed = parsing.parse_sources_list("\n".join(lines) + "\n")
    assert len(parsed) == len(entries)
    for source, (kind, opts, uri, suite, comps, state) in zip(parsed, entries):
        assert source.types == (kind,)
        assert dict(source.options) == opts
        assert (source.uri, source.suite, source.components) == (uri, suite, tuple(comps))
        assert source.enabled == (state == "on")
        assert source.disabled_on_upgrade_to == ("jammy" if state == "upgrade" else None)
        assert source.signed_by == opts.get("signed-by")


@FAST
@given(stanzas=st.lists(st.tuples(st.lists(URL, min_size=1, max_size=2), st.lists(SUITE, min_size=1, max_size=2),
                                  COMPONENTS, st.one_of(st.none(), st.from_regex(r"/etc/apt/keyrings/[a-z]{1,8}\.gpg",
                                                                                  fullmatch=True)),
                                  st.sampled_from([None, "yes", "no"])), min_size=1, max_size=4))
def test_deb822_sources_round_trip(stanzas):
    blocks = []
    for uris, suites, comps, key, enabled in stanzas:
        block = ["Types: deb", f"URIs: {' '.join(uris)}", f"Suites: {' '.join(suites)}",
                 f"Components: {' '.join(comps)}"]
        if key:
            block.append(f"Signed-By: {key}")
        if enabled:
            block.append(f"Enabled: {enabled}")
        blocks.append("\n".join(block))
    parsed = parsing.parse_sources_list("\n\n".join(blocks) + "\n")
    expected = [(u, s, tuple(comps), key, enabled != "no") for uris, suites, comps, key, enabled in stanzas
                for u in uris for s in suites]
    assert [(p.uri, p.suite, p.components, p.signed_by, p.enabled) for p in parsed] == expected


# ------------------------------------------------------------------------------ os-release

OS_VALUE = st.text(LINE_TEXT, min_size=1, max_size=30).filter(lambda v: v.strip() == v)


def _os_quote(value: str, how: str) -> str:
    if how == "double":
        return '"' + "".join("\\" + c if c in '\\"$`' else c for c in value) + '"'
    if how == "single":
        return f"'{value}'"
    return value


@FAST
@given(values=st.fixed_dictionaries({"ID": OS_VALUE, "VERSION_ID": OS_VALUE, "VERSION_CODENAME": OS_VALUE,
                                     "PRETTY_NAME": OS_VALUE}),
       quoting=st.lists(st.sampled_from(["double", "single", "bare"]), min_size=4, max_size=4))
def test_os_release_round_trip(values, quoting):
    for (_key, value), how in zip(values.items(), quoting):
        assume(how != "single" or "'" not in value)
        assume(how != "bare" or (not any(c.isspace() for c in value) and value[0] not in "\"'"))
    text = "# written by a test\n" + "".join(f"{k}={_os_quote(v, how)}\n"
                                             for (k, v), how in zip(values.items(), quoting))
    parsed = parsing.parse_os_release(text)
    assert (parsed.id, parsed.version_id, parsed.version_codename, parsed.pretty_name) == \
        (values["ID"], values["VERSION_ID"], values["VERSION_CODENAME"], values["PRETTY_NAME"])
    assert parsed.label == values["PRETTY_NAME"]


# ------------------------------------------------------------------------------ Ansible

RECAP_KEYS = ("ok", "changed", "unreachable", "failed", "skipped", "rescued", "ignored")
recaps = st.dictionaries(HOST, st.tuples(*[st.integers(0, 999)] * 7), min_size=1, max_size=6)


def _recap_block(recap: dict) -> str:
    return "PLAY RECAP " + "*" * 60 + "\n" + "".join(
        f"{host:<26} : " + "    ".join(f"{k}={v}" for k, v in zip(RECAP_KEYS, counts)) + "   \n"
        for host, counts in recap.items())


@FAST
@given(first=recaps, last=recaps, colour=st.booleans())
def test_ansible_recap_round_trip_last_block_wins(first, last, colour):
    text = "PLAY [all] ****\n\nTASK [x] ****\nok: [a]\n\n" + _recap_block(first) + "\nPLAY [again] ****\n" \
        + _recap_block(last)
    if colour:
        text = "\n".join(f"\x1b[0;33m{line}\x1b[0m" for line in text.splitlines())
    parsed = parsing.parse_ansible_recap(text)
    assert set(parsed) == set(last)
    for host, counts in last.items():
        line = parsed[host]
        assert tuple(getattr(line, k) for k in RECAP_KEYS) == counts
        assert line.succeeded == (counts[3] == 0 and counts[2] == 0)


TASK_NAME = st.text(LINE_TEXT, min_size=1, max_size=30).filter(lambda t: t.strip() == t)
MSG = st.text(LINE_TEXT, min_size=1, max_size=40).filter(
    lambda m: m.strip() == m and m not in ("non-zero return code", "All items completed", "One or more items failed"))


@FAST
@given(tasks=st.lists(st.tuples(TASK_NAME, st.lists(st.tuples(HOST, MSG, st.sampled_from(["fatal", "item", "ignored",
                                                                                          "ok"])),
                                                    max_size=3)), max_size=5))
def test_failed_tasks_round_trip(tasks):
    lines = ["", "PLAY [k8s_cluster] " + "*" * 20]
    expected = []
    for name, results in tasks:
        lines += ["", f"TASK [{name}] " + "*" * 30]
        for host, msg, kind in results:
            payload = json.dumps({"changed": False, "msg": msg})
            if kind == "ok":
                lines.append(f"ok: [{host}]")
            elif kind == "item":
                lines.append(f"failed: [{host}] (item=containerd.io) => {payload}")
                expected.append((host, name, msg))
            else:
                lines.append(f"fatal: [{host}]: FAILED! => {payload}")
                if kind == "ignored":
                    lines.append("...ignoring")
                else:
                    expected.append((host, name, msg))
    lines += ["", _recap_block({"node1": (1, 0, 0, len(expected), 0, 0, 0)})]
    found = parsing.failed_tasks("\n".join(lines))
    assert [(f.host, f.task, f.message) for f in found] == expected


@FAST
@given(msg=MSG, stderr=MSG)
def test_failed_task_message_uses_stderr_when_msg_is_generic(msg, stderr):
    payload = json.dumps({"msg": "non-zero return code", "stderr": stderr, "rc": 100})
    found = parsing.failed_tasks(f"TASK [t] ***\nfatal: [node4]: FAILED! => {payload}\n")
    assert [f.message for f in found] == [f"non-zero return code: {stderr}"]


# ------------------------------------------------------------------------------ Ceph JSON

@FAST
@given(health=st.sampled_from(["HEALTH_OK", "HEALTH_WARN", "HEALTH_ERR"]), mgr=st.booleans(),
       osds=st.integers(0, 50), down=st.integers(0, 50), out=st.integers(0, 50),
       pgs=st.dictionaries(st.sampled_from(["active+clean", "active+undersized+degraded", "peering",
                                            "clean+active", "active+clean+scrubbing"]),
                           st.integers(1, 500), max_size=4),
       nested=st.booleans(), checks=st.lists(st.sampled_from(["OSD_DOWN", "OSD_FLAGS", "PG_DEGRADED"]), unique=True))
def test_ceph_status_round_trip(health, mgr, osds, down, out, pgs, nested, checks):
    down, out = min(down, osds), min(out, osds)
    osdmap = {"epoch": 9, "num_osds": osds, "num_up_osds": osds - down, "num_in_osds": osds - out}
    doc = {"fsid": "x", "health": {"status": health, "checks": {c: {"severity": "HEALTH_WARN",
                                                                    "summary": {"message": f"{c} says", "count": 1},
                                                                    "muted": False} for c in checks},
                                   "mutes": []},
           "quorum_names": ["a"], "monmap": {"num_mons": 1},
           "osdmap": {"osdmap": osdmap} if nested else osdmap,
           "pgmap": {"num_pgs": sum(pgs.values()),
                     "pgs_by_state": [{"state_name": s, "count": n} for s, n in pgs.items()]},
           "mgrmap": {"available": mgr}}
    status = parsing.parse_ceph_status(json.dumps(doc))
    assert (status.health, status.mgr_available, status.num_osds, status.num_up, status.num_in) == \
        (health, mgr, osds, osds - down, osds - out)
    clean = sum(n for s, n in pgs.items() if set(s.split("+")) == {"active", "clean"})
    assert status.pgs_active_clean == clean and status.pgs_total == sum(pgs.values())
    assert set(status.checks) == set(checks)
    healthy = health == "HEALTH_OK" and mgr and osds > 0 and not down and not out and clean == sum(pgs.values())
    assert status.healthy_in_full == healthy


@FAST
@given(hosts=st.dictionaries(HOST, st.sets(st.sampled_from(["noout", "noin", "nodown"]), min_size=1), max_size=4),
       global_flags=st.sets(st.sampled_from(["noout", "sortbitwise", "pauserd"])))
def test_osd_dump_noout_round_trip(hosts, global_flags):
    doc = {"flags": ",".join(sorted(global_flags)), "crush_node_flags": {h: sorted(f) for h, f in hosts.items()},
           "osds": [{"osd": 0, "state": ["exists", "up", "noout"]}]}
    flags = parsing.parse_osd_dump_flags(json.dumps(doc))
    for host, own in hosts.items():
        assert flags.noout_for_host(host) == ("noout" in own or "noout" in global_flags)
    assert flags.noout_for_host("not-a-host") == ("noout" in global_flags)
    assert flags.osd_flags == {0: frozenset({"noout"})}


@FAST
@given(ids=st.lists(st.integers(0, 10**6), max_size=8))
def test_ls_tree_round_trip(ids):
    assert parsing.parse_ls_tree(json.dumps(ids)) == tuple(ids)


# ------------------------------------------------------------------------------ dpkg version order

@pytest.fixture(scope="module")
def dpkg_compare():
    if shutil.which("dpkg") is None:   # `make setup` targets Debian/Ubuntu hosts, which always have dpkg
        pytest.fail("dpkg is not on this host's PATH; nodegate's version ordering is checked against it")

    def compare(pairs: list[tuple[str, str]]) -> list[int]:
        # One shell for all pairs of an example: the versions are arguments, never parts of the script.
        script = ('while [ "$#" -gt 0 ]; do if dpkg --compare-versions "$1" lt "$2"; then echo -1; '
                  'elif dpkg --compare-versions "$1" eq "$2"; then echo 0; else echo 1; fi; shift 2; done')
        argv = [v for pair in pairs for v in pair]
        out = subprocess.run(["sh", "-c", script, "sh", *argv], capture_output=True, text=True, check=True,
                             timeout=60)
        assert "warning" not in out.stderr, out.stderr   # the generator makes valid versions only
        return [int(x) for x in out.stdout.split()]
    return compare


@settings(max_examples=120, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(versions=st.lists(debian_versions(), min_size=2, max_size=6))
@example(versions=["1.0~rc1", "1.0", "1.0-0", "1.0+b1", "1:0.9", "0:1.0", "1.0~", "1.0~~"])
@example(versions=["5:20.10.20~3-0~ubuntu-focal", "5:20.10.20~3-0~ubuntu-jammy", "1.6.4-1", "1.6.20-1"])
def test_dpkg_version_order_matches_dpkg(dpkg_compare, versions):
    pairs = [(a, b) for i, a in enumerate(versions) for b in versions[i + 1:]]
    pairs += [(v, v) for v in versions[:1]]
    ours = [compare_debian_versions(a, b) for a, b in pairs]
    assert ours == dpkg_compare(pairs), list(zip(pairs, ours))


@FAST
@given(a=debian_versions(), b=debian_versions(), c=debian_versions())
def test_dpkg_version_order_is_a_total_order(a, b, c):
    assert compare_debian_versions(a, a) == 0
    assert compare_debian_versions(a, b) == -compare_debian_versions(b, a)
    if compare_debian_versions(a, b) <= 0 and compare_debian_versions(b, c) <= 0:
        assert compare_debian_versions(a, c) <= 0


# ------------------------------------------------------------------------------ inventory and profile

def _read(text: str, suffix: str) -> Inventory | None:
    """read_inventory on `text`; None when it raised the documented UsageError."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"inventory{suffix}"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            inventory = read_inventory(path)
        except UsageError as exc:
            assert exc.fix, f"the UsageError names no fix: {exc}"
            assert "Traceback" not in str(exc)
            return None
    # every reader of the result works on whatever was accepted
    for host in inventory.host_vars:
        inventory.vars_for(host)
        inventory.groups_of(host)
    for group in inventory.group_hosts:
        inventory.members(group)
    return inventory


yaml_nodes = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["all", "hosts", "children", "vars", "kube_node", "kube_control_plane", "etcd", "node1",
                         "ansible_host", "ansible_port", "ansible_password", "x"]) | st.text(max_size=4),
        inner, max_size=4),
    max_leaves=20)


@SLOW
@given(text=any_text, suffix=st.sampled_from([".yaml", ".ini", ""]))
@example(text="a: &x\n  children:\n    b:\n      children:\n        a: *x\n", suffix=".yaml")
@example(text="all: &x\n  children:\n    g: *x\n", suffix=".yaml")
@example(text="[a:children]\nb\n[b:children]\na\n[a]\nh ansible_host=1.2.3.4\n", suffix=".ini")
@example(text="[all]\nnode[9:1]\n", suffix=".ini")
@example(text="[all]\nnode[0:99999999]\n", suffix=".ini")
@example(text="[" * 3000, suffix=".yaml")
def test_inventory_reader_raises_only_usage_errors_on_text(text, suffix):
    _read(text, suffix)


@SLOW
@given(data=yaml_nodes)
def test_inventory_reader_raises_only_usage_errors_on_any_yaml(data):
    _read(yaml.safe_dump(data), ".yaml")


groups = st.dictionaries(st.sampled_from(["kube_control_plane", "kube_node", "etcd", "calico_rr", "extra"]),
                         st.lists(HOST, max_size=4, unique=True), min_size=1, max_size=5)
secret = st.from_regex(r"S3cr3t-[A-Za-z0-9]{8,16}", fullmatch=True)


@SLOW
@given(groups=groups, addresses=st.dictionaries(HOST, st.ip_addresses(v=4).map(str), max_size=8), password=secret,
       form=st.sampled_from(["yaml", "ini"]))
def test_inventory_round_trip_and_secrets_are_dropped(groups, addresses, password, form):
    hosts = list(dict.fromkeys(h for members in groups.values() for h in members))
    if form == "yaml":
        doc = {"all": {"hosts": {h: {"ansible_host": addresses.get(h, "10.0.0.1"), "ansible_password": password}
                                 for h in hosts},
                       "vars": {"ansible_become_password": password},
                       "children": {g: {"hosts": {h: None for h in members}} for g, members in groups.items()}}}
        text = yaml.safe_dump(doc, sort_keys=False)
    else:
        text = "[all]\n" + "".join(f"{h} ansible_host={addresses.get(h, '10.0.0.1')} ansible_password={password}\n"
                                   for h in hosts)
        text += f"[all:vars]\nansible_become_password={password}\n"
        text += "".join(f"[{g}]\n" + "".join(f"{h}\n" for h in members) for g, members in groups.items())
    inventory = _read(text, ".yaml" if form == "yaml" else ".ini")
    assert inventory is not None
    assert list(inventory.host_vars) == hosts
    for group, members in groups.items():
        assert inventory.members(group) == tuple(h for h in hosts if h in members)
    for host in hosts:
        assert inventory.vars_for(host)["ansible_host"] == addresses.get(host, "10.0.0.1")
    # the inventory holds no secret, so no repr, message or report built from it can leak one
    assert password not in repr(inventory)


TOML_KEYS = {
    "cluster": ["name", "ticket_link_pattern"],
    "kubespray": ["path", "inventory", "version"],
    "kubernetes": ["kubeconfig", "context", "kube_version"],
    "ssh": ["config", "user", "identity_file", "known_hosts", "trust_new_host_keys"],
    "ceph": ["mode", "namespace", "toolbox_selector", "command"],
    "expect": ["held_packages", "package_versions", "min_free_root_mb", "min_free_boot_mb"],
    "upgrade": ["settle_s", "devel_release", "drain_timeout_s", "reboot_timeout_worker_s", "lock_stale_after_s"],
    "bogus": ["x"],
}
toml_scalar = st.one_of(st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False),
                        st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12),
                        st.sampled_from(["kubespray", "inventory/mycluster/hosts.yaml", "/nonexistent", "", "..",
                                         "command", "toolbox", "root", "-oProxyCommand=touch /tmp/x"]))
toml_value = st.one_of(toml_scalar, st.lists(toml_scalar, max_size=3),
                       st.dictionaries(st.sampled_from(["docker-ce", "containerd.io", "a b"]), toml_scalar, max_size=2))


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"


@SLOW
@given(changes=st.lists(st.tuples(st.sampled_from(sorted(TOML_KEYS)), st.data()), max_size=3),
       node_table=st.one_of(st.none(), st.tuples(st.sampled_from(["node1", "node9", "a b"]), toml_value)))
def test_profile_loader_raises_only_usage_errors(tmp_path_factory, changes, node_table):
    root = tmp_path_factory.mktemp("profile")
    tables: dict[str, dict] = {"cluster": {"name": "t"}, "kubespray": {"path": "kubespray",
                                                                        "inventory": "inventory/mycluster/hosts.yaml"},
                               "kubernetes": {"kubeconfig": "kubeconfig"}, "ssh": {"user": "root"}}
    for section, data in changes:
        key = data.draw(st.sampled_from(TOML_KEYS[section]))
        tables.setdefault(section, {})[key] = data.draw(toml_value)
    text = "".join(f"[{s}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in body.items()) for s, body in tables.items())
    if node_table:
        text += f'[nodes."{node_table[0]}"]\nbmc = {_toml(node_table[1])}\n'
    path = write_cluster(root, inventory=LAB_HOSTS_YAML, toml=text)
    try:
        profile = load_profile(path, environ={})
    except UsageError as exc:
        assert exc.fix and "Traceback" not in str(exc)
        return
    assert profile.nodes


SELECT_SPECS = st.one_of(st.text(max_size=20), st.sampled_from(
    ["node1; touch /tmp/pwned", "$(touch /tmp/pwned)", "`id`", "node 1", "node1,", ",", "nöde1", "node1'", 'node1"',
     "all,workers", "control-plane,node4", "../node1", "-node1", "node1\n", "\u200bnode1"]))


@FAST
@given(spec=SELECT_SPECS)
def test_node_selection_accepts_only_known_names(tmp_path_factory, spec):
    profile = _lab_profile(tmp_path_factory)
    try:
        chosen = profile.select(spec)
    except UsageError as exc:
        assert exc.fix
        return
    known = {n.name for n in profile.nodes}
    assert chosen and {n.name for n in chosen} <= known
    # what was accepted can only be made of known names and keywords
    assert {item.strip() for item in spec.split(",")} <= known | {"all", "workers", "control-plane"}


_PROFILE_CACHE: dict[str, object] = {}


def _lab_profile(factory):
    if "p" not in _PROFILE_CACHE:
        _PROFILE_CACHE["p"] = load_profile(write_cluster(factory.mktemp("lab-profile")), environ={})
    return _PROFILE_CACHE["p"]


# ------------------------------------------------------------------------------ the journal's file

@FAST
@given(cluster=st.text(max_size=20), node=st.text(max_size=20), target=st.text(max_size=8))
@example(cluster="..", node="node4", target="22.04")
@example(cluster=".", node="..", target="/")
def test_journal_file_stays_under_its_root(cluster, node, target):
    from nodegate.core.journal import Journal

    root = Path("/srv/reports/runs")
    path = Journal(root=root, cluster=cluster, node=node, target=target, run_id="r").path
    # one folder per cluster, one file per node and target, whatever the names hold
    assert ".." not in path.parts and path.parent.parent == root / "journal", path
