"""Generate modelwatch's Prometheus rules from code: prometheus/rules/modelwatch.rules.yml.

    .venv/bin/python prometheus/rules.py

rewrites the rules file. The outcome sets the rules select (provider failures, the outcomes
that leave the provider unjudged, configuration errors, rate limits) are derived here from
``modelwatch.outcomes.ATTRIBUTION``, the table ``modelwatch report`` and the dashboards use too,
so a new outcome lands in every rule at once; an attribution the rules do not know stops the
generator instead of being silently left out. tests/test_alert_rules.py fails while the
committed file differs from what this writes, so edit the Python, run this, commit both.

The text of each group is written out as YAML (comments are what make the rules readable at
3 a.m.) with ``<<name>>`` markers where an outcome set goes; :func:`render` fills them in.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from modelwatch.outcomes import ATTRIBUTION, Outcome

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "rules" / "modelwatch.rules.yml"

# How the rules count each attribution of modelwatch.outcomes.ATTRIBUTION, with the note the
# file's header gives it, in the header's order. An attribution missing here is an error: the
# rules would not know whether its outcomes count against the provider.
ATTRIBUTION_NOTES = {
    "provider": "",
    "configuration": "",
    "capacity": " (usually our own traffic: reported apart)",
    "none": " (the provider answered; counts as served)",
}
HEADER_NAMES = {"none": "neither"}

# What a daemon whose own network is down records: no connection, or a path that hangs until
# the connect budget runs out. Not an attribution (both are the provider's outcomes whenever
# the network is fine), so it is named here; it must stay within the provider failures, since
# ModelwatchLocalNetworkDown explains (and inhibits) the provider alerts these outcomes raise.
UNREACHABLE = (Outcome.CONNECT_ERROR.value, Outcome.TIMEOUT.value)


@dataclasses.dataclass(frozen=True)
class OutcomeSets:
    """The outcome values each kind of rule selects, in the attribution table's order.

    That is the order of the Outcome enum, as in the dashboards' regexes, so the rules and the
    dashboards spell each set the same way.
    """

    order: tuple[str, ...]
    by_attribution: dict[str, tuple[str, ...]]
    unreachable: tuple[str, ...]

    @property
    def provider(self) -> tuple[str, ...]:
        """Failures the provider is answerable for: the numerator of the failure ratio."""
        return self.by_attribution["provider"]

    @property
    def not_judged(self) -> tuple[str, ...]:
        """Outcomes that leave the provider untested: out of the failure ratio's denominator.

        Our configuration and our rate limits, as modelwatch.outcomes.NOT_PROVIDER_JUDGED says.
        """
        left_out = self.by_attribution["configuration"] + self.by_attribution["capacity"]
        return tuple(o for o in self.order if o in left_out)


def outcome_sets(attribution: Mapping[str, str]) -> OutcomeSets:
    """Group outcome values by attribution (table order), checking the rules can count each."""
    unknown = sorted({who for who in attribution.values() if who not in ATTRIBUTION_NOTES})
    if unknown:
        raise ValueError(f"outcome attribution {', '.join(unknown)} is unknown to prometheus/rules.py: "
                         "decide whether it counts against the provider and add it to ATTRIBUTION_NOTES")
    grouped = {who: tuple(o for o, w in attribution.items() if w == who) for who in ATTRIBUTION_NOTES}
    if not grouped["provider"]:
        raise ValueError("no outcome is attributed to the provider: the failure ratios would be empty")
    stray = [o for o in UNREACHABLE if o not in grouped["provider"]]
    if stray:
        raise ValueError(f"{', '.join(stray)} must be provider failures for ModelwatchLocalNetworkDown")
    return OutcomeSets(tuple(attribution), grouped, UNREACHABLE)


DEFAULT_ATTRIBUTION = {outcome.value: who for outcome, who in ATTRIBUTION.items()}


def matcher(values: Sequence[str], *, negate: bool = False) -> str:
    """An ``outcome`` label matcher for ``values``: equality for one, a regex for several."""
    if len(values) == 1:
        return f'outcome{"!=" if negate else "="}"{values[0]}"'
    return f'outcome{"!~" if negate else "=~"}"{"|".join(values)}"'


def prose(values: Sequence[str]) -> str:
    """``a, b or c``, for annotations."""
    return values[0] if len(values) == 1 else f"{', '.join(values[:-1])} or {values[-1]}"


def header(sets: OutcomeSets) -> str:
    """The file's opening comment, with the outcome table as the rules count it."""
    table = ""
    for who, values in sets.by_attribution.items():
        failures = [o for o in values if o != Outcome.OK.value]   # `ok` is no one's doing
        if failures:
            table += f"#   {HEADER_NAMES.get(who, who):<14} {', '.join(failures)}{ATTRIBUTION_NOTES[who]}\n"
    return _GENERATED + _HEADER_TOP + table + _HEADER_REST


_GENERATED = """\
# modelwatch recording and alerting rules.
# Generated by prometheus/rules.py, its outcome sets from src/modelwatch/outcomes.py:
# edit the generator and run it (.venv/bin/python prometheus/rules.py), not this file.
"""

_HEADER_TOP = r'''#
# What each alert means at 3 a.m., why its thresholds and how to tune them:
# docs/alerts.md (each alert's `runbook` annotation points at its section).
# Needs Prometheus >= 2.42: ModelwatchLocalNetworkDown uses keep_firing_for,
# and an older Prometheus rejects this whole file for it.
# Check:  promtool check rules prometheus/rules/modelwatch.rules.yml
# Tests:  promtool test rules prometheus/tests/*.yml
#
# Outcomes are split by who is usually responsible (docs/probes.md):
'''

_HEADER_REST = r'''# Provider availability is "probes that were not the provider's fault" over
# "probes the provider had a fair chance to serve", so a target that is mostly
# rate limited or has a dead key neither hides nor fakes a provider outage.
#
# Per-probe rules keep the probe labels (target, provider, model, kind,
# location when the daemon sets one, job, instance) by aggregating
# `without (outcome)`; per-daemon ones group `by (job, instance, location)`.
# Either way nothing depends on whether `location` is present.
#
# Severity: page = wake someone; ticket = look during working hours;
# info = context for whoever is already looking.

'''

SLO_GROUP = r'''groups:
  # -------------------------------------------------------------------------
  # The availability SLO: the one place to edit.
  # -------------------------------------------------------------------------
  - name: modelwatch-slo
    rules:
      # EDIT HERE: the availability every probe is held to (0.995 = 99.5 %).
      - record: modelwatch:slo:availability_target
        expr: vector(0.995)
      # Per-target override: copy the rule with a `target` label. Targets not
      # named in an override keep the default above.
      # - record: modelwatch:slo:availability_target
      #   expr: vector(0.999)
      #   labels:
      #     target: gpt-4o-mini

      # The error budget (1 - target) for every probe series, overrides first.
      - record: modelwatch:slo:error_budget_ratio
        expr: |
          1 - (
              0 * modelwatch_probe_interval_seconds
              + on (target) group_left () modelwatch:slo:availability_target{target!=""}
            or
              0 * modelwatch_probe_interval_seconds
              + on () group_left () modelwatch:slo:availability_target{target=""}
          )

'''

# The failure-ratio windows: the burn-rate alerts' pairs (Google SRE workbook, ch. 5) and
# ModelwatchProviderFailing's 15 and 5 minutes; the day-long ones are a group of their own.
RATIO_WINDOWS = ("5m", "15m", "30m", "1h", "2h", "6h")
LONG_RATIO_WINDOWS = ("1d", "3d")


def ratio_rule(window: str) -> str:
    """Provider failures over the probes the provider had a fair chance to serve."""
    return f"""      - record: modelwatch:probe_provider_errors:ratio_rate{window}
        expr: |
          sum without (outcome) (rate(modelwatch_probes_total{{<<provider_failed>>}}[{window}]))
          /
          sum without (outcome) (rate(modelwatch_probes_total{{<<provider_judged>>}}[{window}]))
"""


def increase_rule(window: str) -> str:
    """Provider failures counted over ``window``."""
    return f"""      - record: modelwatch:probe_provider_errors:increase{window}
        expr: sum without (outcome) (increase(modelwatch_probes_total{{<<provider_failed>>}}[{window}]))
"""


def availability_groups() -> str:
    """The failure ratios and counts, over the alert windows and over days."""
    return (_AVAILABILITY_TOP + "".join(ratio_rule(w) for w in RATIO_WINDOWS)
            + _AVAILABILITY_COUNTS_COMMENT + "".join(increase_rule(w) for w in ("1h", "6h"))
            + _AVAILABILITY_REST
            + _AVAILABILITY_LONG_TOP + "".join(ratio_rule(w) for w in LONG_RATIO_WINDOWS)
            + "".join(increase_rule(w) for w in LONG_RATIO_WINDOWS) + "\n")


_AVAILABILITY_TOP = r'''  # -------------------------------------------------------------------------
  # Provider-attributable failure ratios and counts over the alert windows.
  # -------------------------------------------------------------------------
  - name: modelwatch-availability
    rules:
'''

_AVAILABILITY_COUNTS_COMMENT = r'''
      # How many probes failed on the provider's side over the long burn-rate
      # windows: the burn-rate alerts need at least 3, so a sparse probe (one an
      # hour) cannot page or ticket on one failure however large its ratio.
'''

_AVAILABILITY_REST = r'''
      # Probes the provider had a fair chance to serve in the failure-ratio
      # window: ModelwatchProviderFailing needs at least 5 of them.
      - record: modelwatch:probe_valid:increase15m
        expr: sum without (outcome) (increase(modelwatch_probes_total{<<provider_judged>>}[15m]))

      # Rate limits, apart from availability: share of all probes that got a 429.
      - record: modelwatch:probe_rate_limited:ratio_rate30m
        expr: |
          sum without (outcome) (rate(modelwatch_probes_total{<<capacity>>}[30m]))
          /
          sum without (outcome) (rate(modelwatch_probes_total[30m]))

'''

_AVAILABILITY_LONG_TOP = r'''  # -------------------------------------------------------------------------
  # The same over a day and three days, for the slow-burn tickets. These read
  # days of samples per series (~400,000 per probe at a 15 s scrape): with
  # more than a few hundred probes, uncomment `interval` so they run every 3
  # minutes; a ticket that waits 15 minutes anyway loses nothing. (A group with
  # its own interval is first evaluated up to that interval after start-up.)
  # -------------------------------------------------------------------------
  - name: modelwatch-availability-long
    # interval: 3m
    rules:
'''

LATENCY_GROUP = r'''  # -------------------------------------------------------------------------
  # Latency: TTFT p95 now, and its own baseline.
  # -------------------------------------------------------------------------
  - name: modelwatch-latency
    rules:
      # `> 0` drops the NaN of a window without any TTFT sample (a probe that
      # only fails, or a `models` check), so it cannot skew the baseline.
      - record: modelwatch:probe_ttft_seconds:p95_rate30m
        expr: histogram_quantile(0.95, rate(modelwatch_probe_ttft_seconds_bucket[30m])) > 0
      # The baseline: the median, over the last day, of the 30-minute p95. A
      # median needs half a day of slow probes to move, so a regression keeps
      # alerting for hours instead of becoming its own baseline in 72 minutes
      # (which a plain 1-day p95 would do).
      - record: modelwatch:probe_ttft_seconds:p95_baseline1d
        expr: quantile_over_time(0.5, modelwatch:probe_ttft_seconds:p95_rate30m[1d])

'''

FRESHNESS_GROUP = r'''  # -------------------------------------------------------------------------
  # Freshness: how old each probe's last result is, in its own intervals.
  # -------------------------------------------------------------------------
  - name: modelwatch-freshness
    rules:
      # A probe that has completed: time since its last start. One that has
      # never completed since the daemon (re)loaded its config: time since that
      # load, so a scheduler that never starts a probe is overdue too.
      - record: modelwatch:probe_last_result_age:intervals
        expr: |
          (time() - modelwatch_probe_last_run_timestamp_seconds) / modelwatch_probe_interval_seconds
          or
          (time() - (modelwatch_config_last_reload_success_timestamp_seconds > 0))
            / on (job, instance) group_right ()
          (modelwatch_probe_interval_seconds unless modelwatch_probe_last_run_timestamp_seconds)

'''

PROVIDER_ALERTS = r'''  # -------------------------------------------------------------------------
  # Alerts about the providers (and about what stands between us and them).
  # -------------------------------------------------------------------------
  - name: modelwatch-provider-alerts
    rules:
      - alert: ModelwatchProviderFailing
        # > 25 % with at least 5 probes: one failure is at most 1/5 = 20 %, so a
        # single failed probe can never page. The 5-minute ratio must agree, so
        # an outage that is already over does not page (and the alert resolves
        # a few minutes after the provider recovers).
        expr: |
          modelwatch:probe_provider_errors:ratio_rate15m > 0.25
          and modelwatch:probe_provider_errors:ratio_rate5m > 0.25
          and modelwatch:probe_valid:increase15m >= 5
        for: 5m
        labels:
          severity: page
          attribution: provider
        annotations:
          summary: "{{ $labels.target }} ({{ $labels.kind }}): {{ $value | humanizePercentage }} of probes failed on the provider's side"
          description: "Over 15 minutes (and the last 5), more than a quarter of {{ $labels.provider }} / {{ $labels.model }} {{ $labels.kind }} probes from {{ $labels.instance }}{{ with $labels.location }} ({{ . }}){{ end }} ended in <<provider_prose>>. Rate limits and configuration errors are not counted."
          runbook: docs/alerts.md#modelwatchproviderfailing

      # Multi-window, multi-burn-rate alerts (Google SRE workbook, ch. 5).
      # Burn rate = failure ratio / error budget. The short window makes the
      # alert resolve soon after the failures stop.
      - alert: ModelwatchErrorBudgetBurnFast
        expr: |
          modelwatch:probe_provider_errors:ratio_rate1h > 14.4 * modelwatch:slo:error_budget_ratio
          and modelwatch:probe_provider_errors:ratio_rate5m > 14.4 * modelwatch:slo:error_budget_ratio
          and modelwatch:probe_provider_errors:increase1h >= 3
        for: 2m
        labels:
          severity: page
          attribution: provider
          long_window: 1h
          short_window: 5m
        annotations:
          summary: "{{ $labels.target }} ({{ $labels.kind }}): {{ $value | humanizePercentage }} provider failures over 1h, burning the error budget fast"
          description: "{{ $labels.provider }} / {{ $labels.model }} {{ $labels.kind }} probes from {{ $labels.instance }}{{ with $labels.location }} ({{ . }}){{ end }} failed on the provider's side over the last 1h and 5m at a rate that uses up the availability SLO's error budget long before its time."
          runbook: docs/alerts.md#modelwatcherrorbudgetburnfast
      - alert: ModelwatchErrorBudgetBurnFast
        expr: |
          modelwatch:probe_provider_errors:ratio_rate6h > 6 * modelwatch:slo:error_budget_ratio
          and modelwatch:probe_provider_errors:ratio_rate30m > 6 * modelwatch:slo:error_budget_ratio
          and modelwatch:probe_provider_errors:increase6h >= 3
        for: 2m
        labels:
          severity: page
          attribution: provider
          long_window: 6h
          short_window: 30m
        annotations:
          summary: "{{ $labels.target }} ({{ $labels.kind }}): {{ $value | humanizePercentage }} provider failures over 6h, burning the error budget fast"
          description: "{{ $labels.provider }} / {{ $labels.model }} {{ $labels.kind }} probes from {{ $labels.instance }}{{ with $labels.location }} ({{ . }}){{ end }} failed on the provider's side over the last 6h and 30m at a rate that uses up the availability SLO's error budget long before its time."
          runbook: docs/alerts.md#modelwatcherrorbudgetburnfast
      - alert: ModelwatchErrorBudgetBurnSlow
        expr: |
          modelwatch:probe_provider_errors:ratio_rate1d > 3 * modelwatch:slo:error_budget_ratio
          and modelwatch:probe_provider_errors:ratio_rate2h > 3 * modelwatch:slo:error_budget_ratio
          and modelwatch:probe_provider_errors:increase1d >= 3
        for: 15m
        labels:
          severity: ticket
          attribution: provider
          long_window: 1d
          short_window: 2h
        annotations:
          summary: "{{ $labels.target }} ({{ $labels.kind }}): {{ $value | humanizePercentage }} provider failures over 1d, burning the error budget"
          description: "{{ $labels.provider }} / {{ $labels.model }} {{ $labels.kind }} probes from {{ $labels.instance }}{{ with $labels.location }} ({{ . }}){{ end }} failed on the provider's side over the last 1d and 2h more often than the availability SLO allows."
          runbook: docs/alerts.md#modelwatcherrorbudgetburnslow
      - alert: ModelwatchErrorBudgetBurnSlow
        expr: |
          modelwatch:probe_provider_errors:ratio_rate3d > 1 * modelwatch:slo:error_budget_ratio
          and modelwatch:probe_provider_errors:ratio_rate6h > 1 * modelwatch:slo:error_budget_ratio
          and modelwatch:probe_provider_errors:increase3d >= 3
        for: 15m
        labels:
          severity: ticket
          attribution: provider
          long_window: 3d
          short_window: 6h
        annotations:
          summary: "{{ $labels.target }} ({{ $labels.kind }}): {{ $value | humanizePercentage }} provider failures over 3d, burning the error budget"
          description: "{{ $labels.provider }} / {{ $labels.model }} {{ $labels.kind }} probes from {{ $labels.instance }}{{ with $labels.location }} ({{ . }}){{ end }} failed on the provider's side over the last 3d and 6h more often than the availability SLO allows."
          runbook: docs/alerts.md#modelwatcherrorbudgetburnslow

      - alert: ModelwatchTTFTAboveBaseline
        # Needs 10 TTFT samples in the window, and a baseline at least 2 hours
        # old (the 30-minute p95 existed 2 hours ago), so neither a new target
        # nor a sparse probe alerts on a handful of readings.
        expr: |
          modelwatch:probe_ttft_seconds:p95_rate30m > 2 * modelwatch:probe_ttft_seconds:p95_baseline1d
          and increase(modelwatch_probe_ttft_seconds_count[30m]) >= 10
          and modelwatch:probe_ttft_seconds:p95_rate30m offset 2h
        for: 15m
        labels:
          severity: ticket
          attribution: provider
        annotations:
          summary: "{{ $labels.target }} ({{ $labels.kind }}): TTFT p95 is {{ $value | humanizeDuration }}, over twice its usual"
          description: "The 30-minute p95 time to first token (or audio) of {{ $labels.provider }} / {{ $labels.model }} {{ $labels.kind }} probes from {{ $labels.instance }}{{ with $labels.location }} ({{ . }}){{ end }} is more than twice its median over the last day."
          runbook: docs/alerts.md#modelwatchttftabovebaseline

      - alert: ModelwatchRateLimited
        expr: |
          modelwatch:probe_rate_limited:ratio_rate30m > 0.2
          and ignoring (outcome) increase(modelwatch_probes_total{<<capacity>>}[30m]) >= 3
        for: 10m
        labels:
          severity: ticket
          attribution: capacity
        annotations:
          summary: "{{ $labels.target }} ({{ $labels.kind }}): {{ $value | humanizePercentage }} of probes were rate limited"
          description: "Over 30 minutes, more than a fifth of {{ $labels.provider }} / {{ $labels.model }} {{ $labels.kind }} probes from {{ $labels.instance }}{{ with $labels.location }} ({{ . }}){{ end }} got a rate limit (429). Usually our own traffic uses up the requests or tokens per minute; this is not counted against the provider's availability."
          runbook: docs/alerts.md#modelwatchratelimited

      - alert: ModelwatchConfigurationProblem
        # Per outcome, so the alert says which one; the last probe must have
        # failed too, so fixing the key or model resolves it at the next probe.
        # Two such results in a window that always holds two probes: 30
        # minutes for probes up to every 10 minutes, then longer windows for
        # sparser probes (a window 3 intervals long, so scheduling jitter never
        # leaves the second result out for an evaluation and restarts `for`).
        # Probes sparser than every 8 hours are not covered.
        expr: |
          (
              increase(modelwatch_probes_total{<<configuration>>}[30m]) >= 2
            or
              increase(modelwatch_probes_total{<<configuration>>}[2h]) >= 2
              and ignoring (outcome) modelwatch_probe_interval_seconds > 600
            or
              increase(modelwatch_probes_total{<<configuration>>}[6h]) >= 2
              and ignoring (outcome) modelwatch_probe_interval_seconds > 2400
            or
              increase(modelwatch_probes_total{<<configuration>>}[1d]) >= 2
              and ignoring (outcome) modelwatch_probe_interval_seconds > 7200
          )
          and ignoring (outcome) modelwatch_probe_success == 0
        for: 5m
        labels:
          severity: ticket
          attribution: configuration
        annotations:
          summary: "{{ $labels.target }} ({{ $labels.kind }}): {{ $labels.outcome }}"
          description: "{{ $labels.provider }} / {{ $labels.model }} {{ $labels.kind }} probes from {{ $labels.instance }}{{ with $labels.location }} ({{ . }}){{ end }} keep failing with {{ $labels.outcome }}: a key, quota, request or model name to fix on our side (or a model the provider retired), not a provider outage. The error_code column in probe_results has the provider's own code."
          runbook: docs/alerts.md#modelwatchconfigurationproblem

      - alert: ModelwatchLocalNetworkDown
        # At least 80 % of this daemon's probes failed to connect over 3
        # minutes, and so did at least 80 % of each of two providers' own
        # probes: one provider's outage (however many of our targets it
        # serves) plus a stray timeout elsewhere is not our network. Short
        # window and `for`, so it fires before the per-target pages it inhibits
        # (alertmanager-inhibit.example.yml).
        # A hanging path (dropped SYNs, a stuck resolver or proxy) ends as a connect
        # `timeout`, not `connect_error`: both count. It keeps firing 35 minutes
        # after the network is back, so the inhibition outlasts the 30-minute
        # burn-rate windows the outage filled, instead of a page per provider.
        # keep_firing_for needs Prometheus >= 2.42 (older ones reject this file).
        expr: |
          sum by (job, instance, location) (increase(modelwatch_probes_total{<<unreachable>>}[3m]))
          / sum by (job, instance, location) (increase(modelwatch_probes_total[3m]))
          >= 0.8
          and on (job, instance, location)
          sum by (job, instance, location) (increase(modelwatch_probes_total[3m])) >= 5
          and on (job, instance, location)
          count by (job, instance, location) (
              sum by (job, instance, location, provider) (increase(modelwatch_probes_total{<<unreachable>>}[3m]))
              / sum by (job, instance, location, provider) (increase(modelwatch_probes_total[3m]))
              >= 0.8
          ) >= 2
        for: 1m
        keep_firing_for: 35m
        labels:
          severity: page
          attribution: local
        annotations:
          summary: "{{ $labels.instance }}{{ with $labels.location }} ({{ . }}){{ end }}: {{ $value | humanizePercentage }} of probes cannot connect, on several providers"
          description: "At least 80 % of the probes from {{ $labels.instance }} in the last 3 minutes failed to connect or timed out (DNS, refused, reset, TLS, no answer), and so did at least 80 % of each of two or more providers' probes: look at our own network, DNS, proxy or firewall before blaming the providers. Per-provider alerts from this daemon are inhibited while this fires."
          runbook: docs/alerts.md#modelwatchlocalnetworkdown

      - alert: ModelwatchLocalNetworkWasDown
        # The outage's connect errors stay in the slow burn-rate windows (2h
        # and 6h short windows) long after ModelwatchLocalNetworkDown stops:
        # for 6 hours after it last fired, this holds back the slow-burn
        # tickets it would otherwise open for every target of this daemon
        # (alertmanager-inhibit.example.yml). Reads the ALERTS series, which
        # Prometheus stores, so it survives a Prometheus restart.
        expr: |
          max by (job, instance, location) (
            max_over_time(ALERTS{alertname="ModelwatchLocalNetworkDown", alertstate="firing"}[6h])
          )
        labels:
          severity: info
          attribution: local
        annotations:
          summary: "{{ $labels.instance }}{{ with $labels.location }} ({{ . }}){{ end }}: our network was down within the last 6 hours"
          description: "ModelwatchLocalNetworkDown fired for {{ $labels.instance }} within the last 6 hours. The connect errors of that outage still fill the slow burn-rate windows, so this daemon's ModelwatchErrorBudgetBurnSlow tickets are inhibited until they are clear."
          runbook: docs/alerts.md#modelwatchlocalnetworkwasdown

'''

DAEMON_ALERTS = r'''  # -------------------------------------------------------------------------
  # Alerts about modelwatch itself: if it is blind, nothing else can fire.
  # -------------------------------------------------------------------------
  - name: modelwatch-daemon-alerts
    rules:
      - alert: ModelwatchDown
        expr: up{job="modelwatch"} == 0
        for: 5m
        labels:
          severity: page
          attribution: modelwatch
        annotations:
          summary: "modelwatch on {{ $labels.instance }} cannot be scraped"
          description: "Prometheus has failed to scrape {{ $labels.instance }} for 5 minutes: no probe results arrive, so no provider alert can fire. Check `systemctl status modelwatch` and its journal."
          runbook: docs/alerts.md#modelwatchdown

      - alert: ModelwatchAbsent
        expr: absent(up{job="modelwatch"})
        for: 10m
        labels:
          severity: page
          attribution: modelwatch
        annotations:
          summary: "Prometheus has no modelwatch target"
          description: "No target of job \"modelwatch\" has been scraped for 10 minutes: the scrape config or service discovery lost it, so nothing watches the providers."
          runbook: docs/alerts.md#modelwatchabsent

      - alert: ModelwatchProbesOverdue
        # Paid probes stop while the daily budget is used up; that is
        # ModelwatchBudgetPaused, not a stuck probe.
        expr: |
          modelwatch:probe_last_result_age:intervals > 3
          unless on (job, instance) modelwatch_budget_paused == 1
        for: 5m
        labels:
          severity: ticket
          attribution: modelwatch
        annotations:
          summary: "{{ $labels.target }} ({{ $labels.kind }}) has had no result for {{ $value | printf \"%.0f\" }} intervals"
          description: "The last completed {{ $labels.kind }} probe of {{ $labels.target }} on {{ $labels.instance }}{{ with $labels.location }} ({{ . }}){{ end }} started more than 3 intervals ago. Runs that outlast their interval are skipped (modelwatch_skipped_runs_total): a timeout longer than the interval, or a stuck probe."
          runbook: docs/alerts.md#modelwatchprobesoverdue

      - alert: ModelwatchAllProbesOverdue
        # Every probe of a daemon that still answers scrapes is overdue: its
        # scheduler or event loop is stuck. Page: it is blind.
        expr: |
          count by (job, instance, location) (modelwatch:probe_last_result_age:intervals > 3)
          == count by (job, instance, location) (modelwatch:probe_last_result_age:intervals)
          unless on (job, instance) modelwatch_budget_paused == 1
        for: 5m
        labels:
          severity: page
          attribution: modelwatch
        annotations:
          summary: "modelwatch on {{ $labels.instance }} has stopped producing probe results"
          description: "All {{ $value }} probes of {{ $labels.instance }}{{ with $labels.location }} ({{ . }}){{ end }} are more than 3 intervals overdue while the daemon still answers scrapes: its scheduler or event loop is stuck. Restart it and keep its journal."
          runbook: docs/alerts.md#modelwatchallprobesoverdue

      - alert: ModelwatchBudgetPaused
        expr: modelwatch_budget_paused == 1
        for: 5m
        labels:
          severity: info
          attribution: modelwatch
        annotations:
          summary: "modelwatch on {{ $labels.instance }} has used up its daily probe budget"
          description: "Paid probes on {{ $labels.instance }} are paused until UTC midnight (budget.daily_usd); free `models` checks go on. Their success and last-run series stop moving meanwhile."
          runbook: docs/alerts.md#modelwatchbudgetpaused

      - alert: ModelwatchConfigReloadFailed
        expr: modelwatch_config_last_reload_successful == 0
        for: 10m
        labels:
          severity: ticket
          attribution: modelwatch
        annotations:
          summary: "modelwatch on {{ $labels.instance }} is running an older config than its file"
          description: "The last reload of the config on {{ $labels.instance }} failed; the previous config keeps running. `modelwatch check-config` names every problem."
          runbook: docs/alerts.md#modelwatchconfigreloadfailed

      - alert: ModelwatchEventLoopLagHigh
        # A late loop adds its lateness to the latencies being measured, and an
        # overloaded daemon can time out on its own: while this fires, the
        # inhibition example holds back this daemon's provider alerts. So it
        # must fire before they page (the fast burn pages at the earliest 5
        # minutes into a total failure of probes a minute apart): a 2-minute
        # window and `for: 3m` fire about 3 minutes into an overload, and a
        # lag burst of a minute or so still does not.
        expr: histogram_quantile(0.99, rate(modelwatch_event_loop_lag_seconds_bucket[2m])) > 0.1
        for: 3m
        labels:
          severity: ticket
          attribution: modelwatch
        annotations:
          summary: "modelwatch on {{ $labels.instance }} is slow: event loop lag p99 {{ $value | humanizeDuration }}"
          description: "The daemon's event loop on {{ $labels.instance }} wakes late (p99 over 2 minutes above 100 ms, for 3 minutes): its TTFT and duration readings are inflated by up to that much, and its timeouts may be its own. Too many targets for the machine, or a starved CPU. Provider alerts from this daemon are inhibited while this fires."
          runbook: docs/alerts.md#modelwatcheventlooplaghigh

      - alert: ModelwatchStoreErrors
        # Errors in every 5-minute window for 15 minutes: a lone busy retry
        # resolves itself; a full disk or a read-only database does not.
        expr: increase(modelwatch_store_errors_total[5m]) > 0
        for: 15m
        labels:
          severity: ticket
          attribution: modelwatch
        annotations:
          summary: "modelwatch on {{ $labels.instance }} keeps failing to write SQLite"
          description: "SQLite writes on {{ $labels.instance }} have failed for 15 minutes; results wait in memory (modelwatch_store_pending_rows) and are lost if the daemon stops. Check disk space and permissions of storage.path."
          runbook: docs/alerts.md#modelwatchstoreerrors

      - alert: ModelwatchLocalFaults
        # Probes that fail inside modelwatch (no file descriptor left, a TLS
        # trust store without a CA) reach no provider and record no outcome:
        # the provider alerts cannot see them, and the probes' series just go
        # stale. Page: the monitor is (partly) blind. At least 2 in 5 minutes,
        # for 5 minutes: one exhausted moment does not page, a fault that keeps
        # killing probes does. That is before ModelwatchAllProbesOverdue (3
        # intervals, then 5 minutes) for probes every 15 s or slower, so the
        # inhibition example holds the overdue alerts back, whose advice
        # (restart, a stuck probe) would be wrong.
        expr: increase(modelwatch_probes_local_failures_total[5m]) >= 2
        for: 5m
        labels:
          severity: page
          attribution: modelwatch
        annotations:
          summary: "modelwatch on {{ $labels.instance }}: probes fail inside modelwatch ({{ $labels.reason }}), {{ $value | printf \"%.0f\" }} in 5 minutes"
          description: "Probes on {{ $labels.instance }} keep failing before they reach the provider, reason {{ $labels.reason }} (open_files: no file descriptor left for a socket; trust_store: the TLS trust store holds no CA certificate). They record no outcome, so no provider alert can fire for them. The journal names the first failure of each reason."
          runbook: docs/alerts.md#modelwatchlocalfaults

      - alert: ModelwatchScheduleSlipping
        # The provider's probes need more slots at once than its
        # max_concurrent_probes: planned starts per second times the measured
        # duration (a running average over about 20 probes, so a few slow
        # answers do not move it). They queue, start late and get skipped,
        # while ModelwatchProbesOverdue stays silent (every probe still runs).
        expr: modelwatch_provider_concurrency_needed > modelwatch_provider_max_concurrent_probes
        for: 15m
        labels:
          severity: ticket
          attribution: modelwatch
          signal: concurrency
        annotations:
          summary: "{{ $labels.provider }} on {{ $labels.instance }}: its probes need {{ $value | printf \"%.1f\" }} slots at once, more than its max_concurrent_probes"
          description: "The schedule of {{ $labels.provider }} probes on {{ $labels.instance }}{{ with $labels.location }} ({{ . }}){{ end }} needs more concurrent probes than the provider's max_concurrent_probes allows (modelwatch_provider_concurrency_needed): probes queue for a slot, start late and runs are skipped. Raise max_concurrent_probes (about 1.5 x the need) or lengthen intervals."
          runbook: docs/alerts.md#modelwatchscheduleslipping
      - alert: ModelwatchScheduleSlipping
        # Whatever the cause (the provider's limit, the global one, kinds of one
        # target meeting): 90 % of the provider's probes over 10 minutes started
        # less than a quarter interval late, or this fires. The start delay
        # histogram is per provider, not per target, so "interval" is the
        # harmonic mean of the provider's probe intervals: the interval of an
        # average start, as dense probes start more often. At least 10 starts,
        # so a sparse provider's one late start is not a p90. `for` outlasts
        # the window, so a burst of late starts under about 7 minutes (a
        # reload, a provider slow for a moment) does not open a ticket. The
        # delay buckets end at 300 s: this covers mean intervals up to 20 minutes.
        expr: |
          histogram_quantile(0.9, rate(modelwatch_probe_start_delay_seconds_bucket[10m]))
            > 0.25 * (
                count without (target, model, kind) (modelwatch_probe_interval_seconds)
                / sum without (target, model, kind) (1 / modelwatch_probe_interval_seconds)
              )
          and increase(modelwatch_probe_start_delay_seconds_count[10m]) >= 10
        for: 15m
        labels:
          severity: ticket
          attribution: modelwatch
          signal: start_delay
        annotations:
          summary: "{{ $labels.provider }} on {{ $labels.instance }}: probes start {{ $value | humanizeDuration }} late (p90)"
          description: "Over 10 minutes, more than a tenth of the {{ $labels.provider }} probes on {{ $labels.instance }}{{ with $labels.location }} ({{ . }}){{ end }} started more than a quarter of their (mean) interval after their planned slot: the schedule is not kept, so results are fewer and later than configured (their timings are still true). modelwatch_probe_slot_wait_seconds says what they waited for: limit=provider or global, a max_concurrent_probes too small; limit=target, kinds of one target that run longer than the distance between them."
          runbook: docs/alerts.md#modelwatchscheduleslipping
'''

_MARKER = re.compile(r"<<(\w+)>>")


def render(attribution: Mapping[str, str] | None = None) -> str:
    """The rules file's text, its outcome sets derived from ``attribution`` (outcome -> who).

    ``attribution`` defaults to modelwatch.outcomes.ATTRIBUTION; tests pass a changed table to
    see a new outcome reach the rules.
    """
    sets = outcome_sets(DEFAULT_ATTRIBUTION if attribution is None else attribution)
    values = {
        "provider_failed": matcher(sets.provider),
        "provider_judged": matcher(sets.not_judged, negate=True),
        "provider_prose": prose(sets.provider),
        "configuration": matcher(sets.by_attribution["configuration"]),
        "capacity": matcher(sets.by_attribution["capacity"]),
        "unreachable": matcher(sets.unreachable),
    }
    text = (header(sets) + SLO_GROUP + availability_groups() + LATENCY_GROUP
            + FRESHNESS_GROUP + PROVIDER_ALERTS + DAEMON_ALERTS)
    return _MARKER.sub(lambda m: values[m.group(1)], text)


def main() -> int:
    """Write the rules file; say whether it changed."""
    text = render()
    changed = not OUTPUT.exists() or OUTPUT.read_text() != text
    OUTPUT.write_text(text)
    print(f"{'wrote' if changed else 'unchanged'} {OUTPUT.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
