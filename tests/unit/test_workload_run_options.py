"""fab run's workload and reconnect options: checked once in RunOptions.resolve, in every generator's settings file."""

from __future__ import annotations

import pytest

from kit.inventory import Host
from kit.run._options import RunError, RunOptions, generator_settings
from kit.run._plan import GeneratorSlot
from kit.run._run import _client_argv


def _argv(label: str = "gen1", **opts):
    """(options, argv, settings) of one generator of a run with *opts*."""
    o = RunOptions(clients=10, queries=3, **opts)
    o.resolve()
    gen = Host("gen1", {"kit_root": "/opt/k"})
    lb = Host("lb1", {"ansible_host": "10.0.0.5", "haproxy_http_port": 8080, "haproxy_ws_port": 8081})
    slot = GeneratorSlot("gen1", "lb1", 2, 10, None, label)
    return o, _client_argv(gen, slot, o, lb, "/r/gen-x/out", 1.0, "r1"), generator_settings(slot, o)


def _value(argv, flag):
    return argv[argv.index(flag) + 1]


def test_the_workload_and_reconnect_options_reach_the_generators_settings():
    _, argv, settings = _argv(
        tokens=400,
        token_delay_ms=12.5,
        ttft_ms=300.0,
        token_jitter_ms=2.0,
        max_reconnect_attempts=0,
        initial_backoff=0.5,
        max_backoff=4.0,
    )
    assert settings == {
        "clients": 10,
        "queries": 3,
        "max_duration": 600.0,
        "tokens": 400,
        "token_delay_ms": 12.5,
        "ttft_ms": 300.0,
        "token_jitter_ms": 2.0,
        "max_reconnect_attempts": 0,
        "initial_backoff": 0.5,
        "max_backoff": 4.0,
        "arrival_rate": None,
    }
    assert not {"--tokens", "--token-delay", "--max-reconnect-attempts", "--clients"} & set(argv)


def test_unset_options_leave_the_simulators_and_clients_defaults():
    _, argv, settings = _argv()
    assert "--workload" not in argv
    for name in (
        "tokens",
        "token_delay_ms",
        "ttft_ms",
        "token_jitter_ms",
        "max_reconnect_attempts",
        "reconnect_rate",
        "workload_seed",
    ):
        assert name not in settings


@pytest.mark.parametrize("rate", [50.0, 0.0, 12.5])
def test_the_reconnect_rate_reaches_the_generators_settings_and_the_client_reads_them(rate, tmp_path):
    from kit.client.__main__ import parse_args
    from kit.config import ClientSettings
    from kit.options import settings_text

    _, argv, settings = _argv(reconnect_rate=rate)
    (tmp_path / "client-settings.json").write_text(settings_text(settings))
    argv = argv[argv.index("--api-url") :]
    argv[argv.index("--settings") + 1] = str(tmp_path / "client-settings.json")
    args = parse_args(argv, ClientSettings.from_env({"WS_RECONNECT_RATE": "7", "CLIENTS": "3"}))
    assert (args.reconnect_rate, args.clients, args.queries, args.max_duration) == (rate, 10, 3, 600.0)
    assert parse_args([*argv, "--reconnect-rate", "9"], ClientSettings.from_env({})).reconnect_rate == 9.0


def test_a_workload_file_goes_beside_each_generators_output_with_a_seed_of_its_own(tmp_path):
    wl = tmp_path / "mix.yml"
    wl.write_text("seed: 5\nclasses:\n  a: {weight: 1, tokens: 3}\n  b: {weight: 1, tokens: 9}\n")
    o, argv, a = _argv("gen1", workload=wl)
    _, _, b = _argv("gen2", workload=wl)
    assert o.workload_seed == 5
    assert _value(argv, "--workload") == "/r/gen-x/workload.yml"
    assert a["workload_seed"] != b["workload_seed"]
    assert _argv("gen1", workload=wl)[2] == a  # the same seed draws alike


@pytest.mark.parametrize(
    "opts, says",
    [
        ({"token_delay_ms": 70000.0}, "--token-delay 70000: 70000 is out of range: give from 0 to 60000"),
        ({"ttft_ms": -1.0}, "--ttft -1: -1 is out of range"),
        ({"tokens": 0}, "--tokens 0: 0 is out of range: give from 1 to 100000"),
        ({"token_jitter_ms": 1e6}, "--token-jitter 1e+06: 1e+06 is out of range"),
        ({"max_reconnect_attempts": -1}, "--max-reconnect-attempts -1 is below 0"),
        (
            {"initial_backoff": 5.0, "max_backoff": 1.0},
            "--max-backoff / WS_MAX_BACKOFF_SECONDS = 1 is below --initial-backoff / WS_INITIAL_BACKOFF_SECONDS = 5",
        ),
        ({"max_backoff": 0.5}, "--max-backoff / WS_MAX_BACKOFF_SECONDS = 0.5 is below --initial-backoff"),
        ({"reconnect_rate": -1.0}, "--reconnect-rate -1 is below 0"),
        ({"reconnect_rate": float("inf")}, "--reconnect-rate inf is not finite"),
    ],
)
def test_a_bad_workload_option_is_one_line_before_anything_runs(opts, says):
    with pytest.raises(RunError) as info:
        RunOptions(clients=10, **opts).resolve()
    assert str(info.value).startswith(says) and "\n" not in str(info.value)


def test_a_bad_workload_file_lists_every_problem(tmp_path):
    wl = tmp_path / "w.yml"
    wl.write_text("classes:\n  a: {weight: 0}\n  b: {weight: 1, speed: 3}\n")
    with pytest.raises(RunError) as info:
        RunOptions(clients=10, workload=wl).resolve()
    assert str(info.value).splitlines() == [
        f"{wl}: class 'a': weight 0 is not a number > 0",
        f"{wl}: class 'b': unknown key 'speed': use weight, tokens, "
        "token_delay_ms, ttft_ms, token_jitter_ms, think_time_s, "
        "query_timeout_s, queries",
    ]


def test_fab_run_refuses_a_query_longer_than_a_query_may_last_before_anything_starts(tmp_path):
    """Each field within its bounds, the product (100,000 tokens x 60 s) is 69 days: one line, exit 2."""
    with pytest.raises(RunError, match=r"the query would last 69.4 days .* more than the 15 min"):
        RunOptions(clients=1, tokens=100_000, token_delay_ms=60_000).resolve()
    wl = tmp_path / "w.yml"
    wl.write_text("classes:\n  short: {weight: 1}\n  long: {weight: 1, tokens: 100000, token_delay_ms: 60000}\n")
    with pytest.raises(RunError, match=r"w.yml: class long: the query would last"):
        RunOptions(clients=1, workload=wl).resolve()
    RunOptions(clients=1, tokens=100, token_delay_ms=50).resolve()  # a usual query is fine
