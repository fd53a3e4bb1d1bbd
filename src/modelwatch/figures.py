"""The one definition of runs, errors, availability, provider availability, percentiles and state.

``modelwatch report``, the status page, its JSON API and badges all compute their
figures here; the alert rules and dashboards select the same outcome sets, derived
from :data:`modelwatch.outcomes.ATTRIBUTION` (prometheus/rules.py). Definitions
(DESIGN.md, "Status page and JSON API"):

- ``runs``: probes that started in the range; ``errors``: runs whose outcome is not ``ok``.
- ``availability`` = ok / runs (None without runs).
- ``provider_availability`` = 1 - provider failures / runs the provider could serve: our own
  configuration errors (auth, quota, wrong model, bad request) and rate limits leave the
  denominator, since they say nothing about the provider's health (None when no run is left).
- ``our_errors``: those runs ("our side"); ``provider_errors``: the provider's failures.
- Percentiles: nearest rank over ``ok`` runs, None when there are none.
- ``state``: from provider availability and the thresholds (:func:`state_for`), or from
  availability when every run failed on our side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone

from modelwatch.outcomes import ATTRIBUTION, NOT_PROVIDER_JUDGED, PROVIDER_OUTCOMES, Outcome

OK = Outcome.OK.value
STATES = ("operational", "degraded", "partial_outage", "major_outage", "no_data")
SEVERITY = {"no_data": -1, "operational": 0, "degraded": 1, "partial_outage": 2, "major_outage": 3}
DEFAULT_THRESHOLDS = {"degraded": 0.99, "partial_outage": 0.90, "major_outage": 0.50}
WHO = {"provider": "provider", "configuration": "ours", "capacity": "ours", "none": "none"}


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of an ascending sequence (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * p // 100))
    return sorted_values[int(rank) - 1]


def attribution(outcome: str) -> str:
    """Who an outcome is put down to on the page: provider, ours or none."""
    try:
        return WHO[ATTRIBUTION[Outcome(outcome)]]
    except ValueError:
        return "none"


def counts(outcomes: Mapping[str, int]) -> dict:
    """runs, ok, errors, provider_errors, our_errors, availability, provider_availability."""
    runs = ok = provider_errors = our_errors = 0
    for outcome, n in outcomes.items():  # one pass: this runs for every daily bar of every probe
        runs += n
        if outcome == OK:
            ok += n
        elif outcome in PROVIDER_OUTCOMES:
            provider_errors += n
        elif outcome in NOT_PROVIDER_JUDGED:
            our_errors += n
    judged = runs - our_errors
    return {"runs": runs, "ok": ok, "errors": runs - ok, "provider_errors": provider_errors,
            "our_errors": our_errors,
            "availability": round(ok / runs, 6) if runs else None,
            "provider_availability": round(1 - provider_errors / judged, 6) if judged else None}


def state_of(provider_availability: float | None, thresholds: Mapping[str, float] = DEFAULT_THRESHOLDS) -> str:
    """operational, degraded, partial_outage or major_outage below each threshold; no_data for None."""
    if provider_availability is None:
        return "no_data"
    if provider_availability < thresholds["major_outage"]:
        return "major_outage"
    if provider_availability < thresholds["partial_outage"]:
        return "partial_outage"
    if provider_availability < thresholds["degraded"]:
        return "degraded"
    return "operational"


def state_for(figures: Mapping[str, float | None], thresholds: Mapping[str, float] = DEFAULT_THRESHOLDS) -> str:
    """The state of runs summed up by :func:`counts`.

    From provider availability; but when every run failed on our side (a dead key, a wrong
    model name: nothing judges the provider) from availability, because then the model is
    down for whoever uses that key, and "no data" beside "Errors 8 / 8 runs" would hide it.
    """
    measure = figures["provider_availability"]
    if measure is None:
        measure = figures["availability"]
    return state_of(measure, thresholds)


def worst(states: Sequence[str]) -> str:
    """The worst of several states; probes without data count only when no probe has any."""
    return max(states, key=SEVERITY.__getitem__, default="no_data")


def iso(ts: float) -> str:
    """Unix seconds as ISO 8601 UTC to the second, ending in Z (the API's and report's times)."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def timestamp(text: str) -> float:
    """Unix seconds of a time written by :func:`iso`."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
