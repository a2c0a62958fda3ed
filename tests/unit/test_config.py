"""kit.config: settings from the environment, and their errors."""

import pytest

from kit.config import ConfigError, configure_logging


@pytest.mark.parametrize("value", ["loud", "10", "info please"])
def test_bad_log_level_is_a_config_error_naming_the_variable(value):
    with pytest.raises(ConfigError, match="LOG_LEVEL"):
        configure_logging({"LOG_LEVEL": value})


def test_log_level_is_case_insensitive_and_defaults_to_info():
    assert configure_logging({"LOG_LEVEL": "debug"}) == "DEBUG"
    assert configure_logging({}) == "INFO"
