"""What probing costs: the daily budget, and the ``probe --dry-run`` estimate.

Prices come from ``targets[].price`` in USD per million tokens; a probe's
reported tokens are priced by :func:`modelwatch.pricing.probe_cost_usd`.
Whether a probe is paid and how many tokens it spends at most are its spec's
(:mod:`modelwatch.probes`): the free ``models`` check has no tokens and costs
nothing.

The budget counts UTC days: once the day's spend reaches ``budget.daily_usd``
the daemon stops starting paid probes (see :func:`is_paid`) until the next UTC
midnight. Probes
already running finish, so a day can end slightly over (at most the
concurrent probes' output caps).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

from modelwatch.job import ProbeJob
from modelwatch.pricing import probe_cost_usd
from modelwatch.probes import job_spec
from modelwatch.probes.spec import Tokens

DAY_S = 86400.0


def utc_day_start(ts: float) -> float:
    """Unix time of the UTC midnight that starts the day containing ``ts``."""
    day = dt.datetime.fromtimestamp(ts, dt.timezone.utc).date()
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp()


class DailyBudget:
    """Today's spend against a daily limit; the day rolls over at UTC midnight."""

    def __init__(self, daily_usd: float, clock: Callable[[], float] = time.time) -> None:
        self.daily_usd = daily_usd
        self._clock = clock
        self.day_start = utc_day_start(clock())
        self.spent_usd = 0.0

    def _roll(self) -> None:
        today = utc_day_start(self._clock())
        if today != self.day_start:
            self.day_start, self.spent_usd = today, 0.0

    def restore(self, spent_today_usd: float) -> None:
        """Start from what the store says today's probes already cost (after a restart)."""
        self._roll()
        self.spent_usd = spent_today_usd

    def add(self, usd: float | None, ts: float) -> None:
        """Count one probe's cost; a probe that started before today's midnight is yesterday's."""
        self._roll()
        if usd and ts >= self.day_start:
            self.spent_usd += usd

    def exhausted(self) -> bool:
        """Whether today's spend has reached the limit."""
        self._roll()
        return self.spent_usd >= self.daily_usd


def is_paid(job: ProbeJob) -> bool:
    """Whether a probe may cost money: it spends tokens and its price is not known to be zero.

    The model-list check spends none; self-hosted targets priced at 0 cost none
    per token. An unpriced probe counts as paid: its cost is unknown, not zero.
    """
    price = job.price
    stage_rates = [rate for stage in (price.stt, price.tts) if stage is not None
                   for rate in (stage.input, stage.output, stage.audio_input, stage.audio_output,
                                stage.per_minute)] if price is not None else []
    free_price = price is not None and not any((price.input, price.output, price.audio_input,
                                                price.audio_output, *stage_rates))
    return job_spec(job).paid and not free_price


def tokens_per_probe(job: ProbeJob) -> Tokens:
    """Upper-bound (text in, text out, audio in, audio out) tokens of one probe, by its spec."""
    return job_spec(job).estimate(job)


def daily_cost_usd(job: ProbeJob) -> float | None:
    """Upper-bound USD a day for one probe at its interval, or None without a price."""
    if not is_paid(job):
        return 0.0
    spec = job_spec(job)
    if spec.cost is not None:  # priced stage by stage (a voice chain's three models)
        per_probe = spec.cost(job)
    else:
        text_in, text_out, audio_in, audio_out = tokens_per_probe(job)
        per_probe = probe_cost_usd(job.price, text_in + audio_in, text_out + audio_out, audio_in, audio_out)
    return None if per_probe is None else per_probe * DAY_S / job.probe.interval


def dry_run_lines(jobs: list[ProbeJob], daily_budget_usd: float | None = None) -> list[str]:
    """One line per probe and a total: probes/day, tokens/day (upper bound) and USD/day."""
    lines = []
    total_usd, unpriced = 0.0, 0
    width = max((len(job.target) for job in jobs), default=0)
    for job in jobs:
        per_day = DAY_S / job.probe.interval
        text_in, text_out, audio_in, audio_out = tokens_per_probe(job)
        cost = daily_cost_usd(job)
        if cost is None:
            unpriced += 1
            usd = "price unknown"
        else:
            total_usd += cost
            usd = "free" if not is_paid(job) else f"${cost:.4f}/day"
        tokens = f"<= {(text_in + audio_in) * per_day:,.0f} in + {(text_out + audio_out) * per_day:,.0f} out"
        if audio_in or audio_out:
            tokens += " (audio)"
        lines.append(f"{job.target:<{width}}  {job.probe.kind:<12} {per_day:>6.0f} probes/day  "
                     f"{tokens} tokens/day  {usd}")
    tail = f"total: ${total_usd:.4f}/day (upper bound: every probe uses its full output cap)"
    if unpriced:
        tail += f"; {unpriced} probe(s) without a price (set targets[].price)"
    lines.append(tail)
    if daily_budget_usd is not None:
        verdict = "within" if total_usd <= daily_budget_usd else "OVER: paid probes will pause before the day ends"
        lines.append(f"budget: ${daily_budget_usd:.4f}/day, {verdict}")
    return lines
