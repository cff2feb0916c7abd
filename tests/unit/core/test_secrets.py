import logging

from nodegate.core.secrets import MASK, install_log_redaction, redact, register_secret


def test_registered_values_are_masked():
    register_secret("s3cr3t-token-value")
    assert redact("Authorization: s3cr3t-token-value") == f"Authorization: {MASK}"


def test_keyed_values_and_private_keys_are_masked_unregistered():
    text = ("ansible_password=hunter2hunter2\n"
            "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n"
            "Authorization: Bearer abcdefgh12345678")
    out = redact(text)
    assert "hunter2hunter2" not in out and "abcdefgh12345678" not in out and "\nabc\n" not in out


def test_ordinary_text_is_left_alone():
    text = "hi  containerd.io  1.6.4-1  amd64  An open and reliable container runtime"
    assert redact(text) == text


def test_names_that_contain_a_key_word_are_left_alone():
    text = "SudoPasswordRequired: node4's sudo asks a password; see secretsFile and tokenReviewer"
    assert redact(text) == text
    assert "hunter2hunter2" not in redact("password: hunter2hunter2") and "token x" in redact("token x")


def test_log_records_are_redacted_before_any_handler(caplog):
    install_log_redaction()
    register_secret("another-secret-9876")
    with caplog.at_level(logging.INFO):
        logging.getLogger("nodegate.test").info("token is %s", "another-secret-9876")
    assert "another-secret-9876" not in caplog.text
    assert MASK in caplog.text
