"""fab run's workload options: validated once in RunOptions.resolve, carried to every generator in its settings
file (the command line carries only URLs, the slot and paths)."""

from __future__ import annotations

import pytest

from kit.inventory import Host
from kit.run._options import RunError, RunOptions, generator_settings
from kit.run._plan import GeneratorSlot
from kit.run._run import _client_argv


def _launch(**opts):
    """(argv, settings) of one generator of a run with *opts*."""
    o = RunOptions(clients=10, queries=3, **opts)
    o.resolve()
    gen = Host("gen1", {"kit_root": "/opt/k"})
    lb = Host("lb1", {"ansible_host": "10.0.0.5", "haproxy_http_port": 8080, "haproxy_ws_port": 8081})
    slot = GeneratorSlot("gen1", "lb1", 2, 10, None, "gen1")
    return _client_argv(gen, slot, o, lb, "/tmp/out", 1.0, "r1"), generator_settings(slot, o)


def test_generator_settings_carry_think_time_and_query_timeout_not_its_argv():
    argv, settings = _launch(think_time=0.5, query_timeout=12.5)
    assert settings["think_time"] == 0.5 and settings["query_timeout"] == 12.5
    assert "--think-time" not in argv and "--query-timeout" not in argv
    assert argv[argv.index("--settings") + 1] == "/tmp/client-settings.json"


def test_generator_settings_leave_the_clients_defaults_when_not_given():
    _, settings = _launch()
    assert "think_time" not in settings and "query_timeout" not in settings


def test_the_default_thresholds_judge_a_run_unless_turned_off():
    from kit.run._plan import parse_threshold

    given = [parse_threshold("success>=95%")]
    assert [(t.text, t.default) for t in RunOptions(clients=1, thresholds=given).judged_by()] == [
        ("success>=95%", False),
        ("lost==0", True),
    ]
    assert RunOptions(clients=1, thresholds=given, no_default_thresholds=True).judged_by() == given


@pytest.mark.parametrize(
    "opts, says",
    [
        ({"think_time": -1.0}, "--think-time -1"),
        ({"think_time": 700.0}, "--think-time 700"),
        ({"query_timeout": 0.0}, "--query-timeout 0"),
        ({"query_timeout": 1e6, "max_duration": 60.0}, "--query-timeout 1e+06"),
    ],
)
def test_bad_workload_options_are_one_clear_line(opts, says):
    with pytest.raises(RunError) as info:
        RunOptions(clients=10, **opts).resolve()
    assert str(info.value).startswith(says) and "\n" not in str(info.value)


def test_a_generator_hosts_source_addresses_reach_its_settings_file_and_the_client_binds_them():
    from kit import options
    from kit.client._load import LoadConfig
    from kit.client._session import SessionConfig

    slot = GeneratorSlot("gen1", "lb1", 1, 10, None, "gen1")
    o = RunOptions(clients=10)
    o.resolve()
    assert "source_addresses" not in generator_settings(slot, o)
    values = generator_settings(slot, o, ["10.0.0.5", "10.0.0.211"])
    assert values["source_addresses"] == "10.0.0.5,10.0.0.211"
    options.check(values)  # what the generator checks again on reading the file
    assert LoadConfig(session=SessionConfig(api_url="http://h:1", ws_url="ws://h:2")).source_addresses == ()
