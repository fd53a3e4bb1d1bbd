"""Valid status snapshots (shape in ``modelwatch.status``) for tests of pages, badges and the API.

Every builder takes keyword overrides, so a test states only what it is about::

    snap = snapshot([target("openai/gpt-4o", probes=[probe("rest"), probe("realtime", runs=2)])])
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

AS_OF = "2026-01-31T12:00:00Z"
WINDOWS = ("24h", "7d", "30d", "90d")
WINDOW_DAYS = {"24h": 1, "7d": 7, "30d": 30, "90d": 90}
MIN_RUNS = 5
THRESHOLDS = {"degraded": 0.99, "partial_outage": 0.9, "major_outage": 0.5}
SEVERITY = ("no_data", "operational", "degraded", "partial_outage", "major_outage")


def iso(moment: datetime) -> str:
    """A UTC time as the snapshot writes it (``...Z``)."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def as_of_time() -> datetime:
    return datetime.fromisoformat(AS_OF)


def window(name: str = "24h", runs: int = 1000, errors: int = 8, provider_errors: int = 5,
           ttft_p50_s: float | None = 0.412, min_runs: int = MIN_RUNS, **overrides) -> dict:
    """One window W: ``errors`` of ``runs`` failed, ``provider_errors`` of them the provider's."""
    our_errors = errors - provider_errors
    ok = runs - errors
    outcomes = {k: v for k, v in (("ok", ok), ("server_error", provider_errors),
                                  ("auth_error", our_errors)) if v}
    judged = runs - our_errors
    w = {
        "since": iso(as_of_time() - timedelta(days=WINDOW_DAYS.get(name, 1))), "until": AS_OF,
        "runs": runs, "ok": ok, "errors": errors, "provider_errors": provider_errors,
        "our_errors": our_errors,
        "availability": ok / runs if runs else None,
        "provider_availability": (judged - provider_errors) / judged if judged else None,
        "ttft_p50_s": ttft_p50_s if ok else None,
        "ttft_p95_s": ttft_p50_s * 2.3 if ok and ttft_p50_s else None,
        "ttft_p99_s": ttft_p50_s * 4 if ok and ttft_p50_s else None,
        "duration_p50_s": 1.1 if ok else None, "duration_p95_s": 2.0 if ok else None,
        "duration_p99_s": 3.5 if ok else None,
        "outcomes": outcomes, "enough_data": runs >= min_runs,
    }
    w.update(overrides)
    return w


def day(offset: int, runs: int = 1440, errors: int = 0, state: str | None = None) -> dict:
    """The day ``offset`` days before ``AS_OF``."""
    the_date = (as_of_time().date() - timedelta(days=offset)).isoformat()
    availability = (runs - errors) / runs if runs else None
    if state is None:
        state = "no_data" if not runs else "operational" if availability >= 0.99 else "degraded"
    return {"date": the_date, "runs": runs, "errors": errors, "availability": availability, "state": state}


def run(offset_s: float, outcome: str = "ok", error_code: str | None = None,
        ttft_s: float | None = 0.4) -> dict:
    """A recent run ``offset_s`` seconds before ``AS_OF``."""
    return {"ts": iso(as_of_time() - timedelta(seconds=offset_s)), "outcome": outcome,
            "error_code": error_code, "ttft_s": ttft_s if outcome == "ok" else None}


def incident(target: str, kind: str, start_offset_s: float = 7200, duration_s: float = 900,
             ongoing: bool = False, dominant_outcome: str = "server_error",
             error_code: str | None = "api_error", attribution: str = "provider") -> dict:
    """An incident of one target and kind."""
    start = as_of_time() - timedelta(seconds=start_offset_s)
    end = None if ongoing else iso(start + timedelta(seconds=duration_s))
    return {"target": target, "kind": kind, "start": iso(start), "end": end, "ongoing": ongoing,
            "duration_s": duration_s, "runs": 20, "failures": 15,
            "dominant_outcome": dominant_outcome, "error_code": error_code, "attribution": attribution}


def probe(kind: str = "rest", state: str = "operational", runs: int = 1000, errors: int = 8,
          provider_errors: int = 5, recent: list[dict] | None = None, daily: list[dict] | None = None,
          incidents: list[dict] | None = None, windows: dict | None = None, **overrides) -> dict:
    """A probe kind with every window of ``runs`` runs (scaled up for longer windows)."""
    if windows is None:
        windows = {name: window(name, runs=runs * WINDOW_DAYS[name], errors=errors * WINDOW_DAYS[name],
                                provider_errors=provider_errors * WINDOW_DAYS[name])
                   for name in WINDOWS}
    if recent is None:
        recent = [run(60 * (30 - i), "server_error" if i == 10 else "rate_limited" if i == 20 else "ok",
                      "api_error" if i == 10 else "rate_limit_exceeded" if i == 20 else None)
                  for i in range(30)]
    if daily is None:
        daily = [day(89 - i, errors=20 if i == 80 else 0) for i in range(90)]
    p = {"kind": kind, "state": state, "last_run": dict(recent[-1], duration_s=1.2) if recent else None,
         "recent": recent, "our_side": {"errors": 1, "outcomes": {"rate_limited": 1}},
         "windows": windows, "daily": daily, "incidents": incidents or []}
    p.update(overrides)
    return p


def target(name: str = "openai/gpt-4o-mini", provider: str = "openai", model: str = "gpt-4o-mini",
           probes: list[dict] | None = None, state: str | None = None) -> dict:
    """A target; its state is the worst of its probes' unless given."""
    probes = probes if probes is not None else [probe("rest"), probe("realtime")]
    if state is None:
        state = worst(p["state"] for p in probes)
    return {"target": name, "provider": provider, "model": model, "state": state, "probes": probes}


def worst(states) -> str:
    """The most severe state (no_data only when nothing else is known)."""
    return max(states, key=lambda s: SEVERITY.index(s) if s in SEVERITY else 0, default="no_data")


def snapshot(targets: list[dict] | None = None, incidents: list[dict] | None = None,
             title: str = "Model status", **overrides) -> dict:
    """A whole snapshot; incidents default to every probe's, newest first."""
    targets = targets if targets is not None else [target()]
    if incidents is None:
        incidents = [i for t in targets for p in t["probes"] for i in p["incidents"]]
        incidents.sort(key=lambda i: i["start"], reverse=True)
    snap = {"as_of": AS_OF, "title": title, "state": worst(t["state"] for t in targets),
            "windows": list(WINDOWS), "min_runs": MIN_RUNS, "thresholds": dict(THRESHOLDS),
            "targets": targets, "incidents": incidents}
    snap.update(overrides)
    return snap


def fleet(n_targets: int, kinds: tuple[str, ...] = ("rest", "realtime")) -> dict:
    """A large synthetic snapshot: ``n_targets`` targets with every kind (shared sub-dicts)."""
    states = ("operational",) * 7 + ("degraded", "partial_outage", "major_outage")
    targets = []
    for i in range(n_targets):
        name = f"provider{i % 7}/model-{i}"
        probes = [probe(kind, state=states[(i + j) % len(states)],
                        incidents=[incident(name, kind, start_offset_s=3600 * (i + 1))] if i % 50 == 0 else [])
                  for j, kind in enumerate(kinds)]
        targets.append(target(name, f"provider{i % 7}", f"model-{i}", probes))
    return snapshot(targets)
