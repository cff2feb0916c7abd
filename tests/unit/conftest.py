"""The unit tests sit in folders that mirror the package (core/, profile/, cluster/, upgrade/);
the helpers they share by name (clusterfiles.py) sit here, and this folder is put on sys.path
explicitly, whatever the import mode (a conftest is not importable reliably)."""
from __future__ import annotations

import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

# Property tests share the machine with labs and other streams: Hypothesis's wall-clock checks
# (a per-example deadline, "too slow" data generation) measure that load, not the code, so the
# unit tests run under one profile without them. The examples and their number stay the same.
settings.register_profile("nodegate-shared-machine", deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("nodegate-shared-machine")
