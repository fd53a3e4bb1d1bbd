"""The status site's answers and static export, from a real SQLite file (no server)."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from urllib.parse import unquote, urljoin, urlsplit

import pytest

from modelwatch.status.site import Site, api_status
from modelwatch.status.snapshot import Series, Settings, SnapshotBuilder
from test_status_snapshot import NOW, runs, write

HOSTILE = "<img src=x onerror=alert(1)>"
SERIES = [Series("gpt", "rest", "openai", "gpt-4o-mini"), Series("gpt", "realtime", "openai", "gpt-4o-mini"),
          Series("openai/o3:high", "rest", "openai", HOSTILE)]


@pytest.fixture
def site(db_path) -> Site:
    rows = runs(NOW - 3000, ["ok"] * 8 + ["server_error"] * 3 + ["ok"] * 9, code="upstream_5xx")
    rows += runs(NOW - 2000, ["ok", "ok", "auth_error"], kind="realtime", code="invalid_api_key")
    rows += runs(NOW - 1000, ["ok"] * 6, target="openai/o3:high")
    write(db_path, rows)
    s = Site(SnapshotBuilder(db_path, Settings(min_runs=5), SERIES))
    s.refresh(NOW)
    return s


def test_every_path_of_the_contract_answers(site):
    expect = {"/": "text/html", "/targets/gpt/": "text/html", "/targets/gpt": "text/html",
              "/embed/gpt": "text/html", "/api/v1/status": "application/json",
              "/api/v1/targets/gpt": "application/json", "/api/v1/incidents": "application/json",
              "/api/v1/targets/gpt/history": "application/json", "/badge/gpt.svg": "image/svg+xml",
              "/badge/gpt.json": "application/json", "/static/status.css": "text/css",
              "/targets/openai/o3:high/": "text/html", "/badge/openai/o3:high.svg": "image/svg+xml",
              "/api/v1/targets/openai/o3:high": "application/json"}
    for path, ctype in expect.items():
        answer = site.answer(path, {})
        assert (answer.status, answer.content_type.split(";")[0]) == (200, ctype), path


@pytest.mark.parametrize("path, query, status", [
    ("/targets/nope/", {}, 404), ("/embed/gpt", {"kind": "models"}, 404), ("/embed/gpt", {"window": "1y"}, 400),
    ("/badge/gpt.svg", {"metric": "cost"}, 400), ("/badge/gpt.png", {}, 404), ("/static/../cli.py", {}, 404),
    ("/api/v1/targets/gpt/history", {"grain": "minute"}, 400),
    ("/api/v1/targets/gpt/history", {"grain": "hour", "since": "60d"}, 400),
    ("/api/v1/targets/gpt/history", {"since": "yesterday"}, 400), ("/api/v1/incidents", {"since": "x"}, 400),
    ("/pages/2/", {}, 404), ("/pages/x/", {}, 404), ("/nothing", {}, 404),
])
def test_bad_requests_get_a_one_line_json_error(site, path, query, status):
    answer = site.answer(path, query)
    assert answer.status == status
    assert set(json.loads(answer.body)) == {"error"}


def test_the_json_has_design_mds_keys(site):
    status = json.loads(site.answer("/api/v1/status", {}).body)
    assert {"as_of", "targets"} <= set(status)
    target = status["targets"][0]
    assert {"target", "provider", "model", "probes"} <= set(target)
    probe = target["probes"][0]
    assert {"kind", "state", "last_run", "windows"} <= set(probe)
    assert set(probe["windows"]) == {"24h", "7d", "30d", "90d"}
    assert {"runs", "ok", "errors", "availability", "provider_availability", "ttft_p50_s", "ttft_p95_s",
            "ttft_p99_s", "duration_p50_s", "duration_p95_s", "outcomes", "enough_data"} <= set(probe["windows"]["24h"])
    assert {"ts", "outcome", "ttft_s", "duration_s"} <= set(probe["last_run"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", status["as_of"])
    one = json.loads(site.answer("/api/v1/targets/gpt", {}).body)
    daily = one["probes"][0]["daily"]
    assert len(daily) == 90 and {"date", "runs", "errors", "availability", "state"} <= set(daily[0])
    assert daily == sorted(daily, key=lambda d: d["date"])
    assert one["probes"][0]["incidents"][0]["error_code"] == "upstream_5xx"
    w = probe["windows"]["24h"]
    assert (w["runs"], w["errors"], w["availability"]) == (20, 3, 0.85)


def test_history_is_one_window_per_hour_or_day(site):
    hours = json.loads(site.answer("/api/v1/targets/gpt/history", {"kind": "rest", "grain": "hour"}).body)
    assert hours["grain"] == "hour" and len(hours["points"]) == 24  # the page's 24h window
    whole = json.loads(site.answer("/api/v1/targets/gpt/history", {"grain": "day"}).body)
    assert len(whole["points"]) == 90 and whole["points"][-1]["since"][:10] == site.snapshot["as_of"][:10]
    assert sum(p["runs"] for p in hours["points"]) == 20
    days = json.loads(site.answer("/api/v1/targets/gpt/history", {"grain": "day", "since": "7d"}).body)
    assert len(days["points"]) in (7, 8) and sum(p["runs"] for p in days["points"]) == 20


def test_badges_say_the_window_and_the_figure(site):
    svg = site.answer("/badge/gpt.svg", {"metric": "availability", "window": "7d"}).body.decode()
    assert "85.00%" in svg and "7d" in svg
    shield = json.loads(site.answer("/badge/gpt.json", {"kind": "realtime"}).body)
    assert shield["schemaVersion"] == 1 and shield["message"] == "no data"  # 3 runs < min_runs 5


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("href", "src") and value:
                self.links.append(value)


def test_the_static_export_is_a_whole_site_whose_links_all_resolve(site, tmp_path):
    written = site.export(tmp_path / "out")
    out = tmp_path / "out"
    files = [p for p in out.rglob("*") if p.is_file()]
    assert written == len(files) > 20
    for page in out.rglob("*.html"):
        parser = _Links()
        parser.feed(page.read_text())
        assert "img" not in parser.tags and "script" not in parser.tags, page
        for link in parser.links:
            assert not re.match(r"^[a-z]+:", link) and not link.startswith("/"), (page, link)  # relative only
            where = unquote(urlsplit(urljoin("http://site/" + page.relative_to(out).as_posix(), link)).path)
            target = out / where.lstrip("/")
            assert (target / "index.html").exists() if where.endswith("/") else target.is_file(), (page, link)
    assert json.loads((out / "api/v1/status.json").read_text()) == api_status(site.snapshot)
    assert (out / "badge/gpt/realtime/ttft_p95-30d.svg").read_text().startswith("<svg")
    assert (out / "embed/openai/o3:high/index.html").exists()
    assert HOSTILE not in (out / "index.html").read_text()
    assert "&lt;img src=x onerror=alert(1)&gt;" in (out / "index.html").read_text()


def test_the_index_pages_fifty_targets_at_a_time(db_path, tmp_path):
    series = [Series(f"t{i:03}", "rest", "p", "m") for i in range(120)]
    write(db_path, [r for i in range(120) for r in runs(NOW - 600, ["ok"], target=f"t{i:03}")])
    site = Site(SnapshotBuilder(db_path, Settings(), series))
    site.refresh(NOW)
    first = site.answer("/", {}).body.decode()
    third = site.answer("/pages/3/", {}).body.decode()
    assert first.count('<article class="target"') == 50 and third.count('<article class="target"') == 20
    assert 'href="pages/2/"' in first and 'href="../../"' in third
    assert site.export(tmp_path / "out") and (tmp_path / "out/pages/3/index.html").exists()


def test_a_target_name_cannot_write_outside_the_export(db_path, tmp_path):
    """Names read from a database (--db) may be anything: the export skips those that are not a path."""
    evil = "x/../../../../escaped"
    write(db_path, runs(NOW - 600, ["ok"] * 3) + runs(NOW - 600, ["ok"] * 3, target=evil))
    site = Site(SnapshotBuilder(db_path, Settings()))  # no config: the names come from the database
    site.refresh(NOW)
    assert evil in [t["target"] for t in site.snapshot["targets"]]
    out = tmp_path / "deep" / "out"
    site.export(out)
    assert (out / "targets/gpt/index.html").exists()
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and out not in p.parents and "modelwatch.db" not in p.name]
    assert outside == [], outside


@pytest.mark.parametrize("name", ["a/../b", "a//b", "a/./b", "a/", "../a"])
def test_config_refuses_target_names_that_are_not_paths(tmp_path, name):
    from modelwatch.config import ConfigError, load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("providers: {p: {type: openai-compatible, base_url: 'http://127.0.0.1:1/v1'}}\n"
                   f"targets: [{{name: '{name}', provider: p, model: m, probes: [{{kind: rest}}]}}]\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert any("targets[0].name" in line for line in err.value.problems)
