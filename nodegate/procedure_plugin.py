"""Plugin layer of the procedures: ordering, gating, plan mode (filled in by the procedures work)."""
