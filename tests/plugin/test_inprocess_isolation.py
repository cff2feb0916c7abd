"""In-process pytester runs must not leave the tests after them with re-imported library modules.

pytester drops the modules a run imported; libraries keep class objects across that (seen in CI:
cryptography's cipher registry kept the first AES class, so paramiko failed with "cipher AES in
CTR mode is not supported"; a kubernetes ApiException class no longer matched a re-imported one).
tests/conftest.py imports what the harness imports lazily before any run; this holds it to that.
"""
from __future__ import annotations

import importlib
import sys

from labkit import lazy_third_party_imports


def test_lazy_imports_of_the_harness_survive_an_inprocess_run(pytester):
    lazy = sorted(lazy_third_party_imports())
    assert "kubernetes.client" in lazy and "paramiko" in lazy, lazy    # the scan finds the known ones
    missing = [name for name in lazy if name not in sys.modules]
    assert not missing, f"tests/conftest.py must import these before any in-process run: {missing}"
    before = {name: sys.modules[name] for name in lazy}
    pytester.makepyfile(test_inner=f"""
        import importlib
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        def test_imports_and_cipher():
            for name in {lazy!r}:
                importlib.import_module(name)
            Cipher(algorithms.AES(b"k" * 16), modes.CTR(b"i" * 16)).encryptor()
    """)
    result = pytester.runpytest_inprocess("-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    changed = [name for name, module in before.items() if sys.modules.get(name) is not module]
    assert not changed, f"re-imported after the run: {changed}"
    ciphers = importlib.import_module("cryptography.hazmat.primitives.ciphers")
    encryptor = ciphers.Cipher(ciphers.algorithms.AES(b"k" * 16), ciphers.modes.CTR(b"i" * 16)).encryptor()
    assert len(encryptor.update(b"x" * 16)) == 16
