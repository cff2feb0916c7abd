"""Every upgrade step's postcondition (nodegate.core.postconditions), driven from plain facts: what
must be seen on the node for a step to count as done, and what makes it not hold. A fact or a
record that is missing never counts as proof."""
from __future__ import annotations

import pytest

from nodegate.core import postconditions as post
from nodegate.core.incarnation import ABSENT, AGREES, FOREIGN, LAGS

NODE = "node4"


def boot(boot_id="b2", boot_time=1000.0, now=1100.0, pending=False, packages=()):
    return post.BootFacts(boot_id=boot_id, boot_time=boot_time, now=now, reboot_required=pending,
                          reboot_packages=tuple(packages))


# -- drain / noout / uncordon / unset_noout ---------------------------------------------------------

def test_drain_holds_only_cordoned_with_no_evictable_pod():
    assert post.drain(NODE, unschedulable=True, evictable=[]).holds
    assert "not cordoned" in post.drain(NODE, unschedulable=False, evictable=[]).text
    no = post.drain(NODE, unschedulable=True, evictable=["default/web-1"])
    assert not no.holds and "default/web-1" in no.text


def test_noout_holds_when_set_or_when_the_host_has_no_osds():
    assert post.noout(NODE, has_osds=True, noout_set=True).holds
    assert post.noout(NODE, has_osds=False, noout_set=False).holds
    no = post.noout(NODE, has_osds=True, noout_set=False, flags="{}")
    assert not no.holds and "noout is not set" in no.text


def test_uncordon_holds_when_schedulable_or_when_the_cordon_was_not_ours():
    assert post.uncordon(NODE, cordoned_by_us=True, unschedulable=False).holds
    assert not post.uncordon(NODE, cordoned_by_us=True, unschedulable=True).holds
    left = post.uncordon(NODE, cordoned_by_us=False, unschedulable=True)
    assert left.holds and "left as found" in left.text


def test_unset_noout_holds_only_without_the_flag():
    assert post.unset_noout(NODE, noout_set=False).holds
    assert not post.unset_noout(NODE, noout_set=True).holds


# -- packages -------------------------------------------------------------------------------------

def test_unhold_needs_the_record_of_what_was_held():
    assert post.unhold(NODE, recorded={"docker-ce": "5:20"}, held_now={}).holds
    assert not post.unhold(NODE, recorded={"docker-ce": "5:20"}, held_now={"docker-ce": "5:20"}).holds
    missing = post.unhold(NODE, recorded=None, held_now={})
    assert not missing.holds and "no record" in missing.text
    assert post.unhold(NODE, recorded={}, held_now={"other": "1"}).holds   # nothing was held: nothing to unhold


def test_dist_upgrade_holds_with_dpkg_consistent_and_nothing_upgradable():
    assert post.dist_upgrade(NODE, audit="", upgradable=[]).holds
    half = post.dist_upgrade(NODE, audit="The following packages are only half configured\nlibc6", upgradable=[])
    assert not half.holds and "dpkg --configure -a" in half.fix
    assert "libc6" in post.dist_upgrade(NODE, audit="", upgradable=["libc6"]).text


def test_hold_holds_with_every_recorded_package_held_at_its_target_build():
    wanted = {"docker-ce": "5:20.10.20~3-0~ubuntu-jammy"}
    assert post.hold(NODE, wanted=wanted, held=dict(wanted)).holds
    assert "is not held" in post.hold(NODE, wanted=wanted, held={}).text
    assert "expected" in post.hold(NODE, wanted=wanted, held={"docker-ce": "5:20.10.20~3-0~ubuntu-focal"}).text
    assert not post.hold(NODE, wanted={}, held={}, recorded=False).holds


def test_kubespray_holds_ready_at_the_clusters_kube_version_and_never_without_one():
    assert post.kubespray(NODE, ready=True, describe="", kubelet_version="v1.25.6", want="v1.25.6").holds
    assert post.kubespray(NODE, ready=True, describe="", kubelet_version="v1.25.6", want="1.25.6").holds   # both forms
    assert not post.kubespray(NODE, ready=False, describe="NotReady", kubelet_version="v1.25.6", want="v1.25.6").holds
    assert not post.kubespray(NODE, ready=True, describe="", kubelet_version="v1.24.0", want="v1.25.6").holds
    unknown = post.kubespray(NODE, ready=True, describe="", kubelet_version="v1.25.6", want="")
    assert not unknown.holds and "kube_version" in unknown.fix


# -- reboots ----------------------------------------------------------------------------------------

def test_a_reboot_holds_with_a_new_boot_begun_after_the_request_and_nothing_pending():
    ok = post.reboot(NODE, before="b1", requested_at=990.0, live=boot(), pending_matters=True, ready=True,
                     kubelet_boot_id="b2")
    assert ok.holds and "b1" in ok.text and "b2" in ok.text


@pytest.mark.parametrize("change, words", [
    (dict(before=None), "no boot id recorded"),
    (dict(requested_at=None), "no time recorded"),
    (dict(live=boot(boot_id="b1")), "has not rebooted"),
    (dict(live=boot(boot_time=980.0)), "not after the reboot was asked for"),     # an old journal's boot ids
    (dict(live=boot(boot_time=0.0)), "not after the reboot was asked for"),       # boot time unreadable
    (dict(live=boot(pending=True, packages=["libc6"])), "needs a reboot again (libc6)"),
    (dict(ready=False), "not Ready"),
    (dict(kubelet_boot_id="b1"), "has not registered this boot"),
])
def test_a_reboot_does_not_hold(change, words):
    facts = dict(before="b1", requested_at=990.0, live=boot(), pending_matters=True, ready=True, kubelet_boot_id="b2")
    facts.update(change)
    verdict = post.reboot(NODE, **facts)
    assert not verdict.holds and words in verdict.text, verdict.text


def test_a_pending_reboot_is_not_the_first_reboots_business_after_the_release_upgrade():
    assert post.reboot(NODE, before="b1", requested_at=990.0, live=boot(pending=True), pending_matters=False,
                       ready=True).holds


def test_what_a_reboot_step_does_when_it_runs():
    act = post.reboot_action
    assert act(before=None, requested_at=None, live=boot(), pending_matters=True) == post.REQUEST
    assert act(before="b1", requested_at=990.0, live=None, pending_matters=True) == post.WAIT       # down: under way
    assert act(before="b1", requested_at=990.0, live=boot(boot_id="b1"), pending_matters=True) == post.REQUEST
    assert act(before="b1", requested_at=990.0, live=boot(), pending_matters=True) == post.WAIT      # came back
    assert act(before="b1", requested_at=990.0, live=boot(pending=True), pending_matters=True) == post.REQUEST
    assert act(before="b1", requested_at=1010.0, live=boot(), pending_matters=True) == post.REQUEST  # booted before
    assert act(before="b1", requested_at=None, live=boot(), pending_matters=True) == post.REQUEST    # undatable


# -- the release ------------------------------------------------------------------------------------

def test_os_image_shows_a_release():
    assert post.os_image_shows("Ubuntu 22.04.5 LTS", "22.04")
    assert post.os_image_shows("Ubuntu 22.04", "22.04")
    assert not post.os_image_shows("Ubuntu 20.04.6 LTS", "22.04")
    assert not post.os_image_shows("Ubuntu 22.040 LTS", "22.04")
    assert not post.os_image_shows("", "22.04")


def release(**change):
    facts = dict(target="22.04", version_id="22.04", label="Ubuntu 22.04.5 LTS", audit="",
                 os_image="Ubuntu 22.04.5 LTS", kubelet_boot_id="b3", boot_of_release="b2")
    facts.update(change)
    return post.release(NODE, **facts)


def test_the_release_holds_in_os_release_dpkg_and_the_nodes_os_image():
    assert release().holds
    # not rebooted since do-release-upgrade: the kubelet still reports what it read at its start
    assert release(os_image="Ubuntu 20.04.6 LTS", kubelet_boot_id="b2").holds


@pytest.mark.parametrize("change, words", [
    (dict(version_id="20.04", label="Ubuntu 20.04.6 LTS"), "not 22.04"),
    (dict(audit="half configured: libc6"), "not consistent"),
    (dict(os_image=None), "could not be read"),
    (dict(os_image="Ubuntu 20.04.6 LTS"), "rebooted since the release upgrade"),
    (dict(os_image="Ubuntu 20.04.6 LTS", boot_of_release=None), "osImage"),
])
def test_the_release_does_not_hold(change, words):
    verdict = release(**change)
    assert not verdict.holds and words in verdict.text, verdict.text


# -- the repair -------------------------------------------------------------------------------------

def src(raw="deb [signed-by=/etc/apt/keyrings/docker.gpg] http://r/ubuntu jammy stable", *, enabled=True,
        suite="jammy", disabled=False, signed_by="/etc/apt/keyrings/docker.gpg"):
    return post.SourceLine(path="/etc/apt/sources.list.d/docker.list", raw=raw, enabled=enabled, suite=suite,
                           disabled_on_upgrade=disabled, signed_by=signed_by)


def repair(**change):
    facts = dict(sources=[src()], old_codename="focal", legacy_keyring=False,
                 keyrings_present=["/etc/apt/keyrings/docker.gpg"], rbd_loaded=True, rbd_persisted=True,
                 update_problems=[])
    facts.update(change)
    return post.repair(NODE, **facts)


def test_the_repair_holds_with_sources_and_keys_as_it_left_them():
    ok = repair()
    assert ok.holds and "apt-get update clean" in ok.text
    assert "apt-get update" not in repair(update_problems=None).text   # the cheap check says what it did not run


@pytest.mark.parametrize("change, words", [
    (dict(sources=[src(enabled=False, disabled=True)]), "still disabled on upgrade"),
    (dict(sources=[src(suite="focal-updates")]), "still points at focal"),
    (dict(keyrings_present=[]), "signed-by /etc/apt/keyrings/docker.gpg is missing"),
    (dict(legacy_keyring=True), "legacy keyring"),
    (dict(rbd_loaded=False), "rbd module is not loaded"),
    (dict(rbd_persisted=False), "not persisted"),
    (dict(update_problems=["NO_PUBKEY 7EA0A9C3F273FCD8"]), "NO_PUBKEY"),
    (dict(old_codename=None), "no source codename recorded"),
    (dict(source_problems=["/etc/apt/sources.list.d/docker.list: still on focal"]), "still on focal"),
])
def test_the_repair_does_not_hold(change, words):
    verdict = repair(**change)
    assert not verdict.holds and words in verdict.text, verdict.text


# -- the gate: skipped only on live proof -------------------------------------------------------------

def mid(**change):
    facts = dict(journal_cordoned_by="run-1", unschedulable=True, live_cordoned_by="run-1", annotation=AGREES,
                 annotation_detail="the annotation mirrors the journal", target="22.04", live_release="20.04",
                 release_recorded=False)
    facts.update(change)
    return post.mid_upgrade(NODE, **facts)


def test_the_gate_is_skipped_when_the_node_is_cordoned_by_this_journals_run():
    assert mid().holds
    assert mid(annotation=LAGS).holds
    assert mid(annotation=ABSENT).holds      # the cordon is the live proof; each step is proven anyway


def test_past_the_uncordon_the_target_release_and_an_agreeing_annotation_prove_it():
    assert mid(unschedulable=False, live_release="22.04", release_recorded=True).holds
    assert not mid(unschedulable=False, live_release="22.04", release_recorded=True, annotation=ABSENT).holds
    # a rerun after the upgrade completed (the annotation is cleared then): every step re-verified
    assert mid(unschedulable=False, live_release="22.04", release_recorded=True, annotation=ABSENT,
               completed=True).holds
    assert not mid(unschedulable=False, live_release="20.04", release_recorded=True, annotation=ABSENT,
                   completed=True).holds


@pytest.mark.parametrize("change, words", [
    (dict(journal_cordoned_by=None, unschedulable=False), "never cordoned"),
    (dict(unschedulable=False), "is not cordoned"),
    (dict(live_cordoned_by="run-other"), "cordoned by run-other"),
    (dict(live_cordoned_by=None), "someone else"),
    (dict(annotation=FOREIGN, annotation_detail="names a record this journal does not have"), "does not have"),
])
def test_the_gate_runs_when_nothing_live_proves_the_upgrade_under_way(change, words):
    verdict = mid(**change)
    assert not verdict.holds and words in verdict.text, verdict.text
