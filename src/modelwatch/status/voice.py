"""Voice-agent figures of the status page (issue 13): stages, turn bands, barge-in, first audio.

- ``stages`` (``kind: voice-chain``): per window, P50/P95 of what each stage adds to the
  chain's time to first audio (``StageTiming.ready_s``: ``duration_s`` of ``stt`` and ``llm``,
  ``ttft_s`` of ``tts``), over the chain's ``ok`` runs.
- ``turn_bands`` (``kind: conversation``): per window, P50/P95 of each turn's TTFT by band of
  turns (``outcomes.TURN_BANDS``), over the conversation's ``ok`` runs.
- ``interrupt`` (realtime probes with ``interrupt_after``): per window, P50/P95 of
  ``interrupt_s`` over ``ok`` runs.
- Which probes time a *first audio* with their ``ttft_s``: ``voice-chain`` always; ``realtime``
  and ``conversation`` with ``modality: audio``. The config says so when the page has it
  (:attr:`Series.modality <modelwatch.status.snapshot.Series>`); without a config (``modelwatch
  status --db``) the database does: a ``realtime`` or ``conversation`` probe is taken for audio
  when one of its ``ok`` runs in the last 24 h reported ``output_audio_tokens > 0``.

Percentiles are exact (nearest rank, :func:`modelwatch.figures.percentile`) over the raw rows:
no rollup holds stage or turn timings, so a window longer than ``storage.retention`` covers
only the rows still kept; each figure carries how many values it is over.

Cost: nothing here reads rows of probes that are not voice probes, except one pass over the
*new* rows of ``probe_results`` per refresh for ``interrupt_s`` and ``output_audio_tokens``
(a range of row ids, filtered inside SQLite). Rows are read once: the first build reads from
the longest window's start (the ``ts`` index gives the first row id, the ``probe_id`` indexes
of the detail tables the rest), every later one only the ids written since.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence

from modelwatch import figures
from modelwatch.outcomes import TURN_BANDS, turn_band
from modelwatch.report import has_table

STAGES = ("stt", "llm", "tts")
BANDS = tuple(label for _first, label in TURN_BANDS)
VOICE_CHAIN, CONVERSATION, REALTIME = "voice-chain", "conversation", "realtime"
AUDIO_KINDS = (REALTIME, CONVERSATION)  # kinds whose ttft is a first audio with modality: audio
FIRST_AUDIO_WINDOW = "24h"
# A probe's row is written when it ends, so row ids follow start times only roughly: the first
# id of a window is looked up this much before the window (no probe runs for a day).
ID_MARGIN_S = 86400.0
PERCENTILES = (50, 95)

Key = tuple[str, str]  # (target, kind)


class VoiceTracker:
    """The voice figures of every probe, kept up to date from the rows written since the last scan."""

    def __init__(self) -> None:
        self._after_id: int | None = None  # probe_results ids up to this one have been read
        self._stages: dict[Key, dict[str, list[tuple[float, float]]]] = {}
        self._turns: dict[Key, dict[str, list[tuple[float, float]]]] = {}
        self._interrupts: dict[Key, list[tuple[float, float]]] = {}
        self._audio: dict[Key, float] = {}  # newest start of an ok run with output audio tokens
        self._kept_since = float("-inf")

    def scan(self, conn: sqlite3.Connection, since_ts: float, audio_keys: Sequence[Key] | None = None) -> int:
        """Read what was written since the last scan (the first reads from ``since_ts``); forget
        values that started before ``since_ts``. Return how many values were read.

        ``audio_keys``: the probes that can interrupt (realtime, audio), when a config says which:
        the first scan then reads their rows alone, through the (target, kind, ts) index, instead
        of every raw row of the window.
        """
        if not has_table(conn, "probe_stages"):  # a database from before the voice kinds (m007)
            return 0
        hi = conn.execute("SELECT max(id) FROM probe_results").fetchone()[0] or 0
        lo = self._after_id
        if lo is None:
            first = conn.execute("SELECT id FROM probe_results WHERE ts >= ? ORDER BY ts LIMIT 1",
                                 [since_ts - ID_MARGIN_S]).fetchone()
            lo = first[0] - 1 if first else hi
        seen = 0
        if hi > lo:
            first = self._after_id is None and audio_keys is not None
            seen = self._read(conn, lo, hi, since_ts, audio_keys if first else None)
        self._after_id = max(hi, lo)
        if since_ts > self._kept_since:
            self._forget_before(since_ts)
        return seen

    def _read(self, conn: sqlite3.Connection, lo: int, hi: int, since_ts: float,
              audio_keys: Sequence[Key] | None) -> int:
        seen = 0
        # Stage and turn rows through their probe_id index, each joined to its probe's row by id.
        for target, kind, ts, stage, ttft, duration in conn.execute(
                "SELECT r.target, r.kind, r.ts, s.stage, s.ttft_s, s.duration_s FROM probe_stages s "
                "JOIN probe_results r ON r.id = s.probe_id "
                "WHERE s.probe_id > ? AND s.probe_id <= ? AND r.outcome = 'ok' AND r.ts >= ?",
                [lo, hi, since_ts]):
            value = ttft if stage == "tts" else duration  # outcomes.StageTiming.ready_s
            if value is not None:
                self._stages.setdefault((target, kind), {}).setdefault(stage, []).append((ts, value))
                seen += 1
        for target, kind, ts, turn, ttft in conn.execute(
                "SELECT r.target, r.kind, r.ts, t.turn, t.ttft_s FROM probe_turns t "
                "JOIN probe_results r ON r.id = t.probe_id "
                "WHERE t.probe_id > ? AND t.probe_id <= ? AND r.outcome = 'ok' AND r.ts >= ?",
                [lo, hi, since_ts]):
            if ttft is not None and isinstance(turn, int) and turn >= 1:
                self._turns.setdefault((target, kind), {}).setdefault(turn_band(turn), []).append((ts, ttft))
                seen += 1
        if audio_keys is not None:  # the config named the probes that can have these: read theirs alone
            rows = [row for target, kind in audio_keys for row in conn.execute(
                "SELECT target, kind, ts, interrupt_s, output_audio_tokens FROM probe_results "
                "WHERE target = ? AND kind = ? AND ts >= ? AND id > ? AND id <= ? AND outcome = 'ok' "
                "AND (interrupt_s IS NOT NULL OR output_audio_tokens > 0)", [target, kind, since_ts, lo, hi])]
        else:  # one pass over the new rows (a rowid range), filtered by SQLite: few come back
            rows = conn.execute(
                "SELECT target, kind, ts, interrupt_s, output_audio_tokens FROM probe_results "
                "WHERE id > ? AND id <= ? AND outcome = 'ok' AND +ts >= ? "  # +: the id range, never the ts index
                "AND (interrupt_s IS NOT NULL OR output_audio_tokens > 0)", [lo, hi, since_ts])
        for target, kind, ts, interrupt, audio_tokens in rows:
            key = (target, kind)
            if interrupt is not None:
                self._interrupts.setdefault(key, []).append((ts, interrupt))
                seen += 1
            if audio_tokens and ts > self._audio.get(key, float("-inf")):
                self._audio[key] = ts
        return seen

    def _forget_before(self, since_ts: float) -> None:
        for per in (*self._stages.values(), *self._turns.values(), self._interrupts):
            for name, values in per.items():
                if values and min(ts for ts, _v in values) < since_ts:
                    per[name] = [(ts, v) for ts, v in values if ts >= since_ts]
        self._kept_since = since_ts

    # --- figures of one probe ------------------------------------------------------------------

    def stages(self, key: Key, starts: Mapping[str, float]) -> dict:
        """``{window: {stage: {"p50_s", "p95_s", "runs"}}}`` of a voice chain."""
        per = self._stages.get(key, {})
        return {name: {stage: summary(per.get(stage, ()), start, "runs") for stage in STAGES}
                for name, start in starts.items()}

    def turn_bands(self, key: Key, starts: Mapping[str, float]) -> dict:
        """``{window: {band: {"p50_s", "p95_s", "turns"}}}`` of a conversation: the bands its kept
        runs reached, in order (turn 1's band always)."""
        per = self._turns.get(key, {})
        bands = [band for band in BANDS if band in per] or [BANDS[0]]
        return {name: {band: summary(per.get(band, ()), start, "turns") for band in bands}
                for name, start in starts.items()}

    def interrupt(self, key: Key, starts: Mapping[str, float]) -> dict | None:
        """``{window: {"p50_s", "p95_s", "runs"}}`` of barge-in times, or None without any kept."""
        values = self._interrupts.get(key)
        if not values:
            return None
        return {name: summary(values, start, "runs") for name, start in starts.items()}

    def audio_since(self, key: Key, since_ts: float) -> bool:
        """Whether an ok run of the probe that started at or after ``since_ts`` reported output audio."""
        return self._audio.get(key, float("-inf")) >= since_ts


def summary(values: Iterable[tuple[float, float]], since_ts: float, count: str) -> dict:
    """Exact P50 and P95 of the values that started at or after ``since_ts``, and how many."""
    chosen = sorted(v for ts, v in values if ts >= since_ts)
    out = {f"p{p}_s": _round(figures.percentile(chosen, p)) for p in PERCENTILES}
    out[count] = len(chosen)
    return out


def first_audio_basis(kind: str, modality: str | None, audio_seen: bool) -> str | None:
    """Why a probe's ttft_s is a first audio (``config``, ``kind``, ``audio_tokens``), or None
    when it is a first token: the config's modality when known, else the kind and the database."""
    if modality is not None:
        return "config" if modality == "audio" else None
    if kind == VOICE_CHAIN:
        return "kind"
    if kind in AUDIO_KINDS and audio_seen:
        return "audio_tokens"
    return None


def first_audio_entry(target: dict, probe: dict) -> dict:
    """One row of the index's "Time to first audio" comparison, from a probe's 24 h window."""
    w = probe["windows"][FIRST_AUDIO_WINDOW]
    return {"target": target["target"], "provider": target["provider"], "model": target["model"],
            "kind": probe["kind"], "transport": probe.get("transport"), "state": probe["state"],
            "basis": probe["first_audio"],
            "ttft_p50_s": w["ttft_p50_s"], "ttft_p95_s": w["ttft_p95_s"],
            "runs": w["runs"], "ok": w["ok"], "enough_data": w["enough_data"]}


def comparison(entries: list[dict]) -> dict:
    """The comparison: windows with enough data first, by P50 (then P95, target, kind)."""
    def order(e: dict) -> tuple:
        p50, p95 = e["ttft_p50_s"], e["ttft_p95_s"]
        return (not e["enough_data"] or p50 is None, p50 or 0.0, p95 or 0.0, e["target"], e["kind"])
    return {"window": FIRST_AUDIO_WINDOW, "probes": sorted(entries, key=order)}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
