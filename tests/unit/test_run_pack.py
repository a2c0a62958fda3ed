"""The archived inventory strips secret values only, never settings that merely contain a secret's word."""

from __future__ import annotations

import pytest

from kit.run._pack import strip_secrets

HOSTVARS = {
    "sim_token_delay_ms": 20,
    "jwt_secret": "s" * 48,
    "redis_admin_password": "hunter2",
    "kit_jwt_secret_file": "/opt/wsproxy-loadkit/.secrets/jwt_secret",
    "auth_token": "abc.def.ghi",
    "kit_secrets_dir": ".secrets",
    "ansible_become_pass": "pw",
    "api_key": "k",
    "stats": {"haproxy_stats_password": "pw", "haproxy_stats_user": "admin"},
    "tokens_per_query": 40,
    "ansible_ssh_private_key_file": "/root/.ssh/lab",
}


@pytest.mark.parametrize("key", ["jwt_secret", "redis_admin_password", "auth_token", "ansible_become_pass", "api_key"])
def test_secret_values_are_stripped(key):
    assert strip_secrets(HOSTVARS)[key] == "<stripped>"


@pytest.mark.parametrize(
    "key",
    [
        "sim_token_delay_ms",
        "kit_jwt_secret_file",
        "kit_secrets_dir",
        "tokens_per_query",
        "ansible_ssh_private_key_file",
    ],
)
def test_settings_and_paths_that_only_mention_a_secret_are_kept(key):
    assert strip_secrets(HOSTVARS)[key] == HOSTVARS[key]


def test_nested_secrets_are_stripped_and_their_neighbours_kept():
    assert strip_secrets(HOSTVARS)["stats"] == {"haproxy_stats_password": "<stripped>", "haproxy_stats_user": "admin"}
