"""Noout undoes only what it did (nodegate.core.noout.flags_to_set), as Uncordon uncordons only a
node this upgrade cordoned: a per-OSD noout an operator set before the upgrade outlives it."""
from __future__ import annotations

from nodegate.core.noout import GROUP, PER_OSD, flags_to_set


def test_an_operators_per_osd_flag_is_not_ours_to_undo():
    assert flags_to_set(PER_OSD, (3, 4, 5), flagged={4}) == ((3, 5), (4,))


def test_nothing_flagged_before_means_every_flag_is_ours():
    assert flags_to_set(PER_OSD, (3, 4), flagged=()) == ((3, 4), ())


def test_a_rerun_keeps_what_the_first_run_recorded():
    # the first run recorded osd.3 and osd.5 and set them before it stopped: now all three carry
    # noout, and only the record tells ours from the operator's osd.4
    assert flags_to_set(PER_OSD, (3, 4, 5), flagged={3, 4, 5}, recorded=[3, 5]) == ((3, 5), (4,))


def test_the_group_flag_is_one_flag_for_the_host():
    assert flags_to_set(GROUP, (3, 4), flagged={3}) == ((3, 4), ())
