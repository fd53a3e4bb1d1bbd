"""PromQL over modelwatch's probe series, filtered by a dashboard's template variables.

Both dashboards ask the same questions (availability, provider-attributable availability,
quantiles, per-probe averages); this is the one place those expressions are written, so the
two dashboards cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dashboard_parts import NOT_PROVIDER_JUDGED_REGEX, PROVIDER_OUTCOME_REGEX, matchers

PROBES = "modelwatch_probes_total"
INFO = "modelwatch_probe_info"
# The labels that name one probe's series in one scrape, on which a probe histogram joins its
# modelwatch_probe_info (one per probe: a target has at most one probe of a kind). job and
# instance keep apart two daemons that probe the same target and set no location; without them
# the join would find two info series for one bucket series and fail.
PROBE_KEY = "job, instance, target, kind, location"
OK = 'outcome="ok"'
FAILED = 'outcome!="ok"'


@dataclass(frozen=True)
class ProbeQueries:
    """Expressions over probe series matching ``variables``, aggregated ``by`` some labels."""

    variables: Sequence[str]
    by: str = "target, kind"

    def sel(self, *extra: str) -> str:
        """The variables' matchers plus ``extra`` (e.g. ``outcome="ok"``)."""
        return matchers(self.variables, *extra)

    def increase(self, metric: str, window: str, *extra: str, by: str | None = None) -> str:
        """``sum by (...) (increase(metric{...}[window]))``."""
        return f"sum by ({by or self.by}) (increase({metric}{self.sel(*extra)}[{window}]))"

    def rate(self, metric: str, window: str, by: str | None = None) -> str:
        """``sum by (...) (rate(metric{...}[window]))``, per second."""
        return f"sum by ({by or self.by}) (rate({metric}{self.sel()}[{window}]))"

    def probes(self, window: str, *extra: str) -> str:
        """Probes completed over ``window``, ``extra`` narrowing the outcomes."""
        return self.increase(PROBES, window, *extra)

    def ok_ratio(self, window: str) -> str:
        """Share of probes that were ``ok`` (no series where there were no probes)."""
        return f"{self.probes(window, OK)} / ({self.probes(window)} > 0)"

    def provider_ratio(self, window: str) -> str:
        """1 minus the provider's failures among the probes it had a chance to serve.

        `modelwatch report`'s provider availability and the alert rules' failure ratio: our
        own problems (auth, quota, bad request, model not found) and rate limits leave the
        denominator, so they count neither for nor against the provider; no series where
        every probe was one of those.
        """
        failed = self.probes(window, f'outcome=~"{PROVIDER_OUTCOME_REGEX}"')
        judged = self.probes(window, f'outcome!~"{NOT_PROVIDER_JUDGED_REGEX}"')
        return f"1 - {failed} / ({judged} > 0)"

    def quantile(self, q: float, histogram: str, window: str, by: str | None = None, *,
                 extra: Sequence[str] = (), join: str = "") -> str:
        """The ``q`` quantile of ``modelwatch_probe_<histogram>_seconds`` over ``window``.

        ``extra`` narrows the buckets (``stage="stt"``); ``join`` (see :meth:`info`) keeps or
        labels them by their probe's ``modelwatch_probe_info`` before they are summed.
        """
        return (f"histogram_quantile({q}, sum by ({by or self.by}, le) "
                f"(rate(modelwatch_probe_{histogram}_seconds_bucket{self.sel(*extra)}[{window}]){join}))")

    def info(self, *extra: str, copy: str = "") -> str:
        """A join on each probe's ``modelwatch_probe_info``, to append to a per-probe vector.

        Without ``copy``, ``and``: only the probes whose info matches ``extra`` (e.g.
        ``modality="audio"``) stay, with their own labels. With ``copy``, a multiplication by
        the info's 1 that copies those info labels (e.g. ``api``) onto each series.
        """
        info = f"{INFO}{self.sel(*extra)}"
        if copy:
            return f" * on ({PROBE_KEY}) group_left ({copy}) {info}"
        return f" and on ({PROBE_KEY}) {info}"

    def buckets(self, histogram: str, window: str) -> str:
        """Per-bucket counts of a probe histogram, for a heatmap."""
        return self.increase(f"modelwatch_probe_{histogram}_seconds_bucket", window, by="le")

    def per_probe(self, metric: str, window: str, by_extra: str = "") -> str:
        """Average of counter ``metric`` per completed probe over ``window``.

        ``by_extra`` adds a label the counter has and the probe count does not (``direction``).
        """
        by = f"{self.by}, {by_extra}" if by_extra else self.by
        numerator = self.increase(metric, window, by=by)
        # group_left needs its (empty) label list spelled out: a "(" right after it would be
        # parsed as that list, not as the start of the right-hand side.
        join = f" on ({self.by}) group_left ()" if by_extra else ""
        return f"{numerator} /{join} ({self.probes(window)} > 0)"

    def last_run_age(self) -> str:
        """Age of each probe's last result in multiples of its interval.

        Live series give the current age. Series that vanished are kept in view for an hour
        (max_over_time) only while their daemon cannot be scraped, so a dead daemon shows as
        overdue instead of as nothing, but a target removed by a reload does not.
        """
        last, interval = "modelwatch_probe_last_run_timestamp_seconds", "modelwatch_probe_interval_seconds"
        live = f"(time() - {last}{self.sel()}) / {interval}{self.sel()}"
        gone = (f"((time() - max_over_time({last}{self.sel()}[1h])) / max_over_time({interval}{self.sel()}[1h])"
                f" unless on (job, instance) up == 1)")
        return f"max by ({self.by}) ({live} or {gone})"

    def overdue_count(self) -> str:
        """How many probes have had no result for more than three intervals (0, never empty)."""
        return f"count({self.last_run_age()} > 3) or vector(0)"

    def phases(self) -> str:
        """The last probe's phases (connect, ttfb, ttft, duration), the slowest over locations."""
        return f"max by ({self.by}, phase) (modelwatch_probe_phase_seconds{self.sel()})"

    def last_success(self) -> str:
        """1/0: the last probe's outcome, the worst over locations."""
        return f"min by ({self.by}) (modelwatch_probe_success{self.sel()})"
