"""fab run --plan FILE: a plan's keys, its errors (one line each, with their place), and the command line over it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from kit.run import RunError, RunOptions
from kit.run._planfile import PlanFileError, load_plan, parse_tags, plan_keys


def _plan(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "plan.yml"
    p.write_text(text)
    return p


def _resolved(path: Path, **given) -> RunOptions:
    opts = RunOptions(plan=path, given=frozenset(given), **given)
    opts.resolve()
    return opts


def test_plan_keys_are_the_options_flags_with_underscores_and_repeatables_by_their_plural():
    keys = plan_keys(iter(dataclasses.fields(RunOptions)))
    assert keys["think_time"].name == "think_time"
    assert keys["token_delay"].name == "token_delay_ms"  # the flag's name, not the field's
    assert keys["thresholds"].name == "thresholds" and "threshold" not in keys
    assert keys["tags"].name == "tags" and keys["chaos"].name == "chaos"
    assert "plan" not in keys and "run_id" not in keys


def test_a_plan_sets_the_run_and_the_command_line_overrides_it(tmp_path):
    path = _plan(
        tmp_path,
        "clients: 40\nqueries: 2\nthink_time: 0.5\ntoken_delay: 20\nthresholds: ['p99<2s', 'lost==0']\n"
        "chaos: ['kill:wsproxy@5s']\ntags: {build: 1.4.2, env: lab, canary: true}\nabort_on_fail: true\n",
    )
    opts = _resolved(path, queries=5, tags=["env=ci"])
    assert (opts.clients, opts.queries, opts.think_time, opts.token_delay_ms) == (40, 5, 0.5, 20.0)
    assert [t.text for t in opts.thresholds] == ["p99<2s", "lost==0"]
    assert opts.chaos == ["kill:wsproxy@5s"] and opts.abort_on_fail is True
    assert opts.tag_map() == {"build": "1.4.2", "env": "ci", "canary": "true"}  # the command line wins on env
    assert opts.plan_overridden == ["queries"]
    assert opts.loaded_plan is not None and opts.loaded_plan.values["clients"] == 40


def test_without_the_given_names_a_value_other_than_the_default_counts_as_given(tmp_path):
    opts = RunOptions(plan=_plan(tmp_path, "clients: 40\nmax_duration: 120\n"), clients=7)
    opts.resolve()
    assert (opts.clients, opts.max_duration) == (7, 120.0)


def test_every_problem_of_a_plan_is_one_line_with_its_place_in_the_file(tmp_path):
    path = _plan(
        tmp_path,
        "clients: -3\nthink_tim: 2\nthresholds: ['p99<2', 'lost==0']\n"
        "stages:\n  - {duration: 30s, target: 10}\n  - {duration: 0, target: 10}\n  - {duration: 5, target: -1}\n"
        "  - {duration: 5, target: 3, speed: 2}\ntags: {build: [1, 2]}\ntls: yes-please\nchaos: ['explode:all@1s']\n",
    )
    with pytest.raises(PlanFileError) as err:
        load_plan(path, iter(dataclasses.fields(RunOptions)))
    problems = err.value.problems
    text = "\n".join(problems)
    assert any(p.startswith("clients: -3 is below 1") for p in problems), text
    assert "think_tim: not an option of a plan: did you mean think_time?" in problems
    assert any(p.startswith("thresholds[0]: ") for p in problems) and not any("thresholds[1]" in p for p in problems)
    assert "stages[1].duration: give seconds > 0: 30, 30s or 2m" in problems
    assert "stages[2].target: must be a number >= 0" in problems
    assert any(p.startswith("stages[3].speed: not a key of a stage") for p in problems)
    assert "tags.build: a tag's value is one word or number" in problems
    assert any(p.startswith("tls: 'yes-please' is not true or false") for p in problems)
    assert any(p.startswith("chaos[0]: ") for p in problems)
    assert len(problems) == 9, text
    assert all(line.startswith(f"--plan {path}: ") for line in str(err.value).splitlines())


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("- clients\n", "a plan is a mapping of option names to values"),
        ("clients: [1\n", "not valid YAML"),
        ("stages: []\n", "stages: give at least one stage"),
        ("stages: {duration: 3}\n", "stages: give a list"),
        ("workload: 3\n", "workload: give a workload file's path, or its classes inline"),
    ],
)
def test_a_malformed_plan_is_refused_saying_how_to_write_it(tmp_path, text, problem):
    with pytest.raises(RunError) as err:
        _resolved(_plan(tmp_path, text), clients=1)
    assert problem in str(err.value)


def test_a_missing_plan_file_is_one_line(tmp_path):
    with pytest.raises(RunError, match=r"--plan .*nope.yml: cannot read it"):
        _resolved(tmp_path / "nope.yml", clients=1)


def test_paths_in_a_plan_are_relative_to_its_folder_and_an_inline_workload_becomes_a_file(tmp_path):
    (tmp_path / "sub").mkdir()
    path = _plan(
        tmp_path,
        "clients: 4\nworkload:\n  seed: 7\n  classes:\n    short: {weight: 3, tokens: 5}\n    long: {weight: 1, tokens: 50}\n",
    )
    opts = _resolved(path)
    assert opts.workload is not None and opts.workload.is_file()
    assert opts.workload_seed == 7
    opts = _resolved(_plan(tmp_path, "clients: 4\nca_file: sub/ca.crt\n"))
    assert opts.ca_file == tmp_path / "sub" / "ca.crt"


def test_a_bad_inline_workload_names_the_plan_not_a_temporary_file(tmp_path):
    with pytest.raises(RunError) as err:
        _resolved(_plan(tmp_path, "clients: 4\nworkload:\n  classes:\n    a: {weight: -1}\n"))
    assert "workload: " in str(err.value) and "loadkit-plan-workload" not in str(err.value)


def test_tags_are_key_value_and_a_malformed_one_is_refused():
    assert parse_tags(["build=1.4", "env = lab", "note=a=b"]) == {"build": "1.4", "env": "lab", "note": "a=b"}
    with pytest.raises(Exception, match=r"--tag 'build': write key=value"):
        parse_tags(["build"])
    opts = RunOptions(clients=1, tags=["=x"])
    with pytest.raises(RunError, match="write key=value"):
        opts.resolve()


def test_the_open_model_needs_no_clients_and_is_sized_by_its_arrivals():
    opts = RunOptions(arrival_rate=20.0, duration=30.0)
    opts.resolve()
    assert opts.clients == 600


@pytest.mark.parametrize("name", ["chat-soak.yml", "spike.yml", "capacity.yml"])
def test_the_plans_the_readme_shows_resolve(name):
    opts = _resolved(Path(__file__).resolve().parents[2] / "plans" / name)
    assert opts.loaded_plan is not None and opts.tag_map()["scenario"] == name.removesuffix(".yml")
    assert opts.clients >= 100


def test_each_generator_gets_its_share_of_every_stage_and_a_seed_of_its_own(tmp_path):
    from kit.client import parse_stages
    from kit.run._options import generator_settings
    from kit.run._plan import plan_generators

    opts = _resolved(_plan(tmp_path, "stages: [{duration: 10, target: 90}, {duration: 5, target: 0}]\nseed: 3\n"))
    assert opts.clients == 90 and opts.seed == 3
    slots = plan_generators(opts.clients, {"g1": 2, "g2": 1}, ["lb"])
    settings = [generator_settings(s, opts) for s in slots]
    peaks = [parse_stages(v["stages"])[0].target for v in settings]
    assert sum(peaks) == pytest.approx(90) and [round(p) for p in peaks] == [s.clients for s in slots]
    assert len({v["seed"] for v in settings}) == len(slots)  # distinct, and the same for the same plan seed
    assert [v["seed"] for v in settings] == [generator_settings(s, opts)["seed"] for s in slots]


def test_a_drawn_schedule_without_a_seed_gets_one_recorded():
    opts = RunOptions(clients=5, arrivals="poisson", arrival_rate=2.0, duration=5.0)
    opts.resolve()
    assert isinstance(opts.seed, int)
    plain = RunOptions(clients=5)
    plain.resolve()
    assert plain.seed is None


def test_an_inline_workloads_file_lasts_as_long_as_the_process_and_a_refused_one_not_at_all(tmp_path):
    import os
    import subprocess
    import sys

    good = _plan(tmp_path, "clients: 4\nworkload:\n  classes:\n    a: {weight: 1, tokens: 5}\n")
    (tmp_path / "bad").mkdir()
    bad = _plan(tmp_path / "bad", "clients: 4\nworkload:\n  classes:\n    a: {weight: -1}\n")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    code = (
        "import dataclasses, sys, pathlib\n"
        "from kit.run import RunOptions\n"
        "from kit.run._planfile import PlanFileError, load_plan\n"
        "fields = lambda: iter(dataclasses.fields(RunOptions))\n"
        "try:\n    load_plan(pathlib.Path(sys.argv[2]), fields())\nexcept PlanFileError:\n    pass\n"
        "assert not list(pathlib.Path(sys.argv[3]).iterdir())  # the refused one: removed at once\n"
        "plan = load_plan(pathlib.Path(sys.argv[1]), fields())\n"
        "path = plan.values['workload']\n"
        "assert path.is_file() and path.parent == pathlib.Path(sys.argv[3])\n"
        "print(path)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(good), str(bad), str(scratch)],
        env={**os.environ, "TMPDIR": str(scratch)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().startswith(str(scratch))
    assert not list(scratch.iterdir())  # gone when the process ended
