"""The upgrade's steps, grouped by what they touch; their order is nodegate.upgrade.STEPS."""
