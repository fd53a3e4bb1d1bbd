"""Voice figures of the status page (issue 13 point 7), from real SQLite files written by the store.

A voice chain's stages, a conversation's turn bands and barge-in times are compared with
percentiles computed here from the rows the test wrote; the "Time to first audio" comparison
with the probes' own 24 h windows; then the JSON keys and the HTML.
"""

from __future__ import annotations

import json
import math
import random
import re
import sqlite3

from modelwatch import rollups
from modelwatch.outcomes import ProbeResult, turn_band
from modelwatch.status import html
from modelwatch.status.site import Site
from modelwatch.status.snapshot import Series, Settings, SnapshotBuilder
from modelwatch.store import open_db, write_batch
from test_status_snapshot import NOW, probe_of

HOSTILE = "<b>chain</b>&co"
CHAIN, CONV, BARGE, TEXT_RT, AUDIO_RT = "voice/chain", HOSTILE, "rt/barge-in", "rt/text", "rt/audio"
SERIES = [Series(CHAIN, "voice-chain", "openai", "gpt-4o-mini", "audio"),
          Series(CONV, "conversation", "openai", "gpt-4o-mini-realtime", "audio"),
          Series(BARGE, "realtime", "openai", "gpt-4o-mini-realtime", "audio"),
          Series(TEXT_RT, "realtime", "openai", "gpt-realtime-mini", "text"),
          Series(TEXT_RT, "conversation", "openai", "gpt-realtime-mini", "text"),
          Series(AUDIO_RT, "realtime", "openai", "gpt-4o-mini-realtime", "audio")]
HOUR, DAY = 3600, 86400
STARTS = {"24h": rollups.hour_of(NOW) - 23 * HOUR, "7d": rollups.day_of(NOW) - 6 * DAY,
          "30d": rollups.day_of(NOW) - 29 * DAY, "90d": rollups.day_of(NOW) - 89 * DAY}


def ms(rng: random.Random, low: float, high: float) -> float:
    return round(rng.uniform(low, high), 3)


def row(ts: float, target: str, kind: str, outcome: str = "ok", **columns) -> dict:
    ok = outcome == "ok"
    return ProbeResult(ts=ts, target=target, provider="openai", model="m", kind=kind, outcome=outcome,
                       error_code=None if ok else "boom", **columns).as_row()


def chain_rows(rng: random.Random, every: float = 1800.0, span: float = 10 * DAY) -> list[dict]:
    """A voice chain every ``every`` s over ``span``: stage rows on ok and failed runs alike."""
    rows = []
    ts = NOW - span
    while ts < NOW - 120:
        outcome = "server_error" if rng.random() < 0.1 else "ok"
        stt, llm, tts = ms(rng, 0.15, 0.6), ms(rng, 0.2, 1.5), ms(rng, 0.1, 0.5)
        stages = [("stt", 0.0, round(stt / 3, 3), round(stt / 2, 3), stt),
                  ("llm", stt, 0.05, round(llm / 3, 3), llm),
                  ("tts", round(stt + llm, 3), 0.04, tts, round(tts + 1.0, 3) if outcome == "ok" else None)]
        r = row(ts, CHAIN, "voice-chain", outcome, ttft_s=round(stt + llm + tts, 3) if outcome == "ok" else None,
                duration_s=round(stt + llm + tts + 1.0, 3))
        r["stages"] = stages
        rows.append(r)
        ts += every + rng.uniform(-30, 30)
    return rows


def conversation_rows(rng: random.Random, target: str = CONV, turns: int = 24, every: float = 4 * HOUR,
                      span: float = 9 * DAY, audio: int = 40) -> list[dict]:
    rows = []
    ts = NOW - span
    while ts < NOW - 600:
        outcome = "timeout" if rng.random() < 0.1 else "ok"
        timings = [(t, round(t * 2.0, 3), round(ms(rng, 0.2, 0.4) + t / 100, 3), ms(rng, 0.5, 0.9), 10 * t, 8)
                   for t in range(1, turns + 1)]
        r = row(ts, target, "conversation", outcome, ttft_s=timings[0][2] if outcome == "ok" else None,
                duration_s=60.0, output_audio_tokens=audio)
        r["turns"] = timings
        rows.append(r)
        ts += every + rng.uniform(-60, 60)
    return rows


def realtime_rows(rng: random.Random, target: str, audio: int, interrupt: bool, every: float = 900.0,
                  span: float = 8 * DAY, ttft: tuple[float, float] = (0.2, 0.5)) -> list[dict]:
    rows = []
    ts = NOW - span
    while ts < NOW - 60:
        outcome = "overloaded" if rng.random() < 0.05 else "ok"
        ok = outcome == "ok"
        rows.append(row(ts, target, "realtime", outcome, ttft_s=ms(rng, *ttft) if ok else None,
                        duration_s=2.0, output_audio_tokens=audio if ok else None,
                        interrupt_s=ms(rng, 0.02, 0.3) if interrupt and ok else None))
        ts += every + rng.uniform(-20, 20)
    return rows


def all_rows(seed: int = 13) -> list[dict]:
    rng = random.Random(seed)
    rows = (chain_rows(rng) + conversation_rows(rng) + realtime_rows(rng, BARGE, 120, True)
            + realtime_rows(rng, TEXT_RT, 0, False, ttft=(0.1, 0.2))
            + conversation_rows(rng, TEXT_RT, turns=3, audio=0)
            + realtime_rows(rng, AUDIO_RT, 90, False, every=300.0, span=2 * DAY, ttft=(0.25, 0.35)))
    rows.sort(key=lambda r: r["ts"])  # the order the store writes them in, roughly
    return rows


def write_voice_db(path, rows: list[dict] | None = None) -> list[dict]:
    rows = all_rows() if rows is None else rows
    db = open_db(path)
    for i in range(0, len(rows), 50):  # several batches, as the store's writer commits them
        write_batch(db, rows[i:i + 50])
    db.conn.close()
    return rows


def nearest_rank(values: list[float], p: int) -> float | None:
    """The nearest-rank percentile, written out again here."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[math.ceil(len(ordered) * p / 100) - 1]


def expect(values: list[float], count: str) -> dict:
    return {"p50_s": nearest_rank(values, 50), "p95_s": nearest_rank(values, 95), count: len(values)}


def ok_in(rows: list[dict], target: str, kind: str, start: float) -> list[dict]:
    return [r for r in rows if r["target"] == target and r["kind"] == kind and r["outcome"] == "ok"
            and r["ts"] >= start]


def build(path, series=SERIES, **settings) -> dict:
    return SnapshotBuilder(path, Settings(**settings), series).build(NOW)


# --- figures -----------------------------------------------------------------------------------

def test_stage_contributions_per_window_are_the_percentiles_of_the_ok_chains(db_path):
    rows = write_voice_db(db_path)
    stages = probe_of(build(db_path), CHAIN, "voice-chain")["stages"]
    assert list(stages) == ["24h", "7d", "30d", "90d"]
    for window, start in STARTS.items():
        chains = ok_in(rows, CHAIN, "voice-chain", start)
        for i, stage in enumerate(("stt", "llm", "tts")):
            # what a stage adds to the time to first audio: the whole stt and llm, tts to its first audio
            values = [r["stages"][i][3 if stage == "tts" else 4] for r in chains]
            assert stages[window][stage] == expect(values, "runs"), (window, stage)
    assert stages["24h"]["stt"]["runs"] < stages["7d"]["stt"]["runs"] < stages["30d"]["stt"]["runs"]
    assert stages["30d"] == stages["90d"]  # ten days of rows: both hold them all


def test_turn_ttft_by_band_is_the_percentiles_of_the_ok_conversations_turns(db_path):
    rows = write_voice_db(db_path)
    bands = probe_of(build(db_path), CONV, "conversation")["turn_bands"]
    for window, start in STARTS.items():
        turns = [t for r in ok_in(rows, CONV, "conversation", start) for t in r["turns"]]
        assert list(bands[window]) == ["1-5", "6-10", "11-20", "21-50"]  # 24 turns a conversation
        for band in bands[window]:
            values = [t[2] for t in turns if turn_band(t[0]) == band]
            assert bands[window][band] == expect(values, "turns"), (window, band)
    assert bands["24h"]["21-50"]["turns"] == 4 * len(ok_in(rows, CONV, "conversation", STARTS["24h"]))


def test_interrupt_times_of_a_barge_in_probe_and_none_elsewhere(db_path):
    rows = write_voice_db(db_path)
    snap = build(db_path)
    interrupt = probe_of(snap, BARGE, "realtime")["interrupt"]
    for window, start in STARTS.items():
        values = [r["interrupt_s"] for r in ok_in(rows, BARGE, "realtime", start)]
        assert interrupt[window] == expect(values, "runs"), window
    assert "interrupt" not in probe_of(snap, AUDIO_RT, "realtime")
    assert "stages" not in probe_of(snap, BARGE, "realtime") and "turn_bands" not in probe_of(snap, BARGE, "realtime")
    # read through the config's audio probes (their index) or through every raw row: the same figures
    assert probe_of(build(db_path, series=None), BARGE, "realtime")["interrupt"] == interrupt


def test_time_to_first_audio_compares_the_audio_probes_by_their_24h_p50(db_path):
    write_voice_db(db_path)
    snap = build(db_path)
    compared = snap["first_audio"]
    assert compared["window"] == "24h"
    entries = compared["probes"]
    # the text realtime probe and the text conversation time a first token: not compared
    assert sorted((e["target"], e["kind"]) for e in entries) == sorted(
        [(CHAIN, "voice-chain"), (CONV, "conversation"), (BARGE, "realtime"), (AUDIO_RT, "realtime")])
    assert {e["basis"] for e in entries} == {"config"}
    for e in entries:
        w = probe_of(snap, e["target"], e["kind"])["windows"]["24h"]
        assert (e["ttft_p50_s"], e["ttft_p95_s"], e["runs"], e["enough_data"]) == \
            (w["ttft_p50_s"], w["ttft_p95_s"], w["runs"], w["enough_data"])
    p50s = [e["ttft_p50_s"] for e in entries]
    assert p50s == sorted(p50s)
    assert entries[-1]["kind"] == "voice-chain"  # stt + llm + tts: the slowest first audio
    assert probe_of(snap, TEXT_RT, "realtime")["first_audio"] is None
    assert probe_of(snap, CHAIN, "voice-chain")["first_audio"] == "config"


def test_without_a_config_the_database_says_which_probes_time_a_first_audio(db_path):
    write_voice_db(db_path)
    snap = SnapshotBuilder(db_path, Settings()).build(NOW)
    basis = {(e["target"], e["kind"]): e["basis"] for e in snap["first_audio"]["probes"]}
    # voice-chain by its kind; realtime and conversation by output audio tokens in the last 24 h
    assert basis == {(CHAIN, "voice-chain"): "kind", (CONV, "conversation"): "audio_tokens",
                     (BARGE, "realtime"): "audio_tokens", (AUDIO_RT, "realtime"): "audio_tokens"}
    assert probe_of(snap, CHAIN, "voice-chain")["stages"] == probe_of(build(db_path), CHAIN, "voice-chain")["stages"]


def test_a_second_build_reads_only_new_rows_and_agrees_with_a_fresh_builder(db_path):
    rows = all_rows()
    split = NOW - 3000  # in the previous hour: one the builder reads again (a settled hour it would not)
    write_voice_db(db_path, [r for r in rows if r["ts"] < split])
    builder = SnapshotBuilder(db_path, Settings(), SERIES)
    first = builder.build(NOW)
    write_voice_db(db_path, [r for r in rows if r["ts"] >= split])
    second = builder.build(NOW + 1)
    assert second == SnapshotBuilder(db_path, Settings(), SERIES).build(NOW + 1)
    assert probe_of(second, CHAIN, "voice-chain")["stages"]["24h"]["stt"]["runs"] > \
        probe_of(first, CHAIN, "voice-chain")["stages"]["24h"]["stt"]["runs"]
    # a day later the oldest values leave the windows, as the rollup windows' do
    later = builder.build(NOW + 2 * DAY)
    assert later == SnapshotBuilder(db_path, Settings(), SERIES).build(NOW + 2 * DAY)


def test_a_database_from_before_the_voice_tables_still_builds(db_path):
    write_voice_db(db_path, [r for r in all_rows() if r["kind"] == "realtime"])
    conn = sqlite3.connect(db_path)
    conn.execute("DROP TABLE probe_stages")
    conn.execute("DROP TABLE probe_turns")
    conn.commit()
    conn.close()
    snap = build(db_path)
    assert probe_of(snap, CHAIN, "voice-chain")["stages"]["24h"]["stt"] == {"p50_s": None, "p95_s": None, "runs": 0}
    assert [e["kind"] for e in snap["first_audio"]["probes"]][-1] == "voice-chain"  # no runs: last


# --- JSON and HTML -----------------------------------------------------------------------------

def _site(db_path) -> Site:
    write_voice_db(db_path)
    site = Site(SnapshotBuilder(db_path, Settings(), SERIES))
    site.refresh(NOW)
    return site


def test_the_json_adds_the_voice_keys_and_keeps_the_old_ones(db_path):
    site = _site(db_path)
    chain = json.loads(site.answer(f"/api/v1/targets/{CHAIN}", {}).body)
    [p] = chain["probes"]
    assert set(p) == {"kind", "state", "last_run", "windows", "daily", "incidents", "recent", "our_side",
                      "first_audio", "transport", "stages"}
    assert set(p["stages"]) == {"24h", "7d", "30d", "90d"}
    assert set(p["stages"]["7d"]) == {"stt", "llm", "tts"}
    assert set(p["stages"]["7d"]["tts"]) == {"p50_s", "p95_s", "runs"}
    conv = json.loads(site.answer("/api/v1/targets/" + CONV.replace("&", "%26"), {}).body)
    assert set(conv["probes"][0]["turn_bands"]["24h"]["1-5"]) == {"p50_s", "p95_s", "turns"}
    barge = json.loads(site.answer(f"/api/v1/targets/{BARGE}", {}).body)
    assert set(barge["probes"][0]["interrupt"]["24h"]) == {"p50_s", "p95_s", "runs"}
    text = json.loads(site.answer(f"/api/v1/targets/{TEXT_RT}", {}).body)
    assert [set(p) - {"kind", "state", "last_run", "windows", "daily", "incidents", "recent", "our_side"}
            for p in text["probes"]] == [{"first_audio", "transport"}, {"first_audio", "transport", "turn_bands"}]
    status = json.loads(site.answer("/api/v1/status", {}).body)
    assert set(status) == {"as_of", "state", "targets", "first_audio"}
    assert status["first_audio"] == site.snapshot["first_audio"]
    assert set(status["first_audio"]["probes"][0]) == {"target", "provider", "model", "kind", "transport", "state",
                                                      "basis", "ttft_p50_s", "ttft_p95_s", "runs", "ok",
                                                      "enough_data"}


def _cell(page: str, attrs: str) -> str:
    found = re.search(rf"<td {re.escape(attrs)}>(.*?)</td>", page)
    assert found, attrs
    return re.sub(r"<[^>]+>", "", found.group(1))


def test_the_target_page_shows_the_stage_turn_and_interrupt_tables(db_path):
    site = _site(db_path)
    snap = site.snapshot
    page = site.answer(f"/targets/{CHAIN}/", {}).body.decode()
    stages = probe_of(snap, CHAIN, "voice-chain")["stages"]
    assert page.count("<table class=\"voice stages\" data-kind=\"voice-chain\">") == 1
    for window in ("24h", "7d"):
        for stage in ("stt", "llm", "tts"):
            f = stages[window][stage]
            text = _cell(page, f"data-kind=\"voice-chain\" data-window=\"{window}\" data-stage=\"{stage}\"")
            assert text == f"{html.fmt_latency(f['p50_s'])} / {html.fmt_latency(f['p95_s'])} ({f['runs']} runs)"
    assert "style=" not in page and "<script" not in page
    # the conversation's target is named with markup: escaped wherever it lands
    conv = site.answer("/targets/" + CONV.replace("&", "%26") + "/", {}).body.decode()
    assert HOSTILE not in conv and html.esc(HOSTILE) in conv
    bands = probe_of(snap, CONV, "conversation")["turn_bands"]["24h"]
    for band, f in bands.items():
        text = _cell(conv, f"data-kind=\"conversation\" data-window=\"24h\" data-band=\"{band}\"")
        assert text == f"{html.fmt_latency(f['p50_s'])} / {html.fmt_latency(f['p95_s'])} ({f['turns']} turns)"
    barge = site.answer(f"/targets/{BARGE}/", {}).body.decode()
    assert "<table class=\"voice interrupt\" data-kind=\"realtime\">" in barge
    f = probe_of(snap, BARGE, "realtime")["interrupt"]["7d"]
    assert _cell(barge, "data-kind=\"realtime\" data-window=\"7d\" data-figure=\"interrupt\"") == \
        f"{html.fmt_latency(f['p50_s'])} / {html.fmt_latency(f['p95_s'])} ({f['runs']} runs)"
    assert "table class=\"voice" not in site.answer(f"/targets/{AUDIO_RT}/", {}).body.decode()


def test_few_values_say_no_measurements_yet(db_path):
    write_voice_db(db_path, chain_rows(random.Random(3), every=6 * HOUR, span=2 * DAY))
    site = Site(SnapshotBuilder(db_path, Settings(min_runs=5), SERIES))
    snap = site.refresh(NOW)
    assert probe_of(snap, CHAIN, "voice-chain")["stages"]["24h"]["stt"]["runs"] < 5
    page = site.answer(f"/targets/{CHAIN}/", {}).body.decode()
    assert ("<td data-kind=\"voice-chain\" data-window=\"24h\" data-stage=\"stt\" class=\"no-data\">"
            "No measurements yet</td>") in page


def test_the_index_compares_time_to_first_audio_fastest_first(db_path):
    site = _site(db_path)
    page = site.answer("/", {}).body.decode()
    section = page[page.index("<section id=\"first-audio\""):page.index("</section>", page.index("id=\"first-audio\""))]
    order = re.findall(r"<tr class=\"first-audio-probe\" data-target=\"([^\"]*)\" data-kind=\"([^\"]*)\"", section)
    assert order == [(html.esc(e["target"]), e["kind"]) for e in site.snapshot["first_audio"]["probes"]]
    for e in site.snapshot["first_audio"]["probes"]:
        attrs = f"data-target=\"{html.esc(e['target'])}\" data-kind=\"{e['kind']}\""
        assert _cell(section, f"{attrs} data-figure=\"ttft_p50\"") == html.fmt_latency(e["ttft_p50_s"])
        assert _cell(section, f"{attrs} data-figure=\"ttft_p95\"") == html.fmt_latency(e["ttft_p95_s"])
    assert HOSTILE not in page and "Time to first audio · 24h" in section
    assert "style=" not in page


def test_an_index_without_audio_probes_has_no_comparison(db_path):
    write_voice_db(db_path, realtime_rows(random.Random(1), TEXT_RT, 0, False))
    site = Site(SnapshotBuilder(db_path, Settings(), [Series(TEXT_RT, "realtime", "openai", "m", "text")]))
    snap = site.refresh(NOW)
    assert snap["first_audio"] == {"window": "24h", "probes": []}
    assert "first-audio" not in site.answer("/", {}).body.decode()


def test_the_config_tells_the_page_what_each_probes_ttft_times(tmp_path):
    from modelwatch.config import load_config
    from modelwatch.status.service import series_from

    path = tmp_path / "modelwatch.yaml"
    path.write_text(
        "providers: {openai: {type: openai, base_url: 'http://127.0.0.1:9/v1', api_key: sk-test}}\n"
        "targets:\n"
        "  - {name: chain, provider: openai, model: gpt-4o-mini, probes: [{kind: voice-chain, "
        "stt_model: gpt-4o-mini-transcribe, tts_model: gpt-4o-mini-tts}]}\n"
        "  - {name: rt, provider: openai, model: gpt-4o-mini-realtime-preview, probes: ["
        "{kind: realtime, modality: audio}, {kind: rest}]}\n"
        "  - {name: conv, provider: openai, model: gpt-4o-mini-realtime-preview, probes: ["
        "{kind: conversation, api: realtime, modality: audio, turns: 3}]}\n")
    series = series_from(load_config(path).jobs)
    assert [(s.target, s.kind, s.modality) for s in series] == [
        ("chain", "voice-chain", "audio"), ("rt", "realtime", "audio"), ("rt", "rest", "text"),
        ("conv", "conversation", "audio")]


def test_a_webrtc_probe_stands_beside_the_websocket_one_in_the_comparison(db_path):
    write_voice_db(db_path)
    series = [Series(s.target, s.kind, s.provider, s.model, s.modality,
                     "webrtc" if s.target == AUDIO_RT else "websocket" if s.kind == "realtime" else "http")
              for s in SERIES]
    site = Site(SnapshotBuilder(db_path, Settings(), series))
    site.refresh(NOW)
    entries = {e["target"]: e for e in site.snapshot["first_audio"]["probes"] if e["kind"] == "realtime"}
    assert entries[AUDIO_RT]["transport"] == "webrtc" and entries[BARGE]["transport"] == "websocket"
    page = html.render_index(site.snapshot)
    rows = {m.group(1): m.group(2) for m in re.finditer(
        r'<tr class="first-audio-probe" data-target="([^"]+)" data-kind="realtime".*?</td><td>([^<]+)</td>', page)}
    assert rows[html.esc(AUDIO_RT)] == "realtime over WebRTC" and rows[html.esc(BARGE)] == "realtime"
    target = json.loads(site.answer(f"/api/v1/targets/{AUDIO_RT}", {}).body)
    assert target["probes"][0]["transport"] == "webrtc"
