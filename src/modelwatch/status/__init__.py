"""The availability panel: status page, embeddable panel, badges and JSON API (DESIGN.md).

Modules:

- ``figures``: the one definition of runs, errors, availability, provider
  availability, percentiles and state, shared with ``modelwatch report``.
- ``snapshot``: reads a database (read-only) into a *snapshot*, the plain
  dict every page, badge and JSON answer is rendered from.
- ``voice``: the voice-agent figures in it (stages, turn bands, barge-in, first audio).
- ``html``: server-rendered pages (index, target, embed) from a snapshot.
- ``badges``: SVG badges and shields.io endpoint JSON.
- ``site``: path -> response (bytes, type, ETag) for the daemon, and the static export.
- ``service``: the daemon side, a worker process that refreshes the snapshot and renders.

The snapshot (JSON-able; times are ISO 8601 UTC strings ending in ``Z``)::

    {"as_of": ISO, "title": str, "state": STATE,        # worst current state of every probe
     "windows": ["24h", "7d", "30d", "90d"], "min_runs": int,
     "thresholds": {"degraded": 0.99, "partial_outage": 0.9, "major_outage": 0.5},
     "targets": [{"target": str, "provider": str, "model": str, "state": STATE,
                  "probes": [PROBE, ...]}],
     "incidents": [INCIDENT, ...],                     # newest first, every target
     "first_audio": {"window": "24h", "probes": [AUDIO, ...]}}   # by 24 h TTFT P50, fastest first

    PROBE = {"kind": str, "state": STATE,
             "last_run": {"ts", "outcome", "ttft_s", "duration_s", "error_code"} | None,
             "recent": [{"ts", "outcome", "error_code", "ttft_s"}, ...],   # last 30 runs, oldest first
             "our_side": {"errors": int, "outcomes": {outcome: n}},      # within the runs deciding state
             "windows": {"24h": W, "7d": W, "30d": W, "90d": W},
             "daily": [DAY, ...],                                        # 90 entries, oldest first
             "incidents": [INCIDENT, ...],                               # newest first
             "first_audio": "config" | "kind" | "audio_tokens" | None,   # why ttft_s is a first audio
             # the voice keys its kind has (modelwatch.status.voice), every window:
             "stages": {"24h": {"stt"|"llm"|"tts": {"p50_s", "p95_s", "runs"}}, ...},  # voice-chain
             "turn_bands": {"24h": {"1-5": {"p50_s", "p95_s", "turns"}, ...}, ...},   # conversation
             "interrupt": {"24h": {"p50_s", "p95_s", "runs"}, ...}}     # where interrupt_s is stored
    W = {"since": ISO, "until": ISO, "runs", "ok", "errors", "provider_errors", "our_errors",
         "availability", "provider_availability",                       # 0..1 or None
         "ttft_p50_s", "ttft_p95_s", "ttft_p99_s", "duration_p50_s", "duration_p95_s",
         "duration_p99_s",                                              # float or None
         "outcomes": {outcome: n}, "enough_data": bool}
    DAY = {"date": "YYYY-MM-DD", "runs", "errors", "availability" (None if no runs), "state"}
    INCIDENT = {"target", "kind", "start": ISO, "end": ISO | None, "ongoing": bool,
                "duration_s": float, "runs": int, "failures": int,
                "dominant_outcome": str, "error_code": str | None,
                "attribution": "provider" | "ours" | "none"}
    AUDIO = {"target", "provider", "model", "kind", "state", "basis", "ttft_p50_s", "ttft_p95_s",
             "runs", "ok", "enough_data"}                                # of the probe's 24h window
    STATE = "operational" | "degraded" | "partial_outage" | "major_outage" | "no_data"
"""
