"""Prometheus metrics: per-probe series (DESIGN.md) and the daemon's self-metrics.

Everything takes a ``registry`` so tests build a fresh ``CollectorRegistry``.
Labels are ``target``, ``provider``, ``model``, ``kind`` (plus ``location``
when the config sets one); error codes and messages are never labels.
"""

from __future__ import annotations

import platform

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from modelwatch import __version__
from modelwatch.config import ProbeJob
from modelwatch.outcomes import Outcome, ProbeResult

# The *_created series would double what every scrape renders and say nothing useful here.
disable_created_metrics()

LLM_BUCKETS = (0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 8, 13, 20, 30, 60)
LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
BASE_LABELS = ("target", "provider", "model", "kind")


class ProbeMetrics:
    """The probe series and self-metrics of one daemon."""

    def __init__(self, registry: CollectorRegistry, location: str | None = None) -> None:
        self.location = location
        labels = BASE_LABELS + (("location",) if location else ())
        self._n = len(labels)
        r = registry
        self.success = Gauge("modelwatch_probe_success",
                             "1 if the last completed probe succeeded, else 0", labels, registry=r)
        self.probes = Counter("modelwatch_probes", "Probes completed, by outcome",
                              labels + ("outcome",), registry=r)
        self.duration = Histogram("modelwatch_probe_duration_seconds",
                                  "Total duration of successful probes", labels,
                                  buckets=LLM_BUCKETS, registry=r)
        self.ttft = Histogram("modelwatch_probe_ttft_seconds",
                              "Time to first token (or first audio) of probes that got one",
                              labels, buckets=LLM_BUCKETS, registry=r)
        self.last_run = Gauge("modelwatch_probe_last_run_timestamp_seconds",
                              "Unix time the last completed probe started", labels, registry=r)
        self.tokens = Counter("modelwatch_probe_tokens", "Tokens reported by the provider",
                              labels + ("direction",), registry=r)
        self.skipped = Counter("modelwatch_skipped_runs",
                               "Scheduled runs skipped because the previous run was still going",
                               labels, registry=r)
        self.in_flight = Gauge("modelwatch_probes_in_flight", "Probes running now", registry=r)
        self.loop_lag = Histogram("modelwatch_event_loop_lag_seconds",
                                  "How late the event loop woke a timer: high values mean the "
                                  "daemon, not the provider, is slow", buckets=LAG_BUCKETS,
                                  registry=r)
        self.store_errors = Counter("modelwatch_store_errors",
                                    "Failed SQLite write attempts", registry=r)
        self.store_pending = Gauge("modelwatch_store_pending_rows",
                                   "Results waiting to be written to SQLite", registry=r)
        self.reload_ok = Gauge("modelwatch_config_last_reload_successful",
                               "1 if the last configuration load succeeded", registry=r)
        self.reload_ts = Gauge("modelwatch_config_last_reload_success_timestamp_seconds",
                               "Unix time of the last successful configuration load", registry=r)
        self.build = Gauge("modelwatch_build_info", "Build information",
                           ("version", "python"), registry=r)
        self.build.labels(__version__, platform.python_version()).set(1)

    def _labels(self, target: str, provider: str, model: str, kind: str) -> tuple[str, ...]:
        base = (target, provider, model, kind)
        return base + (self.location,) if self.location else base

    def job_labels(self, job: ProbeJob) -> tuple[str, ...]:
        """The label values of a job's series."""
        return self._labels(job.target, job.provider_name, job.model, job.probe.kind)

    def add_job(self, job: ProbeJob) -> None:
        """Create a job's series so they exist (at 0) before its first probe."""
        labels = self.job_labels(job)
        for outcome in Outcome:
            self.probes.labels(*labels, outcome.value)
        for direction in ("input", "output"):
            self.tokens.labels(*labels, direction)
        self.duration.labels(*labels)
        self.ttft.labels(*labels)
        self.skipped.labels(*labels)

    def remove_job(self, job: ProbeJob) -> None:
        """Drop a job's series (after a reload removed it)."""
        labels = self.job_labels(job)
        for metric in (self.success, self.duration, self.ttft, self.last_run, self.skipped):
            _remove(metric, labels)
        for outcome in Outcome:
            _remove(self.probes, labels + (outcome.value,))
        for direction in ("input", "output"):
            _remove(self.tokens, labels + (direction,))

    def observe(self, r: ProbeResult) -> None:
        """Record one completed probe."""
        labels = self._labels(r.target, r.provider, r.model, r.kind)
        ok = r.outcome == Outcome.OK.value
        self.probes.labels(*labels, r.outcome).inc()
        self.success.labels(*labels).set(1 if ok else 0)
        self.last_run.labels(*labels).set(r.ts)
        if ok and r.duration_s is not None:
            self.duration.labels(*labels).observe(r.duration_s)
        if r.ttft_s is not None:
            self.ttft.labels(*labels).observe(r.ttft_s)
        if r.input_tokens:
            self.tokens.labels(*labels, "input").inc(r.input_tokens)
        if r.output_tokens:
            self.tokens.labels(*labels, "output").inc(r.output_tokens)


def _remove(metric, labels: tuple[str, ...]) -> None:  # noqa: ANN001
    try:
        metric.remove(*labels)
    except KeyError:
        pass
