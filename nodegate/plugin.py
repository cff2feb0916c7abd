"""The nodegate pytest plugin: options, markers and fixtures (registered by the pytest11 entry point)."""
from __future__ import annotations

MARKERS = {
    "preflight": "read-only check run before a change to a node",
    "postflight": "read-only check run after a change to a node",
    "procedure": "a step that changes a node; runs only with --execute",
    "lab": "a test of the rehearsal lab itself (needs root and the lab's packages)",
}


def pytest_configure(config):
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
