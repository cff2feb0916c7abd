"""apt sources in both formats (nodegate.core.aptsources) and the repair plan after a release
upgrade (nodegate.core.aptrepair), over files shaped like the ones Ubuntu's release upgrader and
Kubespray leave on a node (the shapes are described in the modules' docstrings)."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nodegate.core import aptrepair
from nodegate.core import aptsources as src

DOCKER = "https://download.docker.com/linux/ubuntu"
KEY_BLOCK = ("\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n mQINBFit2ioBEADhWpZ8/wvZ6hUTiXOwQHXMAlaFHcPH9hAtr4F1y2+OYdbtMuth\n"
             " =0YYh\n -----END PGP PUBLIC KEY BLOCK-----")

# /etc/apt/sources.list.d/ubuntu.sources as the noble upgrader writes it (two stanzas).
UBUNTU_SOURCES = """\
Types: deb
URIs: http://archive.ubuntu.com/ubuntu
Suites: noble noble-updates noble-backports
Components: main restricted universe multiverse
Signed-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg

Types: deb
URIs: http://security.ubuntu.com/ubuntu
Suites: noble-security
Components: main restricted universe multiverse
Signed-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg
"""

# docker.list migrated to docker.sources on the way to noble, disabled (unknown mirror), with
# the key inline because trusted.gpg.d/docker.gpg existed; an operator's comment kept.
DOCKER_SOURCES_INLINE = f"""\
# Docker CE, added by hand
Enabled: no
Types: deb
URIs: {DOCKER}
Suites: jammy
Components: stable
Architectures: amd64
Signed-By:{KEY_BLOCK}
"""

DOCKER_SOURCES_PATH = f"""\
Enabled: no
Types: deb
URIs: {DOCKER}
Suites: jammy
Components: stable
Architectures: amd64
"""

DOCKER_LIST_JAMMY_UPGRADE = f"# deb [arch=amd64] {DOCKER} focal stable # disabled on upgrade to jammy\n"


def test_deb822_multi_stanza_reads_every_field():
    found = src.entries(src.UBUNTU_SOURCES, UBUNTU_SOURCES)
    assert [e.suites for e in found] == [("noble", "noble-updates", "noble-backports"), ("noble-security",)]
    assert all(e.enabled and e.ubuntu_own and e.format == "deb822" for e in found)
    assert found[0].signed_by_paths == (src.UBUNTU_ARCHIVE_KEYRING,)
    assert found[1].uris == ("http://security.ubuntu.com/ubuntu",) and found[1].codenames == ("noble",)


def test_deb822_enabled_no_inline_key_and_comments():
    (e,) = src.entries("/etc/apt/sources.list.d/docker.sources", DOCKER_SOURCES_INLINE)
    assert not e.enabled and not e.ubuntu_own
    assert e.signed_by_inline and e.signed_by_paths == ()
    # " ." is an empty line inside the armored block
    assert e.signed_by.splitlines()[:2] == ["-----BEGIN PGP PUBLIC KEY BLOCK-----", ""]
    assert e.options["architectures"] == "amd64" and e.components == ("stable",)


def test_deb822_round_trip_and_edit_keeps_comments_and_key_block():
    doc = src.Deb822File.parse(DOCKER_SOURCES_INLINE)
    assert doc.render() == DOCKER_SOURCES_INLINE
    st = doc.stanzas[0]
    st.set("Enabled", "yes")
    st.set("Suites", "noble")
    text = doc.render()
    assert text.startswith("# Docker CE, added by hand\nEnabled: yes\nTypes: deb\n")
    assert "Suites: noble\n" in text and KEY_BLOCK in text
    two = src.Deb822File.parse(UBUNTU_SOURCES)
    assert two.render() == UBUNTU_SOURCES and len(two.stanzas) == 2
    two.remove(two.stanzas[0])
    assert two.render() == UBUNTU_SOURCES.split("\n\n", 1)[1]


def test_one_line_disabled_tag_options_and_ownership():
    text = ("# See http://help.ubuntu.com/community/UpgradeNotes\n"
            "deb http://archive.ubuntu.com/ubuntu jammy main restricted\n"
            f"# deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.gpg] {DOCKER} focal stable "
            "# disabled on upgrade to jammy\n")
    found = src.entries(src.SOURCES_LIST, text)
    assert [e.enabled for e in found] == [True, False]
    assert found[0].ubuntu_own and not found[1].ubuntu_own   # a tagged entry is third party, wherever it is
    assert found[1].disabled_on_upgrade_to == "jammy"
    assert found[1].options == {"architectures": "amd64", "signed-by": "/etc/apt/keyrings/docker.gpg"}


def test_disabled_third_party_flagged_in_both_formats():
    for path, text in (("/etc/apt/sources.list.d/docker.list", DOCKER_LIST_JAMMY_UPGRADE),
                       ("/etc/apt/sources.list.d/docker.sources", DOCKER_SOURCES_PATH)):
        entries = [*src.entries(path, text), *src.entries(src.UBUNTU_SOURCES, UBUNTU_SOURCES)]
        problems = src.disabled_third_party(entries, "noble")
        assert len(problems) == 1 and problems[0].path == path and DOCKER in problems[0].text
    # not flagged once an enabled entry serves the repository on noble
    enabled = src.entries("/etc/apt/sources.list.d/docker.list", f"deb [arch=amd64] {DOCKER} noble stable\n")
    assert src.disabled_third_party([*src.entries("/etc/apt/sources.list.d/docker.sources", DOCKER_SOURCES_PATH),
                                     *enabled], "noble") == []


def test_signed_by_conflict_and_duplicate_source():
    repaired = src.entries("/etc/apt/sources.list.d/docker.list",
                           f"deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.gpg] {DOCKER} noble stable\n")
    kubespray = src.entries("/etc/apt/sources.list.d/download_docker_com_linux_ubuntu.list",
                            f"deb [arch=amd64] {DOCKER} noble stable\n")
    other_key = src.entries("/etc/apt/sources.list.d/x.list",
                            f"deb [signed-by=/etc/apt/trusted.gpg.d/docker.gpg] {DOCKER} noble stable\n")
    # apt 2.6.1: a value on one side only is the source twice (a warning), two values an error
    assert src.signed_by_conflicts([*repaired, *kubespray]) == []
    (twice,) = src.duplicate_sources([*repaired, *kubespray])
    assert "configured 2 times" in twice and "download_docker_com_linux_ubuntu.list" in twice
    (conflict,) = src.signed_by_conflicts([*repaired, *other_key])
    assert "/etc/apt/keyrings/docker.gpg in /etc/apt/sources.list.d/docker.list" in conflict


def test_repair_of_noble_deb822_disabled_source_writes_kubesprays_line():
    files = {src.UBUNTU_SOURCES: UBUNTU_SOURCES, src.SOURCES_LIST: "# Ubuntu sources have moved to "
             "/etc/apt/sources.list.d/ubuntu.sources\n", "/etc/apt/sources.list.d/docker.sources": DOCKER_SOURCES_INLINE}
    plan = aptrepair.plan_repair(files, "jammy", "noble")
    assert plan.files == {"/etc/apt/sources.list.d/docker.sources": None,
                          "/etc/apt/sources.list.d/docker.list": f"deb [arch=amd64] {DOCKER} noble stable\n"}
    assert list(plan.inline_keys) == ["/etc/apt/trusted.gpg.d/docker.asc"]
    after = {k: v for k, v in {**files, **plan.files}.items() if v is not None}
    assert aptrepair.end_state_problems(after, "noble") == []
    assert aptrepair.plan_repair(after, "jammy", "noble").changes is False    # idempotent
    assert src.UBUNTU_SOURCES not in plan.files                                # Ubuntu's own left alone


def test_repair_of_jammy_commented_line_in_place_and_key_path():
    files = {"/etc/apt/sources.list.d/docker.list":
             f"# deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.gpg] {DOCKER} focal stable "
             "# disabled on upgrade to jammy\n"}
    plan = aptrepair.plan_repair(files, "focal", "jammy")
    assert plan.files == {"/etc/apt/sources.list.d/docker.list": f"deb [arch=amd64] {DOCKER} jammy stable\n"}
    assert plan.keys_from == {"/etc/apt/trusted.gpg.d/docker.gpg": "/etc/apt/keyrings/docker.gpg"}


def test_repair_after_kubespray_collapses_duplicates_to_its_line():
    """Kubespray ran after an older repair: its own line sits beside a signed-by line."""
    files = {"/etc/apt/sources.list.d/docker.list":
             f"deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.gpg] {DOCKER} noble stable\n",
             "/etc/apt/sources.list.d/download_docker_com_linux_ubuntu.list": f"deb [arch=amd64] {DOCKER} noble stable\n"}
    assert aptrepair.end_state_problems(files, "noble")
    plan = aptrepair.plan_repair(files, "jammy", "noble")
    assert plan.files == {"/etc/apt/sources.list.d/docker.list": ""}
    after = {**files, **plan.files}
    assert aptrepair.end_state_problems(after, "noble") == []


def test_enabled_one_line_left_on_the_old_codename_is_moved():
    files = {"/etc/apt/sources.list.d/tools.list": "deb [arch=amd64] https://apt.example.net/tools focal main\n"}
    plan = aptrepair.plan_repair(files, "focal", "jammy")
    assert plan.files["/etc/apt/sources.list.d/tools.list"] == "deb [arch=amd64] https://apt.example.net/tools jammy main\n"


# --------------------------------------------------------------------------- properties

WORD = st.from_regex(r"[a-z0-9][a-z0-9./:_-]{0,12}", fullmatch=True)
FIELD_LINE = st.builds(lambda n, v: f"{n}: {v}", st.sampled_from(["Types", "URIs", "Suites", "Components",
                                                                  "Enabled", "Architectures", "X-Repolib-Name"]), WORD)
CONTINUATION = st.builds(lambda v: f" {v}", st.one_of(WORD, st.just(".")))
COMMENT = st.builds(lambda v: f"# {v}", WORD)
PARAGRAPH = st.lists(st.one_of(FIELD_LINE, COMMENT, CONTINUATION), min_size=1, max_size=6).map(
    lambda lines: lines if not lines[0].startswith(" ") else ["Types: deb", *lines])


@given(st.lists(PARAGRAPH, min_size=1, max_size=4), st.lists(st.integers(1, 3), min_size=4, max_size=4),
       st.booleans())
def test_deb822_renders_back_byte_for_byte(paragraphs, gaps, newline):
    text = "".join("\n".join(p) + "\n" * gaps[i] for i, p in enumerate(paragraphs)).rstrip("\n")
    text += "\n" if newline else ""
    assert src.Deb822File.parse(text).render() == text


@given(st.sampled_from(["focal", "jammy"]), st.sampled_from(["jammy", "noble"]),
       st.lists(st.sampled_from(["", "-updates", "-security", "-backports"]), min_size=1, max_size=3, unique=True))
def test_repair_plan_is_idempotent(old, new, pockets):
    files = {"/etc/apt/sources.list.d/docker.list":
             "".join(f"# deb [arch=amd64] {DOCKER} {old}{p} stable # disabled on upgrade to {new}\n" for p in pockets)}
    plan = aptrepair.plan_repair(files, old, new)
    after = {k: v for k, v in {**files, **plan.files}.items() if v is not None}
    assert aptrepair.plan_repair(after, old, new).changes is False
    assert aptrepair.end_state_problems(after, new) == []
