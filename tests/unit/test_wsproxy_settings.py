"""WsproxySettings.from_env: WS_REQUEST_HEADER_TIMEOUT_SECS (the slow-loris bound) is read and validated."""

from __future__ import annotations

import pytest

from kit.config import ConfigError, WsproxySettings

BASE = {"JWT_SECRET": "s" * 48}


def test_request_header_timeout_defaults_to_ten_seconds() -> None:
    assert WsproxySettings.from_env(BASE).ws_request_header_timeout_secs == 10.0


def test_request_header_timeout_is_read_from_the_environment() -> None:
    env = {**BASE, "WS_REQUEST_HEADER_TIMEOUT_SECS": "2.5"}
    assert WsproxySettings.from_env(env).ws_request_header_timeout_secs == 2.5


@pytest.mark.parametrize("value", ["0", "-1", "0.05", "nan", "inf", "ten", "3601"])
def test_bad_request_header_timeout_is_a_config_error_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="WS_REQUEST_HEADER_TIMEOUT_SECS"):
        WsproxySettings.from_env({**BASE, "WS_REQUEST_HEADER_TIMEOUT_SECS": value})
