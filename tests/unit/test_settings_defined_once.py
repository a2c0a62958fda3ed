"""A setting is defined once, as a dataclass field: from_env, the client's options and a child process's
settings all derive from it."""

from __future__ import annotations

import dataclasses

import pytest

from kit.client.__main__ import _PER_CHILD, _apply_child_config, _child_config, build_parser
from kit.config import ClientSettings, ConfigError, SimSettings, WsproxySettings, field_kind, field_limits

SECRET = "s" * 32


def test_from_env_with_nothing_set_gives_the_fields_defaults():
    assert SimSettings.from_env({"JWT_SECRET": SECRET}) == SimSettings(jwt_secret=SECRET)
    assert WsproxySettings.from_env({"JWT_SECRET": SECRET}) == WsproxySettings(jwt_secret=SECRET)
    assert ClientSettings.from_env({}) == ClientSettings()


@pytest.mark.parametrize("cls", [SimSettings, WsproxySettings, ClientSettings])
def test_every_environment_variable_of_a_field_sets_it_within_the_fields_bounds(cls):
    for f in dataclasses.fields(cls):
        kind, (lo, hi) = field_kind(f), field_limits(f)
        for name in f.metadata.get("env", ()):
            want = "http://h:1" if f.name.endswith("url") else "v" if kind is str else kind(max(lo or 0, 3))
            assert getattr(cls.from_env({"JWT_SECRET": SECRET, name: str(want)}), f.name) == want, name
            if lo is not None:
                with pytest.raises(ConfigError, match=f"{name}=.* below the minimum"):
                    cls.from_env({"JWT_SECRET": SECRET, name: str(kind(lo) - 1)})
            if hi is not None:
                with pytest.raises(ConfigError, match=f"{name}=.* above the maximum"):
                    cls.from_env({"JWT_SECRET": SECRET, name: str(kind(hi) + 1)})


def test_client_options_default_to_the_environment_and_name_it_in_their_help():
    env = ClientSettings.from_env({"CLIENTS": "7", "WS_MAX_BACKOFF_SECONDS": "9", "SSL_CA_FILE": "/ca.pem"})
    parser = build_parser(env)
    args = parser.parse_args([])
    assert (args.clients, args.max_backoff, args.ca_file) == (7, 9.0, "/ca.pem")
    helps = {a.option_strings[0]: a.help for a in parser._actions if a.option_strings}
    for f in dataclasses.fields(ClientSettings):
        if f.metadata.get("option"):
            assert all(n in helps[f.metadata["option"]] for n in f.metadata["env"]), f.name
    with pytest.raises(ConfigError, match="--clients 0 is below 1"):
        parser.parse_args(["--clients", "0"])


def test_a_child_gets_its_parents_settings_not_a_rebuilt_argv(tmp_path):
    parent = build_parser(ClientSettings()).parse_args(
        ["--clients", "40", "--queries", "3", "--max-backoff", "12.5", "--tokens", "9", "--agent-id", "a b",
         "--query-text", "--odd text", "--seed", "5"])
    opt = _child_config(parent, tmp_path)
    child = build_parser(ClientSettings()).parse_args([*opt, "--output-dir", str(tmp_path / "p0"),
                                                       "--_process-index", "0", "--_process-count", "2"])
    _apply_child_config(child)
    for key, value in vars(parent).items():
        if key not in _PER_CHILD:
            assert getattr(child, key) == (True if key == "no_preflight" else value), key
    assert child.output_dir == str(tmp_path / "p0") and child.process_count == 2
