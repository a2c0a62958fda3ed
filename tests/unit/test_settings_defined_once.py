"""A setting is defined once, as a dataclass field: from_env, the client's options and a child process's
settings all derive from it.  A load option (kit.options.LoadOptions) is declared once: the client's parser,
fab run's options and help, RunOptions and the client's config objects all derive from the declaration, and
nothing else in the tree writes its default, bounds or help again."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import re
from pathlib import Path

import pytest

from kit import options
from kit.client.__main__ import _child_config, build_parser, options_of, parse_args
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
        [
            "--clients",
            "40",
            "--queries",
            "3",
            "--max-backoff",
            "12.5",
            "--tokens",
            "9",
            "--agent-id",
            "a b",
            "--query-text",
            "--odd text",
            "--seed",
            "5",
        ]
    )
    opt = _child_config(parent, tmp_path)
    assert opt == ["--settings", str(tmp_path / options.SETTINGS_FILE)]
    child = parse_args(
        [*opt, "--output-dir", str(tmp_path / "p0"), "--_process-index", "0", "--_process-count", "2"],
        ClientSettings.from_env({"CLIENTS": "7", "WS_MAX_BACKOFF_SECONDS": "9"}),
    )
    assert options_of(child) == options_of(parent) | {"output_dir": str(tmp_path / "p0")}
    assert child.process_count == 2


def test_a_settings_file_is_checked_like_the_flags(tmp_path):
    path = tmp_path / options.SETTINGS_FILE
    for content, says in [
        ('{"think_time": -1}', "--think-time -1 is below 0"),
        ('{"clients": 2.5}', "--clients 2.5 is not a whole number"),
        ('{"thinktime": 1}', "unknown option(s) thinktime"),
        ("[1]", "a JSON object"),
    ]:
        path.write_text(content)
        with pytest.raises(ConfigError, match=f"--settings {re.escape(str(path))}: .*{re.escape(says)}"):
            parse_args(["--settings", str(path)], ClientSettings())


# -- each load option declared once (kit.options) ---------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
#: where a load option's default, bounds or help was written before it had one declaration
USERS = [
    "fabfile.py",
    "kit/run/_run.py",
    "kit/run/_options.py",
    "kit/client/__main__.py",
    "kit/client/_session.py",
    "kit/client/_load.py",
    "kit/config.py",
]


#: config fields that hold a resolved value, not the option's default: LoadConfig's draw seed (draw_seed's result)
RESOLVED = {("kit/client/_load.py", "workload_seed")}


def _fabfile():
    spec = importlib.util.spec_from_file_location("fabfile_once", ROOT / "fabfile.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_clients_parser_takes_each_load_options_default_bounds_and_help_from_its_declaration():
    env = ClientSettings.from_env({"WS_RECONNECT_RATE": "7"})
    actions = {a.option_strings[0]: a for a in build_parser(env)._actions if a.option_strings}
    for f in options.declared():
        a = actions[f.metadata["option"]]
        assert a.help == options.option_help(f) and a.dest == options.dest(f), f.name
        assert a.default == getattr(env, f.name), f.name
        lo, hi = field_limits(f)
        if lo is not None and field_kind(f) is not str:
            with pytest.raises(Exception, match="is below"):
                a.type(str(lo - 1))
        if hi is not None:
            with pytest.raises(Exception, match="is above"):
                a.type(str(hi + 1))


def test_fab_run_and_run_options_take_each_load_option_from_its_declaration():
    from kit.run import RunOptions

    run_fields = {f.name: f for f in dataclasses.fields(RunOptions)}
    task = _fabfile().run
    fab = [f for f in options.declared() if f.metadata.get("fab")]
    assert fab, "fab run takes load options"
    for f in fab:
        assert run_fields[f.name].metadata == f.metadata, f"RunOptions re-declares {f.name}"
        assert run_fields[f.name].default == f.metadata.get("fab_default"), f.name
        name = f.metadata["option"][2:].replace("-", "_")
        assert task.help[name].startswith(f.metadata["help"]), name
    assert set(task.help) == {
        f.metadata["option"][2:].replace("-", "_") for f in run_fields.values() if f.metadata.get("option")
    } | {"quiet", "json"}


def test_the_clients_config_objects_default_to_the_declarations():
    from kit.client._load import LoadConfig
    from kit.client._session import SessionConfig

    for cls in (SessionConfig, LoadConfig):
        for f in dataclasses.fields(cls):
            declared = options.default(f.name) if f.name in {d.name for d in options.declared()} else None
            # (None: the config object holds the resolved value, e.g. the Workload; MISSING: always given)
            if declared is not None and f.default is not dataclasses.MISSING:
                assert f.default == declared or str(f.default) == declared, f.name


def test_no_load_options_default_bounds_or_help_is_written_a_second_time():
    """Outside kit/options.py: no declared help text, no class field of a declared option's name set to a
    literal, no function parameter of its name defaulting to a literal other than None/False, and no
    add_argument of its flag."""
    declared = list(options.declared())
    names = {f.name for f in declared} | {options.dest(f) for f in declared}
    flags = {f.metadata["option"] for f in declared}
    helps = [f.metadata["help"] for f in declared if len(f.metadata["help"]) > 15]
    for rel in USERS:
        text = (ROOT / rel).read_text()
        if rel == "fabfile.py":  # fab capacity's steps have defaults of their own (3 queries, 300 s): not fab run's
            start = text.rindex("@task(", 0, text.index('name="capacity"'))  # however the decorator is laid out
            text = text[:start] + text[text.index("def capacity(") :]
        for h in helps:
            assert h not in text, f"{rel} repeats the help {h!r}"
        for node in ast.walk(ast.parse(text)):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and node.target.id in names
                and (rel, node.target.id) not in RESOLVED
            ):
                assert not isinstance(node.value, ast.Constant) or node.value.value is None, (
                    f"{rel}:{node.lineno}: {node.target.id} has a default of its own"
                )
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args.args[len(node.args.args) - len(node.args.defaults) :] + node.args.kwonlyargs
                defaults = node.args.defaults + [d for d in node.args.kw_defaults]
                for arg, d in zip(args, defaults):
                    if arg.arg in names and isinstance(d, ast.Constant):
                        assert d.value in (None, False), f"{rel}:{node.lineno}: {arg.arg}={d.value!r}"
            if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
                assert node.args[0].value not in flags or getattr(
                    node.func, "attr", getattr(node.func, "id", "")
                ) not in ("add_argument", "a"), f"{rel}:{node.lineno}: {node.args[0].value} added by hand"
