"""The status site in a real browser (issue 12): Debian's chromium, driven by Selenium.

One ``modelwatch run`` daemon for the module probes the simulator (demo scenario) every
second: a healthy model, the flaky one (fails its 5th request, then one in every 3 to 8),
a target with two kinds side by side, a target whose model name is an HTML tag, and a
target probed once a minute (fewer than ``min_runs`` runs while the module runs). The pages
are read with JavaScript off and on, the embed is shown in an iframe on another origin, and
what they say is compared with the API's snapshot of the same ``as_of`` and with the rows
of the database itself. Screenshots go to ``tmp_path`` always, and to the directory in
``MODELWATCH_SCREENSHOTS`` when it is set (docs/images/ holds the committed ones).
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from browser import chrome, full_page, png_size, require_chromium, set_viewport
from conftest import TEST_KEY, free_port, start_process
from daemon_helpers import http_get, stop_daemon, wait_for

from modelwatch import figures
from modelwatch.status.html import STATES, fmt_percent

pytestmark = pytest.mark.slow  # a daemon, the simulator and a browser: `pytest -m "not slow"` skips it

DEMO = Path(__file__).parent.parent / "src" / "modelwatch" / "data" / "demo-scenario.yaml"
TITLE = "Model availability <browser test> & co"
HOSTILE = "<img src=x onerror=alert(1)>"
TWO_KINDS = "realtime-mini"
# name -> (model, kinds); "hourly" runs once a minute, its first run half a minute in.
TARGETS = {
    "gpt-4o-mini": ("gpt-4o-mini", ["rest"]),
    "flaky-model": ("flaky-model", ["rest"]),
    TWO_KINDS: ("gpt-4o-mini-realtime-preview", ["rest", "realtime"]),
    "hostile-model": (HOSTILE, ["rest"]),
    "hourly": ("gpt-4o-mini", ["models"]),
}
RARE = "hourly"
MIN_RUNS = 3
COMMIT_S = 0.25  # store.COMMIT_EVERY_S: a row is in the database this long after its probe ended


@dataclass
class Site:
    url: str
    db: Path
    host: str  # the other origin, serving pages that frame the site


def _config(path: Path, sim: str, db: Path, port: int, origin: str) -> Path:
    q = json.dumps  # a JSON string is a YAML flow scalar, whatever it holds
    lines = [f"storage: {{path: {q(str(db))}}}",
             f"server: {{listen: '127.0.0.1:{port}'}}",
             "defaults: {interval: 1s, timeout: 3s}",
             f"status: {{title: {q(TITLE)}, refresh: 1s, min_runs: {MIN_RUNS}, frame_ancestors: [{q(origin)}]}}",
             "providers:",
             f"  sim: {{type: openai, base_url: {q(sim + '/v1')}, api_key: {TEST_KEY}}}",
             "targets:"]
    for name, (model, kinds) in TARGETS.items():
        every = ", interval: 60s" if name == RARE else ""
        probes = ", ".join(f"{{kind: {k}{every}}}" for k in kinds)
        lines.append(f"  - {{name: {name}, provider: sim, model: {q(model)}, probes: [{probes}]}}")
    path.write_text("\n".join(lines) + "\n")
    return path


class _FrameHost(http.server.ThreadingHTTPServer):
    """Another origin (127.0.0.1, another port) whose pages put the site in iframes."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        super().__init__(("127.0.0.1", 0), _FrameHandler)
        self.origin = f"http://127.0.0.1:{self.server_address[1]}"


class _FrameHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = self.server.pages.get(self.path)
        if body is None:
            self.send_error(404)
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:  # noqa: ANN002
        pass


def _frame_page(src: str, width: int = 400, height: int = 240) -> str:
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>host</title>"
            "<link rel=\"icon\" href=\"data:,\"></head>"
            "<body style=\"margin:10px;background:#eef1f4\">"
            f"<iframe id=\"frame\" src=\"{src}\" width=\"{width}\" height=\"{height}\" "
            "style=\"border:1px solid #ccd\"></iframe></body></html>")


def api(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


def _runs(status: dict, target: str, kind: str, window: str = "24h") -> dict:
    for t in status["targets"]:
        if t["target"] == target:
            for p in t["probes"]:
                if p["kind"] == kind:
                    return p["windows"][window]
    raise AssertionError(f"{target}/{kind} not in the API's answer")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The simulator, a frame host on another origin and one daemon probing every second."""
    require_chromium()
    tmp = tmp_path_factory.mktemp("browser")
    sim, match = start_process(["sim", "--listen", "127.0.0.1:0", "--scenario", str(DEMO)],
                               r"listening on (\S+)")
    host = _FrameHost()
    threading.Thread(target=host.serve_forever, daemon=True).start()
    port, db = free_port(), tmp / "modelwatch.db"
    cfg = _config(tmp / "modelwatch.yaml", match.group(1), db, port, host.origin)
    url = f"http://127.0.0.1:{port}"
    log = (tmp / "daemon.log").open("w")  # a file, not a pipe: nobody reads it while it runs
    daemon = subprocess.Popen([sys.executable, "-m", "modelwatch", "run", "-c", str(cfg)],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        started = time.monotonic()
        wait_for(lambda: http_get(url + "/-/healthy") == "OK\n" or daemon.poll() is not None, 20)
        assert daemon.poll() is None, (tmp / "daemon.log").read_text()

        def ready() -> bool:
            try:
                status = api(url + "/api/v1/status")
            except urllib.error.HTTPError:  # 503 until the worker's first snapshot
                return False
            every_second = [(n, k) for n, (_, kinds) in TARGETS.items() if n != RARE for k in kinds]
            return (time.monotonic() - started >= 8
                    and all(_runs(status, n, k)["runs"] >= MIN_RUNS + 2 for n, k in every_second)
                    and _runs(status, "flaky-model", "rest")["errors"] >= 1)
        wait_for(ready, 40, every=0.5)
        yield Site(url, db, host.origin), host
    finally:
        stop_daemon(daemon)
        log.close()
        host.shutdown()
        host.server_close()
        sim.terminate()
        sim.wait(10)


# --- the database's own rows -------------------------------------------------------------------

def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def db_rows(db: Path, target: str, kind: str, since: float, until: float) -> list[tuple[float, float, str]]:
    """(ts, end, outcome) of the raw rows of one probe with ``since <= ts < until``, oldest first."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute("SELECT ts, ts + coalesce(duration_s, 0), outcome FROM probe_results "
                            "WHERE target = ? AND kind = ? AND ts >= ? AND ts < ? ORDER BY ts",
                            [target, kind, since, until]).fetchall()
    finally:
        conn.close()


def window_of(rows: list[tuple[float, float, str]]) -> dict:
    """runs, ok, errors, ... and outcomes of rows, by the figures' own definitions."""
    outcomes = dict(Counter(outcome for _, _, outcome in rows))
    return {**figures.counts(outcomes), "outcomes": outcomes}


def _same_snapshot(driver, url: str, path: str = "/") -> dict:  # noqa: ANN001
    """Load ``path`` and the API until both come from one snapshot (the same ``as_of``)."""
    for _ in range(10):
        status = api(url + "/api/v1/status")
        driver.get(url + path)
        shown = driver.find_element("css selector", "#banner .as-of time").get_attribute("datetime")
        if shown == status["as_of"]:
            return status
    raise AssertionError("the page and the API never showed the same snapshot")


def _fig(probe, name: str) -> str:  # noqa: ANN001 - a WebElement
    return probe.find_element("css selector", f".figures[data-window='24h'] .fig[data-figure='{name}']").text


# --- the tests ---------------------------------------------------------------------------------

def test_index_without_javascript_shows_the_databases_figures(site):
    s, _ = site
    with chrome(js=False) as driver:
        status = _same_snapshot(driver, s.url)
        assert driver.execute_script("return document.title") == TITLE == driver.title
        banner = driver.find_element("css selector", "#banner")
        assert banner.get_attribute("data-state") == status["state"] and status["state"] in STATES
        articles = driver.find_elements("css selector", "#targets article.target")
        assert [a.get_attribute("data-target") for a in articles] == list(TARGETS)
        # the hostile model name is text, never an element
        assert driver.find_elements("css selector", "img") == []
        meta = driver.find_element("css selector", "article[data-target='hostile-model'] .meta").text
        assert HOSTILE in meta
        assert HOSTILE in driver.find_element("tag name", "body").text
        as_of = _ts(status["as_of"])  # every row the snapshot read is in the database by now
        compared = 0
        for article in articles:
            name = article.get_attribute("data-target")
            probes = article.find_elements("css selector", ".probe")
            assert [p.get_attribute("data-kind") for p in probes] == TARGETS[name][1]
            for probe in probes:
                kind = probe.get_attribute("data-kind")
                assert len(probe.find_elements("css selector", ".bars i.bar")) == 90
                marks = probe.find_elements("css selector", ".strip i.run")
                assert len(marks) <= 30
                w = _runs(status, name, kind)
                since = _ts(w["since"])
                assert w["until"] == status["as_of"]
                # The snapshot read the rows committed by then: per probe, the oldest N rows of
                # its window (a target's probes run one at a time, so they are committed in the
                # order they started). N is at least the rows that ended a commit period before
                # as_of, and the rows of probes that had started by the read at most.
                rows = db_rows(s.db, name, kind, since, as_of + 1.0)  # as_of is printed to the second
                settled = sum(1 for ts, end, _ in rows if ts < as_of and end + 2 * COMMIT_S < as_of)
                assert settled <= w["runs"] <= len(rows), (name, kind, settled, w, len(rows))
                assert len(rows) - settled <= 3, (name, kind, rows)  # the uncertainty stays small
                assert {k: w[k] for k in window_of(rows)} == window_of(rows[:w["runs"]]), (name, kind)
                if name == RARE:  # below min_runs all along: the words, not figures
                    assert w["runs"] < MIN_RUNS and not w["enough_data"]
                    assert probe.find_element("css selector", ".no-data[data-window='24h']").text == \
                        "No measurements yet"
                    assert probe.find_elements("css selector", ".figures[data-window='24h']") == []
                    assert len(marks) == w["runs"]
                    continue
                assert w["enough_data"] and min(30, settled) <= len(marks)
                assert _fig(probe, "availability") == f"{fmt_percent(w['availability'])} · 24h"
                assert _fig(probe, "errors") == f"Errors {w['errors']} / {w['runs']} runs · 24h"
                assert _fig(probe, "provider_errors") == f"Provider failures {w['provider_errors']} · 24h"
                assert _fig(probe, "our_errors") == f"Our side {w['our_errors']} · 24h"
                compared += 1
        assert compared == sum(len(k) for n, (_, k) in TARGETS.items() if n != RARE)
        flaky = _runs(status, "flaky-model", "rest")
        assert flaky["errors"] >= 1 and flaky["availability"] < 1
        hostile = _runs(status, "hostile-model", "rest")
        assert hostile["our_errors"] == hostile["runs"]  # the simulator knows no such model


def test_index_with_javascript_has_no_csp_errors_and_no_alert(site):
    from selenium.common.exceptions import NoAlertPresentException

    s, _ = site
    with chrome(js=True) as driver:
        driver.get(s.url + "/")
        assert driver.find_element("css selector", "#banner").get_attribute("data-state") in STATES
        assert driver.title == TITLE
        assert driver.execute_script(  # the stylesheet loaded and applies (style-src 'self')
            "return [...document.styleSheets].some(s => s.href && s.href.endsWith('/static/status.css')"
            " && s.cssRules.length > 0)")
        assert driver.find_elements("css selector", "img") == []
        with pytest.raises(NoAlertPresentException):
            driver.switch_to.alert.text  # noqa: B018 - reading it is the check
        logs = driver.get_log("browser")
        assert not [e for e in logs if e["level"] == "SEVERE"], logs
        assert not [e for e in logs if "Content Security Policy" in e["message"]], logs


def test_target_page_shows_both_kinds_side_by_side(site):
    s, _ = site
    with chrome(js=False) as driver:
        status = _same_snapshot(driver, s.url, f"/targets/{TWO_KINDS}/")
        assert driver.find_element("css selector", "body").get_attribute("class") == "page-target"
        kinds = TARGETS[TWO_KINDS][1]
        columns = driver.find_elements("css selector", "#kinds .probe")
        assert [c.get_attribute("data-kind") for c in columns] == kinds
        # side by side: the same top edge, the second to the right of the first
        first, second = (c.rect for c in columns)
        assert abs(first["y"] - second["y"]) < 2 and second["x"] >= first["x"] + first["width"] - 1
        tables = driver.find_elements("css selector", "table.window[data-window]")
        assert [t.get_attribute("data-window") for t in tables] == ["24h", "7d", "30d", "90d"]
        for table in tables:
            window = table.get_attribute("data-window")
            for kind in kinds:
                cells = table.find_elements("css selector", f"td[data-kind='{kind}']")
                assert cells and all(c.get_attribute("data-window") == window for c in cells)
                w = _runs(status, TWO_KINDS, kind, window)
                runs = table.find_element("css selector", f"td[data-kind='{kind}'][data-figure='runs']")
                assert runs.text == str(w["runs"])
                errors = table.find_element("css selector", f"td[data-kind='{kind}'][data-figure='errors']")
                assert errors.text == f"{w['errors']} / {w['runs']} runs"
        assert driver.title == f"{TWO_KINDS} · {TITLE}"
        driver.find_element("css selector", "a.back").click()
        wait_for(lambda: driver.current_url == s.url + "/", 10)
        assert driver.find_element("css selector", "body").get_attribute("class") == "page-index"
        assert driver.find_elements("css selector", "#banner")


def _embed_text(driver, host: str, page: str) -> str:  # noqa: ANN001
    driver.get(host + page)
    frame = driver.find_element("css selector", "#frame")
    driver.switch_to.frame(frame)
    try:
        wait_for(lambda: driver.find_elements("css selector", "#panel"), 10)
        return driver.find_element("css selector", "#panel").text
    finally:
        driver.switch_to.default_content()


def test_embed_in_an_iframe_on_another_origin(site):
    s, host = site
    host.pages["/flaky.html"] = _frame_page(f"{s.url}/embed/flaky-model?window=24h")
    host.pages["/rare.html"] = _frame_page(f"{s.url}/embed/{RARE}?kind=models&window=24h")
    host.pages["/index.html"] = _frame_page(f"{s.url}/")
    assert s.host != s.url and s.host.startswith("http://127.0.0.1:")
    with chrome(js=True) as driver:
        for _ in range(10):  # the frame and the API from one snapshot
            status = api(s.url + "/api/v1/status")
            text = _embed_text(driver, s.host, "/flaky.html")
            driver.switch_to.frame(driver.find_element("css selector", "#frame"))
            framed = driver.execute_script("return [document.title, document.body.className]")
            driver.switch_to.default_content()
            w = _runs(status, "flaky-model", "rest")
            if f"Errors {w['errors']} / {w['runs']} runs · 24h" in text:
                break
        else:
            raise AssertionError(f"the embed never showed the API's figures: {text!r} vs {w}")
        assert w["errors"] >= 1 and framed == ["flaky-model · rest", "page-embed"]
        assert f"Availability {fmt_percent(w['availability'])} · 24h" in text
        assert "Last automated test" in text
        # fewer than min_runs runs: the words instead of figures
        assert "No measurements yet" in _embed_text(driver, s.host, "/rare.html")
        assert _runs(api(s.url + "/api/v1/status"), RARE, "models")["runs"] < MIN_RUNS
        logs = driver.get_log("browser")  # the embeds were allowed on this origin, nothing refused
        assert not [e for e in logs if e["level"] == "SEVERE"], logs
        # any other page may not be framed: the browser refuses it, nothing of it shows
        driver.get(s.host + "/index.html")
        time.sleep(0.5)
        driver.switch_to.frame(driver.find_element("css selector", "#frame"))
        assert driver.find_elements("css selector", "#banner") == []
        assert driver.find_elements("css selector", "#targets") == []
        driver.switch_to.default_content()
        refused = [e["message"] for e in driver.get_log("browser") if "frame" in e["message"]]
        assert any("frame-ancestors" in m or "X-Frame-Options" in m for m in refused), refused


def _save(driver, tmp_path: Path, name: str) -> Path:  # noqa: ANN001
    path = tmp_path / name
    assert driver.save_screenshot(str(path))
    out = os.environ.get("MODELWATCH_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(out) / name)
    return path


def test_screenshots(site, tmp_path):
    s, host = site
    host.pages["/embed.html"] = _frame_page(f"{s.url}/embed/flaky-model?window=24h")
    shots = {}
    with chrome(js=True, width=1280, height=900) as driver:
        driver.get(s.url + "/")
        full_page(driver, 1280)
        shots["status-index.png"] = (_save(driver, tmp_path, "status-index.png"), 1280)
        driver.get(f"{s.url}/targets/{TWO_KINDS}/")
        set_viewport(driver, 1280, 900)
        full_page(driver, 1280)
        shots["status-target.png"] = (_save(driver, tmp_path, "status-target.png"), 1280)
    with chrome(js=True, width=420, height=260) as driver:
        driver.get(s.host + "/embed.html")
        set_viewport(driver, 420, 260)
        driver.switch_to.frame(driver.find_element("css selector", "#frame"))
        wait_for(lambda: driver.find_elements("css selector", "#panel .fig[data-figure='errors']"), 10)
        driver.switch_to.default_content()
        shots["status-embed.png"] = (_save(driver, tmp_path, "status-embed.png"), 420)
    for name, (path, width) in shots.items():
        assert png_size(path)[0] == width, name
        assert path.stat().st_size > 5000, name  # a page, not a blank
    assert png_size(shots["status-embed.png"][0]) == (420, 260)


# --- voice figures (issue 13 point 7), from a database the store wrote ----------------------------

class _SiteServer(http.server.ThreadingHTTPServer):
    """The status site of one snapshot, served with the daemon's Content-Security-Policy."""

    def __init__(self, status_site) -> None:  # noqa: ANN001 - a modelwatch.status.site.Site
        self.status_site = status_site
        super().__init__(("127.0.0.1", 0), _SiteHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _SiteHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        from urllib.parse import parse_qsl, urlsplit

        from modelwatch.status.service import BASE_CSP

        parts = urlsplit(self.path)
        answer = self.server.status_site.answer(parts.path, dict(parse_qsl(parts.query)))
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        self.send_header("Content-Security-Policy", f"{BASE_CSP}; frame-ancestors 'none'")
        self.end_headers()
        self.wfile.write(answer.body)

    def log_message(self, *args) -> None:  # noqa: ANN002
        pass


def test_voice_figures_in_a_real_browser(db_path, tmp_path):
    """Stage, turn-band and interrupt tables and the first-audio comparison: shown, escaped, no CSP error."""
    from test_status_voice import BARGE, CHAIN, CONV, HOSTILE, SERIES, write_voice_db
    from test_status_snapshot import NOW

    from modelwatch.status import html
    from modelwatch.status.site import Site as StatusSite
    from modelwatch.status.snapshot import Settings, SnapshotBuilder

    require_chromium()
    write_voice_db(db_path)
    status_site = StatusSite(SnapshotBuilder(db_path, Settings(), SERIES))
    snap = status_site.refresh(NOW)
    server = _SiteServer(status_site)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with chrome(js=True, width=1280, height=900) as driver:
            driver.get(server.url + "/")
            rows = driver.find_elements("css selector", "#first-audio tr.first-audio-probe")
            expected = snap["first_audio"]["probes"]
            assert [(r.get_attribute("data-target"), r.get_attribute("data-kind")) for r in rows] == \
                [(e["target"], e["kind"]) for e in expected]
            for row, e in zip(rows, expected):
                assert row.find_element("css selector", "td[data-figure='ttft_p50']").text == \
                    html.fmt_latency(e["ttft_p50_s"])
            assert HOSTILE in driver.find_element("css selector", "#first-audio").text  # as text
            assert driver.find_elements("css selector", "#first-audio b") == []
            full_page(driver, 1280)
            index_shot = _save(driver, tmp_path, "status-first-audio.png")
            for path in (f"/targets/{CHAIN}/", f"/targets/{BARGE}/", "/targets/" + CONV.replace("&", "%26") + "/"):
                driver.get(server.url + path)
                assert driver.find_elements("css selector", ".probe table.voice"), path
            driver.get(f"{server.url}/targets/{CHAIN}/")
            stages = driver.find_element("css selector", "table.voice.stages[data-kind='voice-chain']")
            assert stages.is_displayed()
            assert [r.get_attribute("data-stage") for r in stages.find_elements("css selector", "tbody tr")] == \
                ["stt", "llm", "tts"]
            # the table stays inside its kind's column
            column = driver.find_element("css selector", "#kinds .probe[data-kind='voice-chain']")
            assert stages.rect["x"] + stages.rect["width"] <= column.rect["x"] + column.rect["width"] + 1
            logs = driver.get_log("browser")
            assert not [e for e in logs if e["level"] == "SEVERE"], logs
            assert not [e for e in logs if "Content Security Policy" in e["message"]], logs
            set_viewport(driver, 1280, 900)
            full_page(driver, 1280)
            shot = _save(driver, tmp_path, "status-voice.png")
        for path in (shot, index_shot):
            assert png_size(path)[0] == 1280 and path.stat().st_size > 5000, path.name
    finally:
        server.shutdown()
        server.server_close()
