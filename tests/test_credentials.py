"""proxy/credentials.py: the proxy's own credentials to the cluster, from the YAML, a file or the environment."""
from __future__ import annotations

import base64
import os

import pytest

from proxy.config import ConfigError, UpstreamAuth
from proxy.credentials import authorization, check


def test_no_credentials_no_header():
    assert authorization(UpstreamAuth()) is None


def test_basic_from_a_file_drops_the_trailing_newline(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("s3cret pass\n")
    header = authorization(UpstreamAuth(username="sluicegate", password_file=str(secret)))
    assert header == "Basic " + base64.b64encode(b"sluicegate:s3cret pass").decode()


def test_api_key_from_the_environment_encoded_or_as_id_and_key():
    env = {"ES_KEY": "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw=="}
    assert authorization(UpstreamAuth(api_key_env="ES_KEY"), env) == f"ApiKey {env['ES_KEY']}"
    raw = {"ES_KEY": "VuaCfGcBCdbkQm-e5aOx:ui2lp2axTNmsyakw9tvNnw"}
    assert authorization(UpstreamAuth(api_key_env="ES_KEY"), raw) == f"ApiKey {env['ES_KEY']}"


def test_bearer_inline():
    assert authorization(UpstreamAuth(bearer="AAEAAWVsYXN0aWM")) == "Bearer AAEAAWVsYXN0aWM"


@pytest.mark.parametrize("auth, key_path, message", [
    (UpstreamAuth(api_key_env="SG_TEST_UNSET"), "upstream.auth.api_key_env", "is not set"),
    (UpstreamAuth(username="u", password_file="/nonexistent/password"), "upstream.auth.password_file", "no such file"),
    (UpstreamAuth(bearer_env="SG_TEST_EMPTY"), "upstream.auth.bearer_env", "is empty"),
    (UpstreamAuth(bearer_env="SG_TEST_NEWLINE"), "upstream.auth.bearer_env", "line break"),
])
def test_a_secret_that_cannot_be_read_is_a_config_error_with_its_key(auth, key_path, message):
    env = {"SG_TEST_EMPTY": "", "SG_TEST_NEWLINE": "abc\ndef"}
    with pytest.raises(ConfigError) as caught:
        authorization(auth, env)
    assert caught.value.errors[0][0] == key_path and message in caught.value.errors[0][1]
    assert check(auth, env) == (caught.value.errors, [])


def test_a_secret_file_every_user_can_read_is_a_warning(tmp_path):
    secret = tmp_path / "key"
    secret.write_text("abc")
    os.chmod(secret, 0o600)
    assert check(UpstreamAuth(api_key_file=str(secret))) == ([], [])
    os.chmod(secret, 0o644)
    errors, warnings = check(UpstreamAuth(api_key_file=str(secret)))
    assert errors == [] and warnings[0][0] == "upstream.auth.api_key_file" and "mode 0644" in warnings[0][1]
