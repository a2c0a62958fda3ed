"""WsproxySettings.from_env: WS_REQUEST_HEADER_TIMEOUT_SECS (the slow-loris bound) is read and validated;
kit.wsproxy.Settings: WS_MAX_CONNECTIONS_PER_ADDRESS too."""

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


# -- WS_MAX_CONNECTIONS_PER_ADDRESS (kit.wsproxy.Settings): off by default ---------------------------------


def test_connections_per_address_are_unlimited_by_default_and_the_rest_is_wsproxysettings() -> None:
    from kit.wsproxy import Settings

    settings = Settings.from_env(BASE)
    assert settings.max_connections_per_address == 0
    assert isinstance(settings, WsproxySettings)
    assert WsproxySettings.from_env(BASE) == WsproxySettings(
        **{f: getattr(settings, f) for f in WsproxySettings.__dataclass_fields__}
    )


def test_connections_per_address_is_read_from_the_environment() -> None:
    from kit.wsproxy import Settings

    assert Settings.from_env({**BASE, "WS_MAX_CONNECTIONS_PER_ADDRESS": "200"}).max_connections_per_address == 200


@pytest.mark.parametrize("value", ["-1", "many", "1.5", "10000001"])
def test_bad_connections_per_address_is_a_config_error_naming_the_variable(value: str) -> None:
    from kit.wsproxy import Settings

    with pytest.raises(ConfigError, match="WS_MAX_CONNECTIONS_PER_ADDRESS"):
        Settings.from_env({**BASE, "WS_MAX_CONNECTIONS_PER_ADDRESS": value})
