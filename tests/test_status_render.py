"""The status pages, embed and badges rendered from snapshot dicts (no database, no network)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

import status_snapshots as ss
from modelwatch.status import badges
from modelwatch.status.html import (
    STATES, fmt_duration, fmt_latency, fmt_percent, fmt_time, render_embed, render_index, render_target,
    root_for_path)

STATIC = Path(__file__).parent.parent / "src" / "modelwatch" / "status" / "static"
VOID = {"meta", "link", "br", "img", "input", "hr", "wbr", "source"}
HOSTILE = "<img src=x onerror=alert(1)>"
QUOTES = "a\"b'c<d"


class Node:
    """An element of a parsed page: tag, attributes, children and its own text."""

    def __init__(self, tag: str, attrs: dict, parent: Node | None = None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node] = []
        self.texts: list[str] = []

    @property
    def text(self) -> str:
        return "".join(self.texts) + "".join(child.text for child in self.children)

    @property
    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def all(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> list[Node]:
        """Descendants matching a tag, a class and attribute values (``data_kind`` = data-kind)."""
        found = []
        for child in self.children:
            if ((tag is None or child.tag == tag) and (cls is None or cls in child.classes)
                    and all(child.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())):
                found.append(child)
            found.extend(child.all(tag, cls, **attrs))
        return found

    def one(self, *args, **kwargs) -> Node:
        nodes = self.all(*args, **kwargs)
        assert len(nodes) == 1, (args, kwargs, len(nodes))
        return nodes[0]


class Tree(HTMLParser):
    """html.parser into Nodes, failing on an end tag that closes anything but the open element."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.root = self.current = Node("#document", {})
        self.feed(text)
        self.close()
        assert self.current is self.root, f"unclosed <{self.current.tag}>"

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs), self.current)
        self.current.children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_endtag(self, tag):
        assert tag == self.current.tag, f"</{tag}> closes <{self.current.tag}>"
        self.current = self.current.parent

    def handle_data(self, data):
        self.current.texts.append(data)


def parse(text: str) -> Node:
    return Tree(text).root


def two_kinds(**target_kw) -> dict:
    """A snapshot of one target with a REST probe with data and a realtime probe with 2 runs."""
    rest = ss.probe("rest", incidents=[ss.incident("openai/gpt-4o-mini", "rest")])
    new = {name: ss.window(name, runs=2, errors=0, provider_errors=0) for name in ss.WINDOWS}
    realtime = ss.probe("realtime", state="no_data", windows=new)
    return ss.snapshot([ss.target(probes=[rest, realtime], **target_kw)])


def hostile_snapshot() -> dict:
    """Hostile text in every string field the pages show."""
    run = {"ts": HOSTILE, "outcome": HOSTILE, "error_code": HOSTILE, "ttft_s": None}
    day = {"date": HOSTILE, "runs": 10, "errors": 1, "availability": 0.9, "state": HOSTILE}
    incident = dict(ss.incident(QUOTES, HOSTILE), start=HOSTILE, end=HOSTILE, dominant_outcome=HOSTILE,
                    error_code=HOSTILE, attribution=HOSTILE)
    windows = {name: ss.window(name, outcomes={HOSTILE: 3, "ok": 997}) for name in ss.WINDOWS}
    probe = ss.probe(HOSTILE, state=HOSTILE, recent=[run], daily=[day] * 90, incidents=[incident],
                     windows=windows, our_side={"errors": 2, "outcomes": {HOSTILE: 2}})
    target = ss.target(QUOTES, provider=HOSTILE, model=HOSTILE, probes=[probe], state=HOSTILE)
    return ss.snapshot([target], title=HOSTILE, as_of=HOSTILE, state=HOSTILE,
                       windows=[*ss.WINDOWS, HOSTILE])


def all_pages(snap: dict) -> dict[str, str]:
    target = snap["targets"][0]
    return {"index": render_index(snap), "target": render_target(snap, target),
            "embed": render_embed(snap, target, target["probes"][0], "24h")}


# --- formatting --------------------------------------------------------------------------------

@pytest.mark.parametrize("ratio, text", [
    (0.992, "99.20%"), (1.0, "100.00%"), (0.99999, "99.99%"), (0.0, "0.00%"), (0.5, "50.00%"), (None, "—")])
def test_percentages_have_two_decimals_and_100_only_when_nothing_failed(ratio, text):
    assert fmt_percent(ratio) == text


@pytest.mark.parametrize("seconds, text", [
    (0.412, "412 ms"), (0.0004, "0 ms"), (0.9996, "1.00 s"), (1.2449, "1.24 s"), (12.34, "12.3 s"),
    (123.4, "123 s"), (None, "—")])
def test_latencies_are_whole_ms_below_a_second_and_seconds_above(seconds, text):
    assert fmt_latency(seconds) == text


@pytest.mark.parametrize("seconds, text", [(45, "45 s"), (900, "15 min"), (3900, "1 h 5 min"),
                                           (190000, "2 d 4 h"), (None, "—")])
def test_durations_read_as_people_say_them(seconds, text):
    assert fmt_duration(seconds) == text


@pytest.mark.parametrize("value, text", [
    ("2026-01-31T12:00:03Z", "2026-01-31 12:00 UTC"), ("2026-01-31T14:00:03+02:00", "2026-01-31 12:00 UTC"),
    ("2026-01-31T12:00:03", "2026-01-31T12:00:03"), ("yesterday", "yesterday"), (None, "—")])
def test_times_are_shown_in_utc_and_anything_else_as_given(value, text):
    assert fmt_time(value) == text


@pytest.mark.parametrize("path, root", [("/", ""), ("/targets/x/", "../../"), ("/targets/a/b/", "../../../"),
                                        ("/embed/x", "../")])
def test_the_root_of_a_page_is_relative_to_its_path(path, root):
    assert root_for_path(path) == root


# --- every page --------------------------------------------------------------------------------

@pytest.mark.parametrize("page", ["index", "target", "embed"])
def test_a_page_is_one_document_with_one_relative_stylesheet_and_nothing_else_external(page):
    text = all_pages(two_kinds())[page]
    tree = parse(text)
    assert text.startswith("<!DOCTYPE html>")
    assert tree.one("meta", name="viewport")
    sheets = tree.all("link", rel="stylesheet")
    root = "" if page == "index" else "../../"
    assert [s.attrs["href"] for s in sheets] == [f"{root}static/status.css"]
    assert not tree.all("script") and not tree.all("style") and not tree.all("img")
    assert "style=" not in text and "<script" not in text.lower() and "javascript:" not in text
    for node in tree.all():
        for name in ("href", "src"):
            assert "//" not in node.attrs.get(name, ""), f"{node.tag} {name} leaves the site"


@pytest.mark.parametrize("page", ["index", "target", "embed"])
def test_hostile_strings_are_escaped_everywhere(page):
    snap = hostile_snapshot()
    text = all_pages(snap)[page]
    assert "<img" not in text
    tree = parse(text)
    assert not tree.all("img") and not tree.all("script")
    probe = tree.all(cls="probe")[0]
    assert probe.attrs["data-target"] == QUOTES and probe.attrs["data-kind"] == HOSTILE
    assert probe.attrs["data-state"] == "no_data"  # an unknown state never becomes a class
    assert HOSTILE in tree.text


def test_hostile_strings_land_in_each_field_of_the_index_as_text():
    tree = parse(render_index(hostile_snapshot()))
    assert tree.one("title").text == HOSTILE
    assert tree.one("a", cls="target-link").attrs["href"] == "targets/a%22b%27c%3Cd/"
    assert HOSTILE in tree.one(cls="meta").text
    assert tree.one("i", cls="run").attrs["title"] == f"{HOSTILE} · {HOSTILE} · {HOSTILE}"
    assert all(bar.attrs["title"].startswith(HOSTILE) for bar in tree.all("i", cls="bar"))
    assert HOSTILE in tree.one(cls="our-side").text
    row = tree.one("tr", cls="incident")
    assert row.attrs["data-attribution"] == HOSTILE and row.text.count(HOSTILE) >= 3


def test_control_characters_never_reach_a_page():
    snap = ss.snapshot([ss.target("a\x00b\x1bc\x7fd\x85e", model="m\x0cn")])
    text = render_index(snap)
    assert not re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]", text)
    assert parse(text).one("article", cls="target").attrs["data-target"] == "abcde"


# --- index -------------------------------------------------------------------------------------

def test_the_index_has_a_banner_with_the_worst_state_and_the_time():
    snap = two_kinds()
    snap["state"] = "degraded"
    banner = parse(render_index(snap)).one(id="banner")
    assert banner.attrs["data-state"] == "degraded" and "s-degraded" in banner.classes
    assert "as of 2026-01-31 12:00:00 UTC" in banner.text
    assert banner.one("time").attrs["datetime"] == ss.AS_OF


def test_the_index_has_a_row_per_target_and_kind_with_90_bars_and_the_recent_strip():
    snap = ss.snapshot([ss.target(f"t{i}", probes=[ss.probe("rest"), ss.probe("realtime", state="degraded")])
                        for i in range(3)])
    tree = parse(render_index(snap))
    rows = tree.one(id="targets").all(cls="probe")
    assert [(r.attrs["data-target"], r.attrs["data-kind"]) for r in rows] == [
        (f"t{i}", k) for i in range(3) for k in ("rest", "realtime")]
    for row in rows:
        assert len(row.all("i", cls="bar")) == 90
        assert len(row.all("i", cls="run")) == 30
        assert row.one(cls="state").attrs["data-state"] == row.attrs["data-state"]
    assert {r.attrs["data-state"] for r in rows} == {"operational", "degraded"}
    assert len(tree.all("i", cls="bar")) == 90 * 6 and len(tree.all("i", cls="run")) == 30 * 6


def test_bars_are_coloured_by_the_day_state_and_titled_date_availability_errors_runs():
    tree = parse(render_index(two_kinds()))
    bars = tree.all(cls="probe", data_kind="rest")[0].all("i", cls="bar")
    bad = bars[80]
    assert "s-degraded" in bad.classes
    assert bad.attrs["title"] == f"{ss.day(9)['date']}: 98.61% (20 / 1440)"
    assert "s-operational" in bars[0].classes and bars[-1].attrs["title"].startswith("2026-01-31: 100.00%")


def test_recent_marks_tell_ok_provider_and_our_failures_apart():
    marks = parse(render_index(two_kinds())).all(cls="probe", data_kind="rest")[0].all("i", cls="run")
    kinds = [next(c for c in m.classes if c.startswith("o-")) for m in marks]
    assert kinds.count("o-provider") == 1 and kinds.count("o-ours") == 1 and kinds.count("o-ok") == 28
    assert marks[10].attrs["title"] == "2026-01-31 11:40:00 UTC · server_error · api_error"
    assert "o-ours" in marks[20].classes and marks[20].attrs["title"].endswith("rate_limited · rate_limit_exceeded")


def test_index_figures_print_their_window_beside_them():
    row = parse(render_index(two_kinds())).all(cls="probe", data_kind="rest")[0]
    figures = {f.attrs["data-figure"]: f.text for f in row.one(cls="figures", data_window="24h").all(cls="fig")}
    assert figures == {"availability": "99.20% · 24h", "ttft_p50": "P50 412 ms · 24h",
                       "ttft_p95": "P95 948 ms · 24h", "errors": "Errors 8 / 1000 runs · 24h",
                       "provider_errors": "Provider failures 5 · 24h", "our_errors": "Our side 3 · 24h"}
    assert row.one(cls="bars-legend").one(cls="fig").text == "99.20% · 90d"


def test_our_side_is_shown_apart_from_the_provider():
    row = parse(render_index(two_kinds())).all(cls="probe", data_kind="rest")[0]
    our = row.one(cls="our-side")
    assert our.attrs["data-errors"] == "1" and "rate_limited 1" in our.text
    assert "provider" not in our.text.replace("not the provider's", "")


def test_too_few_runs_say_no_measurements_yet_instead_of_figures():
    row = parse(render_index(two_kinds())).all(cls="probe", data_kind="realtime")[0]
    assert row.one(cls="no-data", data_window="24h").text == "No measurements yet"
    assert not row.all(cls="figures") and "%" not in row.one(cls="bars-legend").text
    assert "No measurements yet" in row.one(cls="bars-legend").text
    assert len(row.all("i", cls="bar")) == 90  # the days are still drawn


def test_targets_link_to_their_pages_with_the_path_quoted():
    names = ["openai/gpt-4o", "vllm:8000/llama-3.1.8b_q", "a b#c?d"]
    snap = ss.snapshot([ss.target(n) for n in names])
    links = [a.attrs["href"] for a in parse(render_index(snap, root="../")).all("a", cls="target-link")]
    assert links == ["../targets/openai/gpt-4o/", "../targets/vllm%3A8000/llama-3.1.8b_q/",
                     "../targets/a%20b%23c%3Fd/"]


def test_the_index_lists_at_most_20_incidents_newest_first():
    incidents = [ss.incident("t", "rest", start_offset_s=3600 * i, ongoing=i == 1) for i in range(1, 26)]
    snap = ss.snapshot(incidents=list(reversed(incidents)))
    rows = parse(render_index(snap)).one(id="incidents").all("tr", cls="incident")
    assert len(rows) == 20
    starts = [r.all("time")[0].attrs["datetime"] for r in rows]
    assert starts == sorted(starts, reverse=True) and starts[0] == incidents[0]["start"]
    assert rows[0].attrs["data-ongoing"] == "true" and "ongoing" in rows[0].text
    assert "15 min" in rows[1].text and "server_error" in rows[1].text and "api_error" in rows[1].text


def test_an_index_without_incidents_says_so():
    assert "No incidents." in parse(render_index(ss.snapshot())).one(id="incidents").text


# --- target page -------------------------------------------------------------------------------

def test_the_target_page_puts_every_kind_side_by_side_with_every_window():
    tree = parse(render_target(two_kinds(), two_kinds()["targets"][0]))
    assert tree.one("body").attrs["class"] == "page-target"
    assert [p.attrs["data-kind"] for p in tree.one(id="kinds").all(cls="probe")] == ["rest", "realtime"]
    tables = tree.all("table", cls="window")
    assert [t.attrs["data-window"] for t in tables] == list(ss.WINDOWS)
    for table in tables:
        assert [th.text for th in table.one("thead").all("th")][1:] == ["rest", "realtime"]
    day = tables[0]
    cell = {c.attrs["data-figure"]: c.text for c in day.all("td", data_kind="rest")}
    assert cell["availability"] == "99.20%" and cell["ttft_p99"] == "1.65 s"
    assert cell["duration_p50"] == "1.10 s" and cell["errors"] == "8 / 1000 runs"
    assert cell["provider_availability"] == "99.50%" and cell["our_errors"] == "3"
    assert cell["outcomes"] == "ok 992, server_error 5, auth_error 3"


def test_the_target_page_says_no_measurements_yet_for_a_kind_with_too_few_runs():
    snap = two_kinds()
    table = parse(render_target(snap, snap["targets"][0])).all("table", cls="window")[0]
    cells = table.all("td", data_kind="realtime")
    assert [c.attrs.get("data-figure") for c in cells] == ["runs", None]
    assert cells[0].text == "2" and cells[1].text == "No measurements yet"
    assert int(cells[1].attrs["rowspan"]) == len(table.one("tbody").all("tr")) - 1


def test_the_target_page_links_back_and_shows_bars_strip_and_its_incidents():
    snap = two_kinds()
    tree = parse(render_target(snap, snap["targets"][0], root="../../../"))
    assert tree.one("a", cls="back").attrs["href"] == "../../../"
    for column in tree.one(id="kinds").all(cls="probe"):
        assert len(column.all("i", cls="bar")) == 90 and len(column.all("i", cls="run")) == 30
        assert column.one(cls="fig", data_figure="last_run").text.startswith("Last run 2026-01-31 11:59:00 UTC · ok")
    rows = tree.one(id="incidents").all("tr", cls="incident")
    assert [(r.attrs["data-target"], r.attrs["data-kind"]) for r in rows] == [("openai/gpt-4o-mini", "rest")]


# --- embed -------------------------------------------------------------------------------------

def test_the_embed_is_the_panel_alone_with_figures_and_a_details_link():
    snap = two_kinds()
    target = snap["targets"][0]
    tree = parse(render_embed(snap, target, target["probes"][0], "7d"))
    panel = tree.one(id="panel")
    assert panel.attrs["data-window"] == "7d" and panel.attrs["data-kind"] == "rest"
    assert panel.one("h1").text == "openai/gpt-4o-mini · rest"
    figures = {f.attrs["data-figure"]: f.text for f in panel.all(cls="fig")}
    assert figures == {"availability": "Availability 99.20% · 7d", "last_run": "Last automated test 1 min ago",
                       "ttft_p50": "P50 latency 412 ms · 7d", "ttft_p95": "P95 latency 948 ms · 7d",
                       "errors": "Errors 56 / 7000 runs · 7d"}
    link = panel.one("a", cls="details")
    assert link.attrs == {"class": "details", "href": "../../targets/openai/gpt-4o-mini/",
                          "target": "_blank", "rel": "noopener"}
    assert not tree.all("nav") and len(tree.all("a")) == 1


def test_the_embed_says_no_measurements_yet_below_min_runs():
    snap = two_kinds()
    target = snap["targets"][0]
    panel = parse(render_embed(snap, target, target["probes"][1], "24h")).one(id="panel")
    assert panel.one(cls="no-data").text == "No measurements yet"
    assert [f.attrs["data-figure"] for f in panel.all(cls="fig")] == ["last_run"]
    assert "Availability" not in panel.text and "P50" not in panel.text and "Errors" not in panel.text


def test_the_embed_of_a_probe_that_never_ran():
    snap = ss.snapshot([ss.target(probes=[ss.probe("rest", runs=0, errors=0, provider_errors=0, recent=[])])])
    target = snap["targets"][0]
    panel = parse(render_embed(snap, target, target["probes"][0], "24h")).one(id="panel")
    assert "No measurements yet" in panel.text and "Last automated test: none yet" in panel.text


# --- stylesheet --------------------------------------------------------------------------------

def test_the_stylesheet_styles_every_state_and_outcome_and_loads_nothing():
    css = (STATIC / "status.css").read_text()
    for state in STATES:
        assert f".bar.s-{state}" in css or state == "no_data"
        assert f"--{state}" in css
    for cls in ("o-ok", "o-provider", "o-ours", "o-other"):
        assert f".run.{cls}" in css
    assert not re.search(r"@import|url\(|@font-face", css)
    assert "prefers-color-scheme: dark" in css
    ET.fromstring((STATIC / "favicon.svg").read_text())


# --- badges ------------------------------------------------------------------------------------

SVG = "{http://www.w3.org/2000/svg}"


def test_a_badge_is_svg_with_a_title_and_the_escaped_message():
    text = badges.badge_svg("availability 24h", "<b>&'\"", "brightgreen")
    assert "<b>" not in text
    root = ET.fromstring(text)
    assert root.find(f"{SVG}title").text == "availability 24h: <b>&'\""
    assert [t.text for t in root.iter(f"{SVG}text")] == ["availability 24h"] * 2 + ["<b>&'\""] * 2
    assert [r.get("fill") for r in root.iter(f"{SVG}rect")][1:3] == ["#555", "#4c1"]


def test_a_badge_grows_with_its_text_and_refuses_odd_colours():
    short = ET.fromstring(badges.badge_svg("a", "1", "#abc"))
    long = ET.fromstring(badges.badge_svg("availability 24h", "99.20%", "url(#x)"))
    assert int(long.get("width")) > int(short.get("width")) + 80
    assert [r.get("fill") for r in short.iter(f"{SVG}rect")][2] == "#abc"
    assert [r.get("fill") for r in long.iter(f"{SVG}rect")][2] == "#9f9f9f"


def test_a_badge_survives_control_characters():
    ET.fromstring(badges.badge_svg("a\x00b", "c\x1bd", "red"))


@pytest.mark.parametrize("availability, color", [
    (1.0, "brightgreen"), (0.99, "brightgreen"), (0.985, "yellow"), (0.9, "yellow"), (0.7, "orange"),
    (0.49, "red")])
def test_availability_badges_take_the_colour_of_their_state(availability, color):
    w = ss.window(availability=availability)
    assert badges.badge_values(w, "availability", "24h", "rest", ss.THRESHOLDS) == (
        "rest availability 24h", fmt_percent(availability), color)


def test_latency_badges_are_blue_and_no_data_is_grey():
    w = ss.window()
    assert badges.badge_values(w, "ttft_p50", "24h", "rest") == ("rest TTFT p50 24h", "412 ms", "blue")
    assert badges.badge_values(w, "ttft_p95", "7d", "") == ("TTFT p95 7d", "948 ms", "blue")
    few = ss.window(runs=2, errors=0, provider_errors=0)
    assert badges.badge_values(few, "availability", "24h", "rest")[1:] == ("no data", "lightgrey")
    with pytest.raises(ValueError):
        badges.badge_values(w, "ttft_p99", "24h", "rest")


def test_shields_json_has_the_endpoint_schema_and_is_error_only_without_data():
    assert badges.shields_json("rest availability 24h", "99.20%", "brightgreen") == {
        "schemaVersion": 1, "label": "rest availability 24h", "message": "99.20%", "color": "brightgreen"}
    assert badges.shields_json("x", "no data", "lightgrey")["isError"] is True
    assert "isError" not in badges.shields_json("x", "no data", "lightgrey", no_data=False)
