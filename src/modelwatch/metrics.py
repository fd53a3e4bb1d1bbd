"""Prometheus metrics: per-probe series (DESIGN.md) and the daemon's self-metrics.

Probe series are kept as plain numbers per job and rendered by :meth:`ProbeMetrics.render`
in small slices that yield to the event loop in between. A thousand targets make
~50,000 lines; rendering them in one go (prometheus_client's ``generate_latest``
took half a second, holding the GIL even from a worker thread) stalled the loop
and put hundreds of milliseconds into the TTFTs being measured at that moment.

How each provider's probes kept to their schedule (start delay, slot waits,
concurrency needed) is rendered the same way, a few series per provider. The
daemon's few other self-metrics use prometheus_client on ``registry``, so tests can
build a fresh ``CollectorRegistry``. Labels are ``target``, ``provider``, ``model``,
``kind`` (plus ``location`` when the config sets one); error codes and messages are
never labels.
"""

from __future__ import annotations

import asyncio
import bisect
import platform
import time
from collections.abc import Callable, Iterator

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics,
                               generate_latest)

from modelwatch import __version__
from modelwatch.job import ProbeJob
from modelwatch.outcomes import Outcome, ProbeResult, turn_band
from modelwatch.probes import detail_series, probe_info

# The *_created series would double what every scrape renders and say nothing useful here.
disable_created_metrics()

LLM_BUCKETS = (0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 8, 13, 20, 30, 60)
LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
# Start delays and slot waits: a millisecond (on time) to minutes (a schedule far behind).
DELAY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# What a probe waited for before it started, in the order it waits: the other kinds of its
# target, its provider's max_concurrent_probes, the global max_concurrent_probes.
WAIT_LIMITS = ("target", "provider", "global")
BASE_LABELS = ("target", "provider", "model", "kind")
OUTCOMES = tuple(o.value for o in Outcome)
_OUTCOME_INDEX = {name: i for i, name in enumerate(OUTCOMES)}
RENDER_SLICE_S = 0.0005  # yield to the loop after this much rendering work


def _num(value: float) -> str:
    """A sample value as Prometheus writes it."""
    if value == float("inf"):
        return "+Inf"
    return repr(float(value))


_LE = tuple(_num(b) for b in LLM_BUCKETS) + ("+Inf",)
# Barge-in acknowledgements: a round trip (tens of ms) to a server that finishes its sentence first.
INTERRUPT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5)
_INTERRUPT_LE = tuple(_num(b) for b in INTERRUPT_BUCKETS) + ("+Inf",)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Histogram:
    """Bucket counts (not cumulative) and the sum of one series, over LLM_BUCKETS or others."""

    __slots__ = ("counts", "total", "buckets", "le")

    def __init__(self, buckets: tuple[float, ...] = LLM_BUCKETS, le: tuple[str, ...] = _LE) -> None:
        self.buckets, self.le = buckets, le
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value

    def lines(self, name: str, labels: str) -> Iterator[str]:
        cumulative = 0
        for le, count in zip(self.le, self.counts, strict=True):
            cumulative += count
            yield f'{name}_bucket{{{labels},le="{le}"}} {cumulative}.0\n'
        yield f"{name}_count{{{labels}}} {cumulative}.0\n"
        yield f"{name}_sum{{{labels}}} {_num(self.total)}\n"


class _Series:
    """Everything exported about one job."""

    __slots__ = ("labels", "success", "last_run", "outcomes", "duration", "ttft", "tokens", "skipped",
                 "cost_usd", "interval", "phases", "stages", "turn_bands", "interrupt", "info")

    def __init__(self, labels: str, interval: float) -> None:
        self.labels = labels
        self.interval = interval
        self.success: float | None = None  # absent until the first probe completes
        self.last_run: float | None = None
        self.outcomes = [0] * len(OUTCOMES)
        self.duration = _Histogram()
        self.ttft = _Histogram()
        self.tokens = [0, 0]
        self.skipped = 0
        self.cost_usd = 0.0
        self.phases: tuple[float | None, ...] = (None,) * len(PHASES)  # of the last completed probe
        # Only the probes that have them: a voice chain's stages, a conversation's turn bands, barge-in.
        self.stages: dict[str, _Histogram] = {}
        self.turn_bands: dict[str, _Histogram] = {}
        self.interrupt: _Histogram | None = None
        self.info = ""  # the modelwatch_probe_info labels beside the series' own


def _family(name: str, kind: str, help_text: str,
            lines: Callable[[_Series], Iterator[str]]) -> tuple[str, str, Callable]:
    return name, f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n", lines


def _gauge_line(name: str, attr: str) -> Callable[[_Series], Iterator[str]]:
    def lines(s: _Series) -> Iterator[str]:
        value = getattr(s, attr)
        if value is not None:
            yield f"{name}{{{s.labels}}} {_num(value)}\n"
    return lines


def _outcome_lines(s: _Series) -> Iterator[str]:
    for outcome, count in zip(OUTCOMES, s.outcomes, strict=True):
        yield f'modelwatch_probes_total{{{s.labels},outcome="{outcome}"}} {count}.0\n'


PHASES = ("connect", "ttfb", "ttft", "duration", "signal", "ice", "dtls", "channel")


def _phase_lines(s: _Series) -> Iterator[str]:
    for phase, value in zip(PHASES, s.phases, strict=True):
        if value is not None:  # a phase the last probe never reached has no sample
            yield f'modelwatch_probe_phase_seconds{{{s.labels},phase="{phase}"}} {_num(value)}\n'


def _token_lines(s: _Series) -> Iterator[str]:
    yield f'modelwatch_probe_tokens_total{{{s.labels},direction="input"}} {s.tokens[0]}.0\n'
    yield f'modelwatch_probe_tokens_total{{{s.labels},direction="output"}} {s.tokens[1]}.0\n'


def _stage_lines(s: _Series) -> Iterator[str]:
    for stage, hist in s.stages.items():
        yield from hist.lines("modelwatch_probe_stage_seconds", f'{s.labels},stage="{stage}"')


def _turn_lines(s: _Series) -> Iterator[str]:
    for band, hist in s.turn_bands.items():
        yield from hist.lines("modelwatch_probe_turn_ttft_seconds", f'{s.labels},turn_band="{band}"')


def _interrupt_lines(s: _Series) -> Iterator[str]:
    if s.interrupt is not None:
        yield from s.interrupt.lines("modelwatch_probe_interrupt_seconds", s.labels)


PROBE_FAMILIES = (
    _family("modelwatch_probe_info", "gauge",
            "1 per probe, with what its series do not say: api, modality (text/audio: is ttft a first token "
            "or a first audio?) and transport; join on it to compare realtime audio with voice chains",
            lambda s: iter((f"modelwatch_probe_info{{{s.labels},{s.info}}} 1.0\n",))),
    _family("modelwatch_probe_success", "gauge",
            "1 if the last completed probe succeeded, else 0", _gauge_line("modelwatch_probe_success", "success")),
    _family("modelwatch_probes_total", "counter", "Probes completed, by outcome", _outcome_lines),
    _family("modelwatch_probe_duration_seconds", "histogram", "Total duration of successful probes",
            lambda s: s.duration.lines("modelwatch_probe_duration_seconds", s.labels)),
    _family("modelwatch_probe_ttft_seconds", "histogram",
            "Time to first token (or first audio) of probes that got one",
            lambda s: s.ttft.lines("modelwatch_probe_ttft_seconds", s.labels)),
    _family("modelwatch_probe_phase_seconds", "gauge",
            "Seconds from the start of the last completed probe to each phase it reached "
            "(connect, ttfb, ttft, duration; WebRTC also signal, ice, dtls, channel)", _phase_lines),
    _family("modelwatch_probe_interval_seconds", "gauge",
            "The probe's configured interval: a last run older than a few of these is overdue",
            _gauge_line("modelwatch_probe_interval_seconds", "interval")),
    _family("modelwatch_probe_last_run_timestamp_seconds", "gauge",
            "Unix time the last completed probe started",
            _gauge_line("modelwatch_probe_last_run_timestamp_seconds", "last_run")),
    _family("modelwatch_probe_tokens_total", "counter", "Tokens reported by the provider", _token_lines),
    _family("modelwatch_probe_cost_usd_total", "counter",
            "USD the probes cost, from reported tokens and the target's price table (0 without one)",
            lambda s: iter((f"modelwatch_probe_cost_usd_total{{{s.labels}}} {_num(s.cost_usd)}\n",))),
    _family("modelwatch_probe_stage_seconds", "histogram",
            "Voice chains: what each stage adds to the time to first audio (stt, llm: until its output is "
            "complete; tts: until its first audio byte), from the stage's own start", _stage_lines),
    _family("modelwatch_probe_turn_ttft_seconds", "histogram",
            "Conversations: time to first token (or audio) of each turn from the turn's own start, by "
            "band of turns", _turn_lines),
    _family("modelwatch_probe_interrupt_seconds", "histogram",
            "Barge-in: seconds from response.cancel sent to the server's acknowledgement",
            _interrupt_lines),
    _family("modelwatch_skipped_runs_total", "counter",
            "Scheduled runs skipped because the previous run was still going (or, for a whole interval, "
            "another kind of the same target)",
            lambda s: iter((f"modelwatch_skipped_runs_total{{{s.labels}}} {s.skipped}.0\n",))),
)


_DELAY_LE = tuple(_num(b) for b in DELAY_BUCKETS) + ("+Inf",)


def _delays() -> _Histogram:
    """A histogram over DELAY_BUCKETS: milliseconds to minutes."""
    return _Histogram(DELAY_BUCKETS, _DELAY_LE)


class ProviderSchedule:
    """How one provider's probes kept to their schedule: what the scheduler records per start."""

    __slots__ = ("labels", "start_delay", "waits", "needed", "limit")

    def __init__(self, labels: str, limit: int) -> None:
        self.labels = labels
        self.start_delay = _delays()
        self.waits = tuple(_delays() for _ in WAIT_LIMITS)
        self.needed = 0.0  # slots the schedule needs on average (capacity.Saturation)
        self.limit = limit

    def started(self, delay_s: float, target_s: float, provider_s: float, global_s: float) -> None:
        """Record one probe start: how late against its slot, and what it waited for."""
        self.start_delay.observe(delay_s)
        waits = self.waits
        waits[0].observe(target_s)
        waits[1].observe(provider_s)
        waits[2].observe(global_s)


def _wait_lines(p: ProviderSchedule) -> Iterator[str]:
    for limit, hist in zip(WAIT_LIMITS, p.waits, strict=True):
        yield from hist.lines("modelwatch_probe_slot_wait_seconds", f'{p.labels},limit="{limit}"')


# Per provider, not per target: 10,000 probes on a few providers stay a few dozen series.
SCHEDULE_FAMILIES = (
    _family("modelwatch_probe_start_delay_seconds", "histogram",
            "How late probes started against their planned slot",
            lambda p: p.start_delay.lines("modelwatch_probe_start_delay_seconds", p.labels)),
    _family("modelwatch_probe_slot_wait_seconds", "histogram",
            "How long probes waited before starting, by what they waited for (limit: target, another "
            "kind of the same target; provider or global, a max_concurrent_probes slot)", _wait_lines),
    _family("modelwatch_provider_concurrency_needed", "gauge",
            "Probes of the provider running at once on average for its schedule (starts per second times "
            "measured duration): above modelwatch_provider_max_concurrent_probes the schedule slips",
            lambda p: iter((f"modelwatch_provider_concurrency_needed{{{p.labels}}} {_num(p.needed)}\n",))),
    _family("modelwatch_provider_max_concurrent_probes", "gauge", "The provider's max_concurrent_probes",
            lambda p: iter((f"modelwatch_provider_max_concurrent_probes{{{p.labels}}} {_num(p.limit)}\n",))),
)


class ProbeMetrics:
    """The probe series and self-metrics of one daemon."""

    def __init__(self, registry: CollectorRegistry, location: str | None = None) -> None:
        self.location = location
        self.registry = registry
        self._series: dict[tuple[str, ...], _Series] = {}
        r = registry
        self.in_flight = Gauge("modelwatch_probes_in_flight", "Probes running now", registry=r)
        self.loop_lag = Histogram("modelwatch_event_loop_lag_seconds",
                                  "How late the event loop woke a timer: high values mean the "
                                  "daemon, not the provider, is slow", buckets=LAG_BUCKETS,
                                  registry=r)
        self.store_errors = Counter("modelwatch_store_errors",
                                    "Failed SQLite write attempts", registry=r)
        self.store_dropped = Counter("modelwatch_store_dropped_rows",
                                     "Results dropped unwritten because SQLite refused writes for so "
                                     "long that the rows held in memory reached their limit", registry=r)
        self.local_failures = Counter("modelwatch_probes_local_failures",
                                      "Probes that failed inside modelwatch before reaching the provider "
                                      "(no file descriptor left, an empty TLS trust store): not recorded "
                                      "as provider outcomes", ("reason",), registry=r)
        for reason in ("open_files", "trust_store"):
            self.local_failures.labels(reason)
        self.http_refused = Counter("modelwatch_http_connections_refused",
                                    "Connections to the daemon's own port closed at once because it "
                                    "already had its maximum of open connections", registry=r)
        self.probes_lagged = Counter("modelwatch_probes_lagged",
                                     "Probes during which the daemon's event loop lagged 100 ms or more: "
                                     "their timings include the daemon's own delay", registry=r)
        self.store_pending = Gauge("modelwatch_store_pending_rows",
                                   "Results waiting to be written to SQLite", registry=r)
        self.reload_ok = Gauge("modelwatch_config_last_reload_successful",
                               "1 if the last configuration load succeeded", registry=r)
        self.reload_ts = Gauge("modelwatch_config_last_reload_success_timestamp_seconds",
                               "Unix time of the last successful configuration load", registry=r)
        self.budget_limit = Gauge("modelwatch_budget_daily_usd",
                                  "The daily budget for paid probes in USD (0: no budget set)", registry=r)
        self.budget_spent = Gauge("modelwatch_budget_spent_usd",
                                  "USD spent by probes since the last UTC midnight", registry=r)
        self.budget_paused = Gauge("modelwatch_budget_paused",
                                   "1 while the daily budget is used up and paid probes are paused",
                                   registry=r)
        self.budget_skipped = Counter("modelwatch_budget_skipped_runs",
                                      "Paid probe runs not started because the daily budget was used up",
                                      registry=r)
        self.status_refresh = Gauge("modelwatch_status_refresh_seconds",
                                    "How long the status page's last refresh took in its worker "
                                    "process (reading the database and rendering)", registry=r)
        self.status_as_of = Gauge("modelwatch_status_snapshot_timestamp_seconds",
                                  "Unix time the status page's figures are as of (0 before the first)",
                                  registry=r)
        self.status_failures = Counter("modelwatch_status_refresh_failures",
                                       "Status page refreshes that failed (the page keeps its last "
                                       "figures and says how old they are)", registry=r)
        self.shard_info = Gauge("modelwatch_shard_info",
                                "1 for the shard this daemon probes (shard: i/N; 0/1 without one)",
                                ("shard", "shards"), registry=r)
        self.build = Gauge("modelwatch_build_info", "Build information",
                           ("version", "python"), registry=r)
        self.build.labels(__version__, platform.python_version()).set(1)
        # provider -> how its probes kept to their schedule (filled by the scheduler)
        self.schedule: dict[str, ProviderSchedule] = {}

    def set_shard(self, shard: tuple[int, int] | None) -> None:
        """Say which shard this daemon probes (the one series there is: a reload may change it)."""
        index, count = shard or (0, 1)
        self.shard_info.clear()
        self.shard_info.labels(str(index), str(count)).set(1)

    def family_names(self) -> list[str]:
        """Every metric name this daemon exports (as it appears in samples)."""
        names = [name for name, _, _ in PROBE_FAMILIES + SCHEDULE_FAMILIES]
        for family in self.registry.collect():
            names.append(family.name + ("_total" if family.type == "counter" else ""))
        return names

    def _key(self, target: str, provider: str, model: str, kind: str) -> tuple[str, ...]:
        base = (target, provider, model, kind)
        return base + (self.location,) if self.location else base

    def _labels(self, key: tuple[str, ...]) -> str:
        names = BASE_LABELS + (("location",) if self.location else ())
        return ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, key, strict=True))

    def provider_schedule(self, provider: str, limit: int) -> ProviderSchedule:
        """The schedule record of ``provider``, created (at 0) on first use."""
        record = self.schedule.get(provider)
        if record is None:
            names = ("provider", "location") if self.location else ("provider",)
            values = (provider, self.location) if self.location else (provider,)
            labels = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True))
            record = self.schedule[provider] = ProviderSchedule(labels, limit)
        return record

    def _job_key(self, job: ProbeJob) -> tuple[str, ...]:
        return self._key(job.target, job.provider_name, job.model, job.probe.kind)

    def add_job(self, job: ProbeJob) -> None:
        """Create a job's series so they exist (at 0) before its first probe."""
        key = self._job_key(job)
        series = self._series.setdefault(key, _Series(self._labels(key), job.probe.interval))
        series.interval = job.probe.interval
        series.info = ",".join(f'{name}="{_escape(value)}"' for name, value in probe_info(job).items())
        shape = detail_series(job)
        for stage in shape.stages:
            series.stages.setdefault(stage, _Histogram())
        for band in shape.turn_bands:
            series.turn_bands.setdefault(band, _Histogram())
        if shape.interrupt and series.interrupt is None:
            series.interrupt = _Histogram(INTERRUPT_BUCKETS, _INTERRUPT_LE)

    def remove_job(self, job: ProbeJob) -> None:
        """Drop a job's series (after a reload removed it)."""
        self._series.pop(self._job_key(job), None)

    def skip(self, job: ProbeJob) -> None:
        """Count a run skipped because the job's previous run was still going."""
        series = self._series.get(self._job_key(job))
        if series is not None:
            series.skipped += 1

    def observe(self, r: ProbeResult) -> None:
        """Record one completed probe."""
        key = self._key(r.target, r.provider, r.model, r.kind)
        s = self._series.get(key)
        if s is None:  # a probe of a job a reload removed while it ran: keep it out
            return
        ok = r.outcome == Outcome.OK.value
        s.outcomes[_OUTCOME_INDEX[r.outcome]] += 1
        s.success = 1.0 if ok else 0.0
        s.last_run = r.ts
        s.phases = (r.connect_s, r.ttfb_s, r.ttft_s, r.duration_s, r.signal_s, r.ice_s, r.dtls_s, r.channel_s)
        if ok and r.duration_s is not None:
            s.duration.observe(r.duration_s)
        if r.ttft_s is not None:
            s.ttft.observe(r.ttft_s)
        for stage in r.stages:
            hist, ready = s.stages.get(stage.stage), stage.ready_s()
            if hist is not None and ready is not None:
                hist.observe(ready)
        for turn in r.turns:
            hist = s.turn_bands.get(turn_band(turn.turn))
            if hist is not None and turn.ttft_s is not None:
                hist.observe(turn.ttft_s)
        if s.interrupt is not None and r.interrupt_s is not None:
            s.interrupt.observe(r.interrupt_s)
        s.tokens[0] += r.input_tokens or 0
        s.tokens[1] += r.output_tokens or 0
        s.cost_usd += r.cost_usd or 0.0

    async def render(self) -> list[bytes]:
        """The exposition text, built in slices that let the event loop run in between."""
        chunks: list[bytes] = []
        series = list(self._series.values())  # a reload may change the dict while we yield
        providers = list(self.schedule.values())
        slice_start = time.perf_counter()
        for families, items in ((PROBE_FAMILIES, series), (SCHEDULE_FAMILIES, providers)):
            for _, header, lines in families:
                parts = [header]
                for s in items:
                    parts.extend(lines(s))
                    if time.perf_counter() - slice_start > RENDER_SLICE_S:
                        chunks.append("".join(parts).encode())
                        parts = []
                        await asyncio.sleep(0)
                        slice_start = time.perf_counter()
                chunks.append("".join(parts).encode())
        chunks.append(generate_latest(self.registry))  # a dozen self-metric lines
        return chunks
