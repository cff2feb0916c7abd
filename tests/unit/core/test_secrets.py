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


def test_result_files_are_masked_deep_inside_and_clean_ones_left_as_written(tmp_path):
    import json

    from nodegate.core.results import redact_results

    register_secret("r3sult-secret-9876")
    dirty = {"name": "test_x[node4]", "steps": [{"name": "s", "attachments": [], "parameters": [
        {"name": "cmd", "value": "curl -H 'x: r3sult-secret-9876'"}]}],
        "statusDetails": {"message": "ansible_password=hunter2hunter2"}}
    clean = {"name": "test_y[node4]", "steps": [{"name": "token", "parameters": [{"name": "v", "value": "ok"}]}]}
    (tmp_path / "a-result.json").write_text(json.dumps(dirty))
    (tmp_path / "b-result.json").write_text(json.dumps(clean, indent=1))
    assert redact_results(tmp_path) == 1
    text = (tmp_path / "a-result.json").read_text()
    assert "r3sult-secret-9876" not in text and "hunter2hunter2" not in text and MASK in text
    assert (tmp_path / "b-result.json").read_text() == json.dumps(clean, indent=1)
