"""The OS release upgrade of a node: `pytest procedures/ --cluster PROFILE --node node4 --target-release 22.04 --execute`.

One test per step, per node, in order (nodegate.upgrade.STEPS); with --parallel, one test per step, per
batch of nodes upgraded side by side. Each step reads the live state
first and skips what is already done, records its progress in the node's journal, and is proven
by its post-condition; the first failure stops the run (nodegate.plugin.procedures). Without
--execute, nothing runs and the plan is printed instead.
"""
import pytest

from nodegate.upgrade import STEP_NAMES

pytestmark = pytest.mark.procedure


@pytest.mark.parametrize("step", STEP_NAMES, ids=[f"{i:02d}-{name}" for i, name in enumerate(STEP_NAMES, 1)])
def test_upgrade(step, perform):
    perform(step)


@pytest.mark.parametrize("step", STEP_NAMES, ids=[f"{i:02d}-{name}" for i, name in enumerate(STEP_NAMES, 1)])
def test_upgrade_batch(step, perform_batch):
    """With --parallel: one step on every node of a batch, side by side (nodegate.plugin.batches)."""
    perform_batch(step)
