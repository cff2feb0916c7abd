"""In-process pytester runs must not break SSH ciphers for the tests that follow (seen in CI).

pytester drops the modules a run imported; cryptography's Rust registry keeps the cipher classes
it saw first, so a paramiko connection after such a run failed with "cipher AES in CTR mode is not
supported". tests/conftest.py imports them before any run; this test holds it to that.
"""
from __future__ import annotations

import importlib
import sys

CIPHERS = "cryptography.hazmat.primitives.ciphers.algorithms"


def test_aes_ctr_still_works_after_an_inprocess_run(pytester):
    before = sys.modules.get(CIPHERS)
    assert before is not None, "tests/conftest.py must import the cipher classes before any in-process run"
    pytester.makepyfile(test_inner="""
        import paramiko
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        def test_cipher():
            Cipher(algorithms.AES(b"k" * 16), modes.CTR(b"i" * 16)).encryptor()
    """)
    result = pytester.runpytest_inprocess("-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert sys.modules.get(CIPHERS) is before
    ciphers = importlib.import_module("cryptography.hazmat.primitives.ciphers")
    encryptor = ciphers.Cipher(ciphers.algorithms.AES(b"k" * 16), ciphers.modes.CTR(b"i" * 16)).encryptor()
    assert len(encryptor.update(b"x" * 16)) == 16
