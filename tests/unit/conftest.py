"""The unit tests sit in folders that mirror the package (core/, profile/, cluster/, upgrade/);
the helpers they share by name (clusterfiles.py) sit here, and this folder is put on sys.path
explicitly, whatever the import mode (a conftest is not importable reliably)."""
from __future__ import annotations

import sys
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
