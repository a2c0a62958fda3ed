"""``fab run``'s options, checked once on the controller, and what each generator is given of them.

:class:`RunOptions` holds the load options ``fab run`` takes (declared once in :mod:`kit.options`,
``fab=True``) and the run's own, each declared with :func:`kit.config.setting`; ``fabfile.py`` builds
the task from these fields.  :meth:`RunOptions.resolve` applies the preset and checks every option
before anything starts: a bad one is a one-line :class:`RunError` (exit 2).

:func:`generator_settings` is one generator's settings file (:data:`kit.options.SETTINGS_FILE`), its
share of the load; :func:`settings_path`, :func:`ca_path` and :func:`workload_path` say where a
generator's copies go, beside its output folder.  Pure: nothing here reaches a host.
"""

from __future__ import annotations

import dataclasses
import math
import random
import zlib
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from kit import options
from kit.config import ConfigError, setting
from kit.paths import REPO

from ._chaos import ChaosError, ChaosSpec, parse_chaos
from ._exporter import parse_listen
from ._plan import PRESETS, GeneratorSlot, Threshold, judged_thresholds
from ._planfile import Plan, PlanFileError, load_plan, parse_tags

__all__ = ["RunOptions", "RunError", "generator_settings", "settings_path", "ca_path", "workload_path"]

#: seconds past --max-duration before a generator counts as hung and is stopped (RunOptions.grace)
GRACE_S = 30.0


class RunError(RuntimeError):
    """The run cannot start (bad options, unhealthy services, insufficient limits); exit 2."""


#: the load options fab run takes, declared once in kit.options (fab=True): None is not given (the generator's own)
_GivenLoadOptions: Any = dataclasses.make_dataclass("GivenLoadOptions", options.given_fields(), kw_only=True)


@dataclasses.dataclass(kw_only=True)
class RunOptions(_GivenLoadOptions):
    """``fab run``'s options: the load options it takes (:class:`kit.options.LoadOptions`, ``fab=True``) and
    the run's own, declared below the same way (``setting``: default, flag, bounds, help); fabfile.py builds
    the task from these fields.  :meth:`resolve` checks them, once, before anything starts."""

    if TYPE_CHECKING:  # load options of the generated base class (Any to mypy) that resolve assigns
        # None until resolve() fills them in (from the preset, or queries' default) or refuses the run
        clients: int
        queries: int
        ramp: float | None = None
        workload_seed: int | None = None
        seed: int | None = None
        max_duration: float

    inventory: Path = setting(
        REPO / "inventory" / "local.yml",
        option="--inventory",
        help="Ansible inventory to use (default inventory/local.yml)",
    )
    #: a plan file (YAML, kit.run._planfile): every option of the run; the command line's override it
    plan: Path | None = setting(
        None,
        option="--plan",
        help="plan file (YAML): the run's options, stages, thresholds, chaos and tags in one file; options "
        "given here override it (README 'Benchmark as code')",
    )
    #: free-form labels of the run (summary.json's ``tags``), for fab compare and fab analyze to select by
    tags: list[str] = setting(
        factory=list,
        option="--tag",
        help="key=value label of the run, repeatable (summary.json's tags; fab compare / analyze select by them)",
    )
    preset: str | None = setting(None, option="--preset", help=f"{' | '.join(PRESETS)} (the seed's scenarios)")
    thresholds: list[Threshold] = setting(
        factory=list,
        option="--threshold",
        help="pass/fail rule, repeatable: 'p99<2s', 'p50<=500ms', 'success>=99.9%', "
        "'lost==0'; replaces the default on its metric",
    )
    #: judge the run by ``thresholds`` alone, without the defaults (kit.run._plan.DEFAULT_THRESHOLDS)
    no_default_thresholds: bool = setting(
        False,
        option="--no-default-thresholds",
        help="judge the run by --threshold alone: without it, 'success>=99%' and "
        "'lost==0' apply to every metric no --threshold names",
    )
    #: stop the run as soon as the live merge shows a threshold failed for good (._summary.live_failures)
    abort_on_fail: bool = setting(
        False,
        option="--abort-on-fail",
        help="stop the run as soon as a threshold has failed for good (judged every second "
        "on the live figures after --abort-grace); recorded as aborted, exit 1",
    )
    #: seconds after the agreed start before --abort-on-fail judges (early percentiles rest on few samples)
    abort_grace: float = setting(
        10.0, option="--abort-grace", minimum=0.0, help="seconds after the start before --abort-on-fail judges"
    )
    #: seconds past --max-duration before a generator counts as hung and is stopped
    grace: float = GRACE_S
    results_dir: Path = REPO / "results"
    run_id: str | None = setting(None, option="--run-id", help="name of the run (default <date>-<time>-c<clients>)")
    live: bool = True
    skip_health: bool = setting(False, option="--skip-health", help="do not check service health before the run")
    #: faults during the run (``ACTION:TARGET@AT[+FOR][=ARG]``, see :mod:`kit.run._chaos`)
    chaos: list[str] = setting(
        factory=list,
        option="--chaos",
        help="fault during the run, repeatable: ACTION:TARGET@AT[+FOR][=ARG], e.g. "
        "kill:wsproxy@20s, restart:redis@30s, pause:wsproxy[1]@15s+5s, "
        "partition:wsproxy@40s+3s, delay:wsproxy@10s+20s=50ms, kill:wsproxy[all]@20s",
    )
    #: a workload file (weighted classes of sessions, kit.client._workload), copied to every generator
    workload: Path | None = setting(
        None,
        option="--workload",
        help="workload file (YAML): weighted classes of sessions overriding the workload "
        "options, copied to every generator (README 'Workload')",
    )
    #: https:// and wss:// toward the balancers (the haproxy role's haproxy_tls), verified against ca_file
    tls: bool = setting(
        False,
        option="--tls",
        help="https:// and wss:// toward the balancers (deployed with "
        "haproxy_tls: true); generators verify the certificates against "
        "the kit CA",
    )
    #: the CA certificate generators trust with tls, copied to each (default: the kit CA in .secrets/)
    ca_file: Path | None = setting(
        None, option="--ca-file", help="with --tls: the CA certificate generators trust (default .secrets/kit_ca.crt)"
    )
    #: ADDR:PORT where the run's live merged figures are served for Prometheus while it lasts (._exporter)
    metrics_listen: str | None = setting(
        None,
        option="--metrics-listen",
        help="ADDR:PORT where the run's live merged figures are served for "
        "Prometheus while it lasts (e.g. 0.0.0.0:9464; README 'Prometheus')",
    )

    #: the names of the options given on the command line (fabfile.py): they override the plan's.  None: every
    #: option whose value is not its default counts as given
    given: frozenset[str] | None = dataclasses.field(default=None, repr=False)
    #: the plan file as read (resolve); the options the command line overrode in it
    loaded_plan: Plan | None = dataclasses.field(default=None, init=False, repr=False)
    plan_overridden: list[str] = dataclasses.field(default_factory=list, init=False)

    def resolve(self) -> None:
        """Apply the plan and the preset under explicit options and check every option (kit.options.check),
        once."""
        self._apply_plan()
        try:
            parse_tags(self.tags)
        except ConfigError as exc:
            raise RunError(str(exc)) from None
        self._size_from_model()
        if self.seed is None and (self.stages or self.arrivals == "poisson"):
            # a drawn schedule is repeatable only with its seed: draw it here, once, and record it (run.json)
            self.seed = random.SystemRandom().randrange(2**31)
        if self.preset is not None:
            if self.preset not in PRESETS:
                raise RunError(f"--preset {self.preset!r}: choose one of {', '.join(PRESETS)}")
            p = PRESETS[self.preset]
            self.clients = p.clients if self.clients is None else self.clients
            self.queries = p.queries if self.queries is None else self.queries
            self.ramp = p.ramp if self.ramp is None else self.ramp
        if self.clients is None:
            raise RunError("--clients: give a number of clients >= 1 (or --preset smoke, --arrival-rate or --stages)")
        if self.queries is None:
            self.queries = options.default("queries")
        declared = {f.name: f for f in dataclasses.fields(_GivenLoadOptions)}
        try:
            for name, f in declared.items():
                options.parse_option(f, getattr(self, name))
            # what was given over the declared defaults: a rule between two options sees both
            options.check({name: options.default(name) for name in declared} | self.load_options())
        except ConfigError as exc:
            raise RunError(str(exc)) from None
        if self.abort_on_fail and not 0 <= self.abort_grace <= self.max_duration:
            raise RunError(
                f"--abort-grace {self.abort_grace:g}: give seconds from 0 to --max-duration ({self.max_duration:g})"
            )
        self._resolve_workload()
        if self.metrics_listen is not None:
            try:
                parse_listen(self.metrics_listen)
            except ValueError as exc:
                raise RunError(str(exc)) from None
        for spec in self.chaos_specs():
            if spec.at_s + spec.for_s > self.max_duration:
                raise RunError(
                    f"--chaos {spec.text!r}: ends at {spec.at_s + spec.for_s:g} s, after "
                    f"--max-duration {self.max_duration:g}"
                )

    def _apply_plan(self) -> None:
        """The plan's values under the options given on the command line (tags: the plan's, then the
        command line's on the same key)."""
        if self.plan is None:
            return
        try:
            plan = load_plan(self.plan, iter(dataclasses.fields(self)))
        except PlanFileError as exc:
            raise RunError(str(exc)) from None
        fields = {f.name: f for f in dataclasses.fields(self)}
        for name, value in plan.values.items():
            if not self._given(fields[name]):
                setattr(self, name, value)
            elif name == "tags":
                self.tags = [*value, *self.tags]
            else:
                self.plan_overridden.append(name)
        self.loaded_plan = plan

    def _given(self, f: dataclasses.Field) -> bool:
        if self.given is not None:
            return f.name in self.given
        default = f.default_factory() if callable(f.default_factory) else f.default
        return getattr(self, f.name) != default

    def _size_from_model(self) -> None:
        """Without --clients: the open model's sessions (rate x duration), the sessions the run starts in all
        and shares out by; stages: the closed model's peak (each generator holds its share of every stage)."""
        if self.clients is not None or self.preset is not None:
            return
        from kit.client import parse_stages, rate_integral, slot_count, stages_length

        try:
            stages = parse_stages(self.stages) if self.stages else ()
        except ConfigError as exc:
            raise RunError(str(exc)) from None
        if self.arrival_rate is not None:  # the rate ramps linearly from --arrival-rate through each stage's target
            total = rate_integral(stages, self.arrival_rate) if stages else self.arrival_rate * (self.duration or 0)
            self.clients = max(1, math.ceil(total))
        elif stages:
            self.clients = max(1, slot_count(stages))
        fields = {f.name: f for f in dataclasses.fields(self)}
        if stages and not self._given(fields["max_duration"]):  # the bound of a run its stages make longer
            timeout = self.query_timeout if self.query_timeout is not None else options.default("query_timeout")
            self.max_duration = max(self.max_duration, math.ceil(stages_length(stages) + timeout + 30))

    def tag_map(self) -> dict[str, str]:
        """The run's tags (checked by resolve): key -> value, the last given of a key winning."""
        return parse_tags(self.tags)

    def load_options(self) -> dict[str, Any]:
        """The load options given (kit.options names; those not given left out)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(_GivenLoadOptions)
            if getattr(self, f.name) is not None
        }

    def _resolve_workload(self) -> None:
        from kit.client import Workload, WorkloadError, draw_seed, duration_problems, load_workload

        wl = Workload()
        if self.workload is not None:
            try:
                wl = load_workload(self.workload)
            except WorkloadError as exc:
                raise RunError(str(exc)) from None
            self.workload_seed = draw_seed(wl, self.workload_seed)
        problems = duration_problems(wl, self.tokens, self.token_delay_ms, self.ttft_ms, self.token_jitter_ms)
        if problems:
            raise RunError(problems[0])

    def judged_by(self) -> list[Threshold]:
        """The thresholds the run is judged by: the user's, then each default on a metric they do not name."""
        return judged_thresholds(self.thresholds, defaults=not self.no_default_thresholds)

    def chaos_specs(self) -> list[ChaosSpec]:
        """The parsed ``--chaos`` specs; RunError (one line) for a bad one."""
        try:
            return [parse_chaos(t) for t in self.chaos]
        except ChaosError as exc:
            raise RunError(str(exc)) from None


def generator_settings(slot: GeneratorSlot, opts: RunOptions, sources: list[str] | None = None) -> dict[str, Any]:
    """One generator's settings file (kit.options.SETTINGS_FILE): the load options the run was given
    (checked by :meth:`RunOptions.resolve`; those not given are left to the generator), with its share of
    the sessions, of the ramp, of the arrivals and of each stage's target, and draw seeds of its own (each
    generator draws its own sessions' classes and arrival instants: the same draws would repeat otherwise) and the source addresses its host's
    connections leave from (*sources*: the inventory's ``generator_source_addresses``)."""
    values = opts.load_options() | {"clients": slot.clients, "arrival_rate": slot.arrival_rate}
    if opts.ramp is not None:
        values["ramp"] = opts.ramp * slot.clients / opts.clients
    if slot.arrival_rate is None:
        values.pop("duration", None)
    values.pop("workload_seed", None)
    mine = zlib.crc32(slot.label.encode())  # each generator draws its own: the same draws would repeat otherwise
    if opts.workload is not None:
        values["workload_seed"] = ((opts.workload_seed or 0) + mine) % 2**31
    if opts.seed is not None:
        values["seed"] = (opts.seed + mine) % 2**31
    if opts.stages:  # each generator holds its share of every stage's target (sessions, or arrivals per second)
        from kit.client import format_stages, parse_stages, scale_stages

        values["stages"] = format_stages(scale_stages(parse_stages(opts.stages), slot.clients / opts.clients))
    if sources:
        values["source_addresses"] = ",".join(sources)
    return values


def settings_path(out_dir: str) -> PurePosixPath:
    """Where a generator's settings file goes: beside its output folder (collected with it)."""
    return PurePosixPath(out_dir).parent / options.SETTINGS_FILE


def ca_path(out_dir: str) -> PurePosixPath:
    """Where a generator's copy of the CA certificate goes (``--tls``): beside its output folder."""
    return PurePosixPath(out_dir).parent / "ca.crt"


def workload_path(out_dir: str) -> PurePosixPath:
    """Where a generator's copy of the workload file goes: beside its output folder."""
    return PurePosixPath(out_dir).parent / "workload.yml"
