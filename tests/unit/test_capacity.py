"""kit.run._capacity: the step-then-bisect search over a fake runner (pure policy), its stops and its output."""

from __future__ import annotations

import pytest

from kit.run._capacity import StepRule, format_result, next_load, parse_step, search, write_capacity_html
from kit.run._plan import PlanError, parse_threshold

SLOS = [parse_threshold("delivery_p99<50ms"), parse_threshold("success>=99.9%")]


class FakeSystem:
    """Delivery p99 grows with load and crosses 50 ms at *knee* + 1 sessions; the generator overloads at *overload*."""

    def __init__(self, knee: int, overload: int | None = None, fail_success_at: int | None = None) -> None:
        self.knee, self.overload, self.fail_success_at = knee, overload, fail_success_at
        self.calls: list[int] = []

    def __call__(self, load: int, index: int):
        self.calls.append(load)
        p99 = 50.0 * load / (self.knee + 0.5)
        success = 99.0 if self.fail_success_at is not None and load >= self.fail_success_at else 100.0
        summary = {
            "total_sessions": load,
            "success_rate": success,
            "tps": 10.0 * load,
            "delivery_latency_ms": {"count": 100, "p99": p99},
            "generator": {"generator_overloaded": self.overload is not None and load >= self.overload},
            "bottleneck": {
                "component": "wsproxy",
                "host": "h1",
                "peak_cores": 0.97,
                "usable_cores": 1,
                "ratio": 0.97,
                "saturated": True,
            },
        }
        return (1 if p99 >= 50 or success < 99.9 else 0), summary, f"cap-s{index + 1}-c{load}"


def run(system, **kw):
    opts = {"start": 10, "rule": StepRule(factor=2.0), "maximum": 10_000, "resolution": 1} | kw
    return search(system, SLOS, say=lambda _line: None, **opts)


def test_steps_up_then_bisects_to_the_exact_knee():
    system = FakeSystem(knee=137)
    res = run(system)
    assert system.calls[:5] == [10, 20, 40, 80, 160]  # doubling until 160 breaks the SLO
    assert all(80 < c < 160 for c in system.calls[5:])  # then only inside the bracket
    assert res.knee.load == 137 and res.first_failing.load == 138
    assert res.first_failing.broken == ["delivery_p99<50ms"]
    assert len(system.calls) <= 5 + 7  # log2(80) bisection steps
    text = format_result(res)
    assert "knee: 137 sessions met every SLO" in text
    assert "first failing: 138 sessions broke delivery_p99<50ms; bottleneck wsproxy on h1" in text


def test_resolution_stops_the_bisection_early():
    res = run(FakeSystem(knee=137), resolution=10)
    assert res.first_failing.load - res.knee.load <= 10 and res.knee.load <= 137 < res.first_failing.load


def test_an_additive_step_and_the_maximum():
    system = FakeSystem(knee=10_000)
    res = run(system, start=100, rule=parse_step("+100"), maximum=350)
    assert system.calls == [100, 200, 300, 350]
    assert res.knee.load == 350 and res.first_failing is None
    assert res.reason == "every SLO held up to --max 350 sessions"


def test_an_overloaded_generator_is_no_failure_and_stops_the_search():
    system = FakeSystem(knee=1000, overload=80)
    res = run(system)
    assert system.calls == [10, 20, 40, 80]
    assert res.first_failing is None and res.knee.load == 40
    assert "generator was overloaded at 80 sessions" in res.reason


def test_any_broken_slo_counts():
    res = run(FakeSystem(knee=1000, fail_success_at=55))
    assert res.knee.load == 54 and res.first_failing.broken == ["success>=99.9%"]


def test_a_failing_start_bisects_down_and_says_when_nothing_passes():
    res = run(FakeSystem(knee=3), start=10)
    assert res.knee.load == 3
    res = run(FakeSystem(knee=0), start=4)
    assert res.knee is None and res.reason == "even 1 session breaks an SLO"


def test_next_load_is_pure_over_the_history():
    assert next_load([], start=7, rule=StepRule(add=5), maximum=100, resolution=1) == (7, "start")


@pytest.mark.parametrize(
    "text, rule",
    [("x2", StepRule(factor=2.0)), ("*1.5", StepRule(factor=1.5)), ("50", StepRule(add=50)), ("+25", StepRule(add=25))],
)
def test_parse_step(text, rule):
    assert parse_step(text) == rule


@pytest.mark.parametrize("text", ["x1", "0", "-5", "two", ""])
def test_bad_steps_say_how_to_write_them(text):
    with pytest.raises(PlanError, match="--step"):
        parse_step(text)


def test_bad_bounds_and_missing_slos():
    with pytest.raises(PlanError, match="--start"):
        search(FakeSystem(10), SLOS, start=50, rule=StepRule(add=1), maximum=10)
    with pytest.raises(PlanError, match="--slo"):
        search(FakeSystem(10), [], start=1, rule=StepRule(add=1), maximum=10)


def test_capacity_page_charts_every_slo_and_tokens(tmp_path):
    res = run(FakeSystem(knee=37))
    page = write_capacity_html(tmp_path / "cap.html", res)
    html = page.read_text()
    assert html.count('class="chart-box"') == 3 and "knee: 37 sessions" in html


# -- execute_capacity: each step a run of the base options, the exit status, the --json document ----------


class FakeExecute:
    """kit.run.execute's stand-in: records each step's options and writes the summary *system* gives its load;
    *interrupt_at*: the run at that load ends by Ctrl-C (exit 130)."""

    def __init__(self, system: FakeSystem, interrupt_at: int | None = None) -> None:
        self.system, self.interrupt_at, self.opts = system, interrupt_at, []

    def __call__(self, opts, *, out=print, **_kw) -> int:
        import json

        self.opts.append(opts)
        rc, summary, _ = self.system(opts.clients, len(self.opts) - 1)
        if opts.clients == self.interrupt_at:
            rc, summary = 130, summary | {"interrupted": ["SIGINT"], "partial": True}
        (opts.results_dir / opts.run_id).mkdir(parents=True)
        (opts.results_dir / opts.run_id / "summary.json").write_text(json.dumps(summary))
        return rc


def _capacity(tmp_path, monkeypatch, fake, **kw):
    import kit.run._run
    from kit.run import RunOptions, execute_capacity

    monkeypatch.setattr(kit.run._run, "execute", fake)
    base = RunOptions(inventory=tmp_path / "inv.yml", clients=1, tokens=7, results_dir=tmp_path / "res", live=False)
    docs: list[dict] = []
    rc, res = execute_capacity(
        base,
        ["delivery_p99<50ms", "success>=99.9%"],
        start=10,
        step="x2",
        maximum=10_000,
        name="cap",
        say=lambda _line: None,
        on_result=docs.append,
        **kw,
    )
    return rc, res, docs


def test_every_step_runs_the_base_options_with_the_search_load_and_the_slos_alone(tmp_path, monkeypatch):
    fake = FakeExecute(FakeSystem(knee=37))
    rc, res, docs = _capacity(tmp_path, monkeypatch, fake)
    assert rc == 0 and res.knee.load == 37
    for opts in fake.opts:
        assert opts.tokens == 7  # a fab run option given to fab capacity reaches every step
        assert [t.text for t in opts.thresholds] == ["delivery_p99<50ms", "success>=99.9%"]
        assert opts.no_default_thresholds and opts.arrival_rate is None and opts.duration is None
        assert opts.ramp == max(1.0, opts.clients / 5) and opts.run_id.startswith("cap-s")
    assert [o.clients for o in fake.opts][:3] == [10, 20, 40]


def test_the_json_document_of_a_search(tmp_path, monkeypatch):
    import json

    rc, res, docs = _capacity(tmp_path, monkeypatch, FakeExecute(FakeSystem(knee=37)), ramp=4.0)
    assert len(docs) == 1
    doc = json.loads(json.dumps(docs[0], default=str))
    assert list(doc) == [
        "exit_status",
        "outcome",
        "name",
        "reason",
        "slos",
        "knee",
        "first_failing",
        "steps",
        "json_file",
        "html_file",
    ]
    assert doc["exit_status"] == 0 and doc["outcome"] == "knee_found" and doc["name"] == "cap"
    assert doc["knee"]["load"] == 37 and doc["first_failing"]["load"] == 38
    assert doc["knee"]["run_id"] == res.knee.run_id and doc["knee"]["interrupted"] is False
    assert json.loads((tmp_path / "res" / "cap.json").read_text())["knee"]["load"] == 37
    assert doc["json_file"] == str(tmp_path / "res" / "cap.json") and doc["html_file"].endswith("cap.html")
    rc, _, docs = _capacity(tmp_path / "none", monkeypatch, FakeExecute(FakeSystem(knee=0)))
    assert rc == 1 and docs[0]["outcome"] == "no_load_met_slos" and docs[0]["knee"] is None


def test_an_interrupted_step_ends_the_search_with_its_exit_status_and_no_verdict(tmp_path, monkeypatch):
    fake = FakeExecute(FakeSystem(knee=1000), interrupt_at=40)
    rc, res, docs = _capacity(tmp_path, monkeypatch, fake)
    assert [o.clients for o in fake.opts] == [10, 20, 40]  # nothing after the interrupted step
    assert rc == 130 and docs[0]["exit_status"] == 130 and docs[0]["outcome"] == "interrupted"
    assert res.reason == "interrupted during the run at 40 sessions"
    assert res.first_failing is None and res.knee.load == 20  # the interrupted load is neither pass nor fail
    assert "40 sessions: interrupted" in format_result(res)


def test_a_step_marks_what_it_sets_as_given_so_a_plan_file_cannot_replace_it():
    from types import SimpleNamespace

    from kit.run._capacity import step_changes

    changes = step_changes(SimpleNamespace(given=frozenset({"tokens"})), 40, "cap-s3-c40", SLOS, None)
    assert changes["clients"] == 40 and changes["ramp"] == 8.0 and changes["arrival_rate"] is None
    assert changes["given"] >= {"tokens", "clients", "run_id", "thresholds", "arrival_rate", "duration", "ramp"}
    assert "given" not in step_changes(SimpleNamespace(given=None), 40, "x", SLOS, 2.0)
    assert "given" not in step_changes(SimpleNamespace(), 40, "x", SLOS, 2.0)


def test_a_plan_files_options_reach_every_step_but_what_the_search_sets(tmp_path, monkeypatch):
    """fab capacity --plan FILE: the plan's ramp paces each step, its other options apply under the command
    line's, and the load, thresholds and closed model stay the search's."""
    import dataclasses

    import kit.run._run
    from kit.run import RunOptions, execute_capacity

    plan = tmp_path / "plan.yml"
    plan.write_text("clients: 100\nqueries: 5\nramp: 4\narrival_rate: 9\ntokens: 60\ntags: {scenario: cap}\n")
    resolved = []

    def fake(opts, **_kw):
        import json

        opts.resolve()  # what execute does first: the plan applied under what was given
        resolved.append(opts)
        (opts.results_dir / opts.run_id).mkdir(parents=True)
        (opts.results_dir / opts.run_id / "summary.json").write_text(
            json.dumps({"success_rate": 100.0, "total_sessions": opts.clients})
        )
        return 0

    monkeypatch.setattr(kit.run._run, "execute", fake)
    base = RunOptions(
        inventory=tmp_path / "inv.yml", clients=1, plan=plan, tokens=30, given=frozenset({"plan", "tokens"})
    )
    base = dataclasses.replace(base, results_dir=tmp_path / "res", live=False)
    rc, res = execute_capacity(base, ["success>=99%"], start=10, step="x2", maximum=20, say=lambda _l: None)
    assert rc == 0 and [o.clients for o in resolved] == [10, 20]
    for o in resolved:
        assert (o.queries, o.ramp, o.tokens, o.arrival_rate) == (5, 4.0, 30, None)  # tokens: the command line's
        assert o.tag_map() == {"scenario": "cap"} and [t.text for t in o.thresholds] == ["success>=99%"]
