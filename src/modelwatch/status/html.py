"""Server-rendered status pages: pure functions from a snapshot dict to one HTML5 document.

The snapshot's shape is in ``modelwatch.status``. The pages need no JavaScript, no inline
style and nothing from another origin: one stylesheet ``{root}static/status.css`` and the icon
``{root}static/favicon.svg``, so they work offline under the policy
``default-src 'none'; style-src 'self'; img-src 'self'``. Every string taken from the
snapshot (names, kinds, outcomes, error codes, dates, the title) is escaped with
``html.escape(quote=True)`` wherever it lands, attributes and links included; path parts of
links are percent-encoded first (:func:`target_href`).

``root`` is the relative path from the page to the site root: ``""`` for ``/``,
``"../../"`` for ``/targets/x/``; :func:`root_for_path` works it out for any page path (a
target named ``a/b`` is one level deeper).

The contract for browser tests (stable ids, classes and data attributes):

- ``body.page-index`` / ``body.page-target`` / ``body.page-embed``.
- ``#banner[data-state]`` (class ``s-STATE``): the worst current state; ``.as-of time[datetime]``.
- ``#targets`` holds one ``article.target[data-target][data-state]`` per target, whose
  ``a.target-link`` goes to ``{root}targets/{quoted target}/``.
- ``.probe[data-target][data-kind][data-state]``: one target's probe kind (a row on the index,
  a column on the target page, the whole panel on the embed, which is also ``#panel``).
- ``.state[data-state]`` (class ``s-STATE``): a state's label. STATE is one of
  ``operational``, ``degraded``, ``partial_outage``, ``major_outage``, ``no_data``.
- ``.strip`` holds one ``i.run`` per recent run, oldest first, class ``o-ok`` (ok),
  ``o-provider`` (the provider's failure), ``o-ours`` (auth, quota, bad request, rate limit,
  model name: our side) or ``o-other`` (content blocked, unknown); ``title`` = time, outcome,
  error code.
- ``.bars`` holds one ``i.bar`` per day, oldest first, class ``s-STATE`` of the day;
  ``title`` = ``"date: availability (errors / runs)"``.
- ``.figures[data-window]`` holds ``.fig[data-figure]`` (``availability``,
  ``provider_availability``, ``ttft_p50``, ``ttft_p95``, ``errors``, ``provider_errors``,
  ``our_errors``, ``last_run``), each printing its window beside the figure ("99.20% · 24h").
- ``.no-data[data-window]``: "No measurements yet", instead of the figures of a window with
  fewer than ``min_runs`` runs.
- ``.our-side``: failures on our side, shown apart from the provider's.
- ``table.window[data-window]`` (target page): one column per kind, cells
  ``td[data-kind][data-window][data-figure]``; ``.no-data`` cells span a kind's figures.
- ``.legend`` lists what the colours mean (its marks are ``i.swatch``, never ``.run``/``.bar``).
- ``#incidents`` holds ``tr.incident[data-target][data-kind][data-ongoing][data-attribution]``.
- ``a.back`` (target page) goes to ``{root}``; ``a.details`` (embed) opens the target page in a
  new tab.
- Voice figures (target page), inside the kind's ``.probe``, windows ``24h`` and ``7d`` (the
  JSON has all four): ``table.voice.stages[data-kind]`` (voice chain) with one
  ``tr[data-stage]`` per stage (``stt``, ``llm``, ``tts``); ``table.voice.turn-bands[data-kind]``
  (conversation) with one ``tr[data-band]`` per band; ``table.voice.interrupt[data-kind]``
  (barge-in). Their cells ``td[data-window]`` hold ``span[data-figure=p50]`` and
  ``span[data-figure=p95]`` and ``span.n`` (how many values), or are ``td.no-data`` ("No
  measurements yet", fewer than ``min_runs`` values).
- ``#first-audio`` (index, when some probe's TTFT is a first audio) holds ``table.first-audio``
  with one ``tr.first-audio-probe[data-target][data-kind][data-basis]`` per probe, fastest 24 h
  P50 first, cells ``td[data-figure]`` (``ttft_p50``, ``ttft_p95``, ``runs``) or ``td.no-data``.
"""

from __future__ import annotations

import html
import re
from datetime import datetime, timezone
from urllib.parse import quote

from modelwatch.outcomes import NOT_PROVIDER_JUDGED, PROVIDER_OUTCOMES

STATES = ("operational", "degraded", "partial_outage", "major_outage", "no_data")
STATE_LABELS = {"operational": "Operational", "degraded": "Degraded", "partial_outage": "Partial outage",
                "major_outage": "Major outage", "no_data": "No data"}
BANNER_LABELS = {"operational": "All probes operational", "degraded": "Degraded performance",
                 "partial_outage": "Partial outage", "major_outage": "Major outage",
                 "no_data": "No measurements yet"}
NO_DATA = "No measurements yet"
INDEX_WINDOW = "24h"
INCIDENTS_SHOWN = 20
INDEX_PAGE_TARGETS = 50
DASH = "\u2014"
# Characters that are invalid in HTML text (C0 controls but tab/newline/CR, DEL, C1 controls).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


# --- formatting --------------------------------------------------------------------------------

def esc(value: object) -> str:
    """Text safe in HTML text and quoted attributes (control characters dropped)."""
    text = str(value)
    if _CONTROL.search(text):
        text = _CONTROL.sub("", text)
    return html.escape(text, quote=True)


def fmt_percent(ratio: float | None) -> str:
    """A 0..1 ratio as a percentage with 2 decimals ("99.20%"); 100.00% only when nothing failed."""
    if ratio is None:
        return DASH
    percent = round(ratio * 100, 2)
    if percent >= 100 and ratio < 1:
        percent = 99.99
    return f"{percent:.2f}%"


def fmt_latency(seconds: float | None) -> str:
    """A latency in whole ms below 1 s ("412 ms"), else seconds to 3 significant digits ("1.24 s")."""
    if seconds is None:
        return DASH
    ms = round(seconds * 1000)
    if ms < 1000:
        return f"{ms} ms"
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 100:
        return f"{seconds:.1f} s"
    return f"{seconds:.0f} s"


def fmt_duration(seconds: float | None) -> str:
    """A span of time for people: "45 s", "12 min", "3 h 5 min", "2 d 4 h"."""
    if seconds is None:
        return DASH
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def parse_iso(value: str | None) -> datetime | None:
    """A snapshot time (ISO 8601, ``Z``) as an aware datetime, or None when it is not one."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else None


def fmt_time(value: str | None, seconds: bool = False) -> str:
    """A snapshot time as "2026-01-31 12:00 UTC" (the raw string when it does not parse)."""
    moment = parse_iso(value)
    if moment is None:
        return DASH if value is None else str(value)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC")


def fmt_ago(value: str | None, as_of: str | None) -> str:
    """How long before ``as_of`` a time was ("3 min ago"), or the time itself when unknown."""
    then, now = parse_iso(value), parse_iso(as_of)
    if then is None or now is None or then > now:
        return fmt_time(value)
    seconds = (now - then).total_seconds()
    if seconds < 5:
        return "just now"
    number, unit = fmt_duration(seconds).split(" ")[:2]
    return f"{number} {unit} ago"


def state_of(value: object) -> str:
    """A known STATE, or ``no_data`` for anything else (it becomes a class name)."""
    return value if value in STATES else "no_data"


def outcome_class(outcome: object) -> str:
    """The mark class of a run's outcome: ok, the provider's failure, ours, or other."""
    if outcome == "ok":
        return "o-ok"
    if outcome in PROVIDER_OUTCOMES:
        return "o-provider"
    if outcome in NOT_PROVIDER_JUDGED:
        return "o-ours"
    return "o-other"


def target_href(root: str, target: str) -> str:
    """The escaped link to a target's page: ``{root}targets/{quoted target}/``."""
    return esc(f"{root}targets/{quote(str(target), safe='/')}/")


def root_for_path(path: str) -> str:
    """The ``root`` of a page served at ``path``: "" for "/", "../../" for "/targets/x/"."""
    return "../" * path.lstrip("/").count("/")


# --- page frame --------------------------------------------------------------------------------

def _document(title: str, body_class: str, body: str, root: str) -> str:
    """One HTML5 document around ``body``, with the one stylesheet and the icon."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{esc(title)}</title>\n"
        f"<link rel=\"stylesheet\" href=\"{esc(root)}static/status.css\">\n"
        f"<link rel=\"icon\" href=\"{esc(root)}static/favicon.svg\" type=\"image/svg+xml\">\n"
        f"</head>\n<body class=\"{body_class}\">\n{body}</body>\n</html>\n"
    )


def _state(state: object) -> str:
    """A state's label, coloured by class."""
    s = state_of(state)
    return f"<span class=\"state s-{s}\" data-state=\"{s}\">{STATE_LABELS[s]}</span>"


def _time(value: str | None, text: str) -> str:
    """A ``<time>`` element carrying the machine-readable time."""
    return f"<time datetime=\"{esc(value or '')}\">{esc(text)}</time>"


def _banner(snapshot: dict, heading_html: str, state: object, extra_html: str = "") -> str:
    """The header: heading, the worst state in words, and when the snapshot was taken."""
    s = state_of(state)
    as_of = snapshot.get("as_of")
    return (
        f"<header id=\"banner\" class=\"banner s-{s}\" data-state=\"{s}\">\n"
        f"<h1>{heading_html}</h1>\n{extra_html}"
        f"<p class=\"banner-state\">{BANNER_LABELS[s]}</p>\n"
        f"<p class=\"as-of\">as of {_time(as_of, fmt_time(as_of, seconds=True))}</p>\n"
        "</header>\n"
    )


def _footer(root: str, api_path: str) -> str:
    """The footer: where the same data is as JSON."""
    return (f"<footer><p>Same data as JSON: <a href=\"{esc(root)}{api_path}\">{esc(api_path)}</a>"
            " · Availability = ok runs / runs; percentiles over ok runs.</p></footer>\n")


# --- the pieces of a probe ---------------------------------------------------------------------

def _run_mark(run: dict) -> str:
    """One recent run as a tiny mark coloured by outcome, titled time · outcome · error code."""
    outcome = run.get("outcome")
    title = f"{fmt_time(run.get('ts'), seconds=True)} · {outcome}"
    if run.get("error_code"):
        title += f" · {run['error_code']}"
    return f"<i class=\"run {outcome_class(outcome)}\" title=\"{esc(title)}\"></i>"


def _strip(probe: dict) -> str:
    """The last runs of a probe, oldest first."""
    runs = probe.get("recent") or []
    marks = "".join(_run_mark(run) for run in runs)
    return (f"<div class=\"strip\" role=\"img\" aria-label=\"last {len(runs)} runs, oldest first\">"
            f"{marks}</div>\n")


def _day_bar(day: dict) -> str:
    """One day as a tiny bar coloured by the day's state, titled date: availability (errors / runs)."""
    runs = day.get("runs") or 0
    if runs:
        title = f"{day.get('date')}: {fmt_percent(day.get('availability'))} ({day.get('errors', 0)} / {runs})"
    else:
        title = f"{day.get('date')}: no runs"
    return f"<i class=\"bar s-{state_of(day.get('state'))}\" title=\"{esc(title)}\"></i>"


def _bars(probe: dict, window_name: str = "90d") -> str:
    """The daily bars of a probe (oldest first) and the long window's availability under them."""
    days = probe.get("daily") or []
    window = (probe.get("windows") or {}).get(window_name)
    if _enough(window):
        figure = _fig("availability", f"{fmt_percent(window.get('availability'))} · {window_name}")
    else:
        figure = f"<span class=\"no-data\" data-window=\"{esc(window_name)}\">{NO_DATA} · {esc(window_name)}</span>"
    bars = "".join(_day_bar(day) for day in days)
    return (f"<div class=\"bars\" role=\"img\" aria-label=\"{len(days)} days, oldest first; "
            f"each day: availability (errors / runs)\">{bars}</div>\n"
            f"<div class=\"bars-legend\"><span>{len(days)} days ago</span>{figure}<span>today</span></div>\n")


def _enough(window: dict | None) -> bool:
    """Whether a window has at least ``min_runs`` runs (the snapshot decided)."""
    return bool(window) and bool(window.get("enough_data"))


def _fig(name: str, text: str) -> str:
    """One figure, its window printed beside it in ``text``."""
    return f"<span class=\"fig\" data-figure=\"{name}\">{esc(text)}</span>"


def _no_data(window_name: str, tag: str = "p") -> str:
    """The words that replace the figures of a window with too few runs."""
    return f"<{tag} class=\"no-data\" data-window=\"{esc(window_name)}\">{NO_DATA}</{tag}>\n"


def _our_side(probe: dict) -> str:
    """Failures on our side (auth, quota, bad request, rate limit) among the runs deciding state."""
    our = probe.get("our_side") or {}
    if not our.get("errors"):
        return ""
    counts = ", ".join(f"{outcome} {n}" for outcome, n in sorted((our.get("outcomes") or {}).items()))
    return (f"<p class=\"our-side\" data-errors=\"{esc(our['errors'])}\">Our side, not the provider's: "
            f"{esc(our['errors'])} ({esc(counts)}) in the runs deciding the state</p>\n")


# --- index -------------------------------------------------------------------------------------

def _index_figures(probe: dict, window_name: str) -> str:
    """Availability, TTFT P50/P95 and errors of one window, each with the window beside it."""
    window = (probe.get("windows") or {}).get(window_name)
    if not _enough(window):
        return _no_data(window_name)
    w, name = window, window_name
    figures = [
        _fig("availability", f"{fmt_percent(w.get('availability'))} · {name}"),
        _fig("ttft_p50", f"P50 {fmt_latency(w.get('ttft_p50_s'))} · {name}"),
        _fig("ttft_p95", f"P95 {fmt_latency(w.get('ttft_p95_s'))} · {name}"),
        _fig("errors", f"Errors {w.get('errors', 0)} / {w.get('runs', 0)} runs · {name}"),
        _fig("provider_errors", f"Provider failures {w.get('provider_errors', 0)} · {name}"),
        _fig("our_errors", f"Our side {w.get('our_errors', 0)} · {name}"),
    ]
    return f"<p class=\"figures\" data-window=\"{esc(name)}\">{' '.join(figures)}</p>\n"


def _probe_block(target: dict, probe: dict, head_tag: str, figures: str, extra: str = "") -> str:
    """A probe's block: its kind and state in ``head_tag``, ``figures``, our side, strip, bars, ``extra``."""
    s = state_of(probe.get("state"))
    return (
        f"<div class=\"probe\" data-target=\"{esc(target.get('target'))}\" "
        f"data-kind=\"{esc(probe.get('kind'))}\" data-state=\"{s}\">\n"
        f"<{head_tag} class=\"probe-head\"><span class=\"kind\">{esc(probe.get('kind'))}</span> "
        f"{_state(s)}</{head_tag}>\n{figures}{_our_side(probe)}{_strip(probe)}{_bars(probe)}{extra}</div>\n"
    )


def _index_probe(target: dict, probe: dict) -> str:
    """One row of the index: a target's probe kind with state, figures, strip and daily bars."""
    return _probe_block(target, probe, "p", _index_figures(probe, INDEX_WINDOW))


def _index_target(target: dict, root: str) -> str:
    """One target of the index: its name linked to its page, provider · model, its probes."""
    name = target.get("target")
    probes = "".join(_index_probe(target, probe) for probe in target.get("probes") or [])
    return (
        f"<article class=\"target\" data-target=\"{esc(name)}\" data-state=\"{state_of(target.get('state'))}\">\n"
        f"<h2><a class=\"target-link\" href=\"{target_href(root, name)}\">{esc(name)}</a> "
        f"<span class=\"meta\">{esc(target.get('provider'))} · {esc(target.get('model'))}</span></h2>\n"
        f"{probes}</article>\n"
    )


def _legend() -> str:
    """What the colours of the marks and bars mean."""
    runs = "".join(f"<li><i class=\"swatch {c}\"></i> {label}</li>" for c, label in (
        ("o-ok", "ok"), ("o-provider", "provider failure"), ("o-ours", "our side"), ("o-other", "other")))
    days = "".join(f"<li><i class=\"swatch s-{s}\"></i> {STATE_LABELS[s]}</li>" for s in STATES)
    return f"<ul class=\"legend\">{runs}</ul>\n<ul class=\"legend\">{days}</ul>\n"


def page_href(root: str, page: int) -> str:
    """The link to one page of the index: the site root for page 1, ``pages/N/`` after it."""
    return root or "./" if page == 1 else f"{root}pages/{page}/"


def _pager(root: str, page: int, pages: int, shown: tuple[int, int], total: int) -> str:
    """Targets first-last of total, and links to the other pages of the index."""
    if pages == 1:
        return ""
    links = " ".join(f"<span aria-current=\"page\">{n}</span>" if n == page
                     else f"<a href=\"{page_href(root, n)}\">{n}</a>" for n in range(1, pages + 1))
    return (f"<nav class=\"pager\" data-page=\"{page}\" data-pages=\"{pages}\">Targets {shown[0]}\u2013{shown[1]} "
            f"of {total} · pages {links}</nav>\n")


def render_index(snapshot: dict, root: str = "", page: int = 1, per_page: int = INDEX_PAGE_TARGETS) -> str:
    """GET / (and /pages/N/): the banner, targets and kinds (``per_page`` a page), the latest incidents.

    The banner and incidents cover every target on every page. Pages keep the index light
    at a thousand targets (90 titled bars and 30 marks a probe: about 10 kB a probe).
    """
    title = snapshot.get("title") or "Status"
    every = snapshot.get("targets") or []
    pages = max(1, -(-len(every) // per_page))
    first = (min(max(page, 1), pages) - 1) * per_page
    chosen = every[first:first + per_page]
    targets = "".join(_index_target(target, root) for target in chosen)
    pager = _pager(root, page, pages, (first + 1, first + len(chosen)), len(every))
    body = (
        _banner(snapshot, esc(title), snapshot.get("state"))
        + f"<main>\n{_first_audio(snapshot, root)}{_legend()}{pager}"
        + f"<section id=\"targets\">\n{targets}</section>\n{pager}"
        + _incidents(snapshot.get("incidents") or [], root, "Incidents")
        + "</main>\n" + _footer(root, "api/v1/status.json")
    )
    return _document(title, "page-index", body, root)


# --- incidents ---------------------------------------------------------------------------------

def _incident_row(incident: dict, root: str, link: bool) -> str:
    """One incident: target, kind, start, end or ongoing, duration, dominant outcome, error code."""
    name = incident.get("target")
    ongoing = bool(incident.get("ongoing")) or incident.get("end") is None
    end = "ongoing" if ongoing else _time(incident.get("end"), fmt_time(incident.get("end")))
    cell = f"<a href=\"{target_href(root, name)}\">{esc(name)}</a>" if link else esc(name)
    attribution = esc(incident.get("attribution") or "none")
    return (
        f"<tr class=\"incident\" data-target=\"{esc(name)}\" data-kind=\"{esc(incident.get('kind'))}\" "
        f"data-ongoing=\"{'true' if ongoing else 'false'}\" data-attribution=\"{attribution}\">"
        f"<td>{cell}</td><td>{esc(incident.get('kind'))}</td>"
        f"<td>{_time(incident.get('start'), fmt_time(incident.get('start')))}</td><td>{end}</td>"
        f"<td>{esc(fmt_duration(incident.get('duration_s')))}</td>"
        f"<td class=\"{outcome_class(incident.get('dominant_outcome'))}\">{esc(incident.get('dominant_outcome'))}</td>"
        f"<td>{esc(incident.get('error_code') or DASH)}</td></tr>\n"
    )


def _incidents(incidents: list[dict], root: str, heading: str, link: bool = True) -> str:
    """The newest incidents first, at most ``INCIDENTS_SHOWN``."""
    newest = sorted(incidents, key=lambda i: str(i.get("start") or ""), reverse=True)[:INCIDENTS_SHOWN]
    if not newest:
        return (f"<section id=\"incidents\">\n<h2>{heading}</h2>\n"
                "<p class=\"none\">No incidents.</p>\n</section>\n")
    rows = "".join(_incident_row(incident, root, link) for incident in newest)
    return (
        f"<section id=\"incidents\">\n<h2>{heading}</h2>\n<div class=\"scroll\"><table class=\"incidents\">\n"
        "<thead><tr><th>Target</th><th>Kind</th><th>Start</th><th>End</th><th>Duration</th>"
        "<th>Outcome</th><th>Error code</th></tr></thead>\n"
        f"<tbody>\n{rows}</tbody>\n</table></div>\n</section>\n"
    )


# --- target page -------------------------------------------------------------------------------

def _errors_text(w: dict) -> str:
    """Errors of a window over its runs: "8 / 1000 runs"."""
    return f"{w.get('errors', 0)} / {w.get('runs', 0)} runs"


def _outcomes_text(w: dict) -> str:
    """A window's runs per outcome, most frequent first: "ok 992, server_error 5"."""
    counts = sorted((w.get("outcomes") or {}).items(), key=lambda item: (-item[1], str(item[0])))
    return ", ".join(f"{outcome} {n}" for outcome, n in counts) or DASH


# (data-figure, row label, the cell's text from a window W); "runs" is shown even without
# enough data, the rest give way to "No measurements yet".
TARGET_ROWS = (
    ("runs", "Runs", lambda w: str(w.get("runs", 0))),
    ("availability", "Availability", lambda w: fmt_percent(w.get("availability"))),
    ("provider_availability", "Provider availability", lambda w: fmt_percent(w.get("provider_availability"))),
    ("ttft_p50", "TTFT P50", lambda w: fmt_latency(w.get("ttft_p50_s"))),
    ("ttft_p95", "TTFT P95", lambda w: fmt_latency(w.get("ttft_p95_s"))),
    ("ttft_p99", "TTFT P99", lambda w: fmt_latency(w.get("ttft_p99_s"))),
    ("duration_p50", "Duration P50", lambda w: fmt_latency(w.get("duration_p50_s"))),
    ("duration_p95", "Duration P95", lambda w: fmt_latency(w.get("duration_p95_s"))),
    ("duration_p99", "Duration P99", lambda w: fmt_latency(w.get("duration_p99_s"))),
    ("errors", "Errors", _errors_text),
    ("provider_errors", "Provider failures", lambda w: str(w.get("provider_errors", 0))),
    ("our_errors", "Our side (auth, quota, bad request, rate limit)", lambda w: str(w.get("our_errors", 0))),
    ("outcomes", "Outcomes", _outcomes_text),
)


def _window_cell(probe: dict, window_name: str, row: int) -> str:
    """The cell of one kind in one row of a window's table ('' where a no-data cell spans it)."""
    figure, _, text = TARGET_ROWS[row]
    window = (probe.get("windows") or {}).get(window_name) or {}
    attrs = f"data-kind=\"{esc(probe.get('kind'))}\" data-window=\"{esc(window_name)}\""
    if _enough(window) or row == 0:
        return f"<td {attrs} data-figure=\"{figure}\">{esc(text(window))}</td>"
    if row == 1:
        return f"<td {attrs} class=\"no-data\" rowspan=\"{len(TARGET_ROWS) - 1}\">{NO_DATA}</td>"
    return ""


def _window_table(probes: list[dict], window_name: str) -> str:
    """One window (24h, 7d, ...) with one column per kind, side by side."""
    name = esc(window_name)
    heads = "".join(f"<th scope=\"col\" data-kind=\"{esc(p.get('kind'))}\">{esc(p.get('kind'))}</th>" for p in probes)
    rows = "".join(
        f"<tr data-figure=\"{figure}\"><th scope=\"row\">{label}</th>"
        + "".join(_window_cell(probe, window_name, i) for probe in probes) + "</tr>\n"
        for i, (figure, label, _) in enumerate(TARGET_ROWS))
    return (f"<div class=\"scroll\"><table class=\"window\" data-window=\"{name}\">\n"
            f"<caption>Last {name}</caption>\n<thead><tr><th scope=\"col\">{name}</th>{heads}</tr></thead>\n"
            f"<tbody>\n{rows}</tbody>\n</table></div>\n")


def _last_run(run: dict | None) -> str:
    """The last run of a kind: when, how it ended, its TTFT."""
    if not run:
        return _fig("last_run", "Last run: none yet")
    text = f"Last run {fmt_time(run.get('ts'), seconds=True)} · {run.get('outcome')}"
    if run.get("error_code"):
        text += f" · {run['error_code']}"
    if run.get("ttft_s") is not None:
        text += f" · TTFT {fmt_latency(run['ttft_s'])}"
    return _fig("last_run", text)


def _target_probe(target: dict, probe: dict, min_runs: int) -> str:
    """One kind's column on the target page: state, last run, recent strip, daily bars, voice figures."""
    return _probe_block(target, probe, "h2", f"<p class=\"figures\">{_last_run(probe.get('last_run'))}</p>\n",
                        _voice_tables(probe, min_runs))


# --- voice figures (target page) and time to first audio (index) ------------------------------

VOICE_WINDOWS = ("24h", "7d")  # on the page; the JSON has every window
STAGE_LABELS = {"stt": "Speech to text (whole transcript)", "llm": "LLM (whole answer)",
                "tts": "Text to speech (first audio)"}
BASIS_LABELS = {"config": "modality: audio", "kind": "voice chain", "audio_tokens": "audio output seen"}
KIND_LABELS = {"voice-chain": "chain: stt → llm → tts", "realtime": "realtime",
               "conversation": "conversation, turn 1"}


def _p50_p95(figure: dict | None, count: str, noun: str, min_runs: int, attrs: str) -> str:
    """One cell: "P50 / P95 (n noun)", or No measurements yet below ``min_runs`` values."""
    figure = figure or {}
    n = figure.get(count) or 0
    if n < min_runs:
        return f"<td {attrs} class=\"no-data\">{NO_DATA}</td>"
    return (f"<td {attrs}><span data-figure=\"p50\">{esc(fmt_latency(figure.get('p50_s')))}</span> / "
            f"<span data-figure=\"p95\">{esc(fmt_latency(figure.get('p95_s')))}</span> "
            f"<span class=\"n\">({n} {noun})</span></td>")


def _voice_table(probe: dict, css: str, caption: str, head: str,
                 rows: list[tuple[str, str, str, dict]], count: str, noun: str, min_runs: int) -> str:
    """A small table: one row per (attribute, value, label, {window: figure}), P50 / P95 per window."""
    kind = esc(probe.get("kind"))
    heads = "".join(f"<th scope=\"col\" data-window=\"{w}\">P50 / P95 · {w}</th>" for w in VOICE_WINDOWS)
    body = "".join(
        f"<tr {attr}=\"{esc(value)}\"><th scope=\"row\">{esc(label)}</th>"
        + "".join(_p50_p95(per.get(w), count, noun, min_runs,
                           f"data-kind=\"{kind}\" data-window=\"{w}\" {attr}=\"{esc(value)}\"")
                  for w in VOICE_WINDOWS) + "</tr>\n"
        for attr, value, label, per in rows)
    return (f"<div class=\"scroll\"><table class=\"voice {css}\" data-kind=\"{kind}\">\n<caption>{caption}</caption>\n"
            f"<thead><tr><th scope=\"col\">{head}</th>{heads}</tr></thead>\n<tbody>\n{body}</tbody>\n</table></div>\n")


def _voice_tables(probe: dict, min_runs: int) -> str:
    """A voice chain's stages, a conversation's turn bands, barge-in times (what the probe has)."""
    out = ""
    stages = probe.get("stages")
    if isinstance(stages, dict):
        rows = [("data-stage", stage, STAGE_LABELS.get(stage, stage),
                 {w: (stages.get(w) or {}).get(stage) for w in VOICE_WINDOWS}) for stage in STAGE_LABELS]
        out += _voice_table(probe, "stages", "What each stage adds to the time to first audio (ok runs)",
                            "Stage", rows, "runs", "runs", min_runs)
    bands = probe.get("turn_bands")
    if isinstance(bands, dict):
        names = list(dict.fromkeys(b for w in bands.values() if isinstance(w, dict) for b in w))
        rows = [("data-band", band, f"Turns {band}", {w: (bands.get(w) or {}).get(band) for w in VOICE_WINDOWS})
                for band in names]
        out += _voice_table(probe, "turn-bands", "TTFT of each turn by band of turns (ok runs)",
                            "Turns", rows, "turns", "turns", min_runs)
    interrupt = probe.get("interrupt")
    if isinstance(interrupt, dict):
        rows = [("data-figure", "interrupt", "Cancel sent → acknowledged",
                 {w: interrupt.get(w) for w in VOICE_WINDOWS})]
        out += _voice_table(probe, "interrupt", "Barge-in (ok runs)", "Interrupt", rows, "runs", "runs", min_runs)
    return out


def _first_audio_row(entry: dict, root: str) -> str:
    """One probe of the comparison: target, how its TTFT is made, 24 h P50, P95 and runs."""
    name, kind = entry.get("target"), entry.get("kind")
    basis = entry.get("basis") or "config"
    attrs = f"data-target=\"{esc(name)}\" data-kind=\"{esc(kind)}\""
    if entry.get("enough_data"):
        cells = (f"<td {attrs} data-figure=\"ttft_p50\">{esc(fmt_latency(entry.get('ttft_p50_s')))}</td>"
                 f"<td {attrs} data-figure=\"ttft_p95\">{esc(fmt_latency(entry.get('ttft_p95_s')))}</td>")
    else:
        cells = f"<td {attrs} class=\"no-data\" colspan=\"2\">{NO_DATA}</td>"
    return (f"<tr class=\"first-audio-probe\" {attrs} data-basis=\"{esc(basis)}\">"
            f"<td><a href=\"{target_href(root, name)}\">{esc(name)}</a> "
            f"<span class=\"meta\">{esc(entry.get('model'))}</span></td>"
            f"<td>{esc(_how(kind, entry.get('transport')))}</td>"
            f"<td>{_state(entry.get('state'))}</td>{cells}"
            f"<td {attrs} data-figure=\"runs\">{esc(entry.get('runs', 0))}</td></tr>\n")


def _how(kind: str | None, transport: str | None) -> str:
    """How a probe's first audio is made: its kind, and for realtime its transport when known."""
    label = KIND_LABELS.get(kind, kind)
    return f"{label} over WebRTC" if transport == "webrtc" else label


def _first_audio(snapshot: dict, root: str) -> str:
    """Time to first audio: realtime audio probes, voice chains and audio conversations side by side."""
    found = snapshot.get("first_audio") or {}
    entries = found.get("probes") or []
    if not entries:
        return ""
    window = esc(found.get("window") or INDEX_WINDOW)
    rows = "".join(_first_audio_row(entry, root) for entry in entries)
    return (f"<section id=\"first-audio\" data-window=\"{window}\">\n<h2>Time to first audio · {window}</h2>\n"
            "<p class=\"meta\">From the request to the first audio of the spoken answer: a realtime session "
            "against a chain of speech to text, LLM and text to speech. Fastest P50 first; ok runs.</p>\n"
            "<div class=\"scroll\"><table class=\"first-audio\">\n<thead><tr><th scope=\"col\">Target</th>"
            f"<th scope=\"col\">How</th><th scope=\"col\">State</th><th scope=\"col\">P50 · {window}</th>"
            f"<th scope=\"col\">P95 · {window}</th><th scope=\"col\">Runs · {window}</th></tr></thead>\n"
            f"<tbody>\n{rows}</tbody>\n</table></div>\n</section>\n")


def render_target(snapshot: dict, target: dict, root: str = "../../") -> str:
    """GET /targets/{target}: every kind side by side, its windows, daily bars and incidents."""
    name = target.get("target")
    probes = target.get("probes") or []
    meta = f"<p class=\"meta\">{esc(target.get('provider'))} · {esc(target.get('model'))}</p>\n"
    back = f"<nav><a class=\"back\" href=\"{esc(root) or './'}\">\u2190 All targets</a></nav>\n"
    min_runs = max(1, int(snapshot.get("min_runs") or 0))
    columns = "".join(_target_probe(target, probe, min_runs) for probe in probes)
    tables = "".join(_window_table(probes, w) for w in snapshot.get("windows") or ("24h", "7d", "30d", "90d"))
    incidents = [incident for probe in probes for incident in probe.get("incidents") or []]
    body = (
        back + _banner(snapshot, esc(name), target.get("state"), meta)
        + f"<main>\n<section id=\"kinds\" class=\"kinds\">\n{columns}</section>\n"
        + f"<section id=\"windows\">\n<h2>Windows</h2>\n{tables}</section>\n"
        + _incidents(incidents, root, "Incidents of this target", link=False)
        + "</main>\n" + _footer(root, f"api/v1/targets/{quote(str(name), safe='/')}.json")
    )
    return _document(f"{name} · {snapshot.get('title') or 'Status'}", "page-target", body, root)


# --- embed -------------------------------------------------------------------------------------

def _embed_figures(snapshot: dict, probe: dict, window_name: str) -> str:
    """The panel's figures for its window, or "No measurements yet" below ``min_runs``."""
    window = (probe.get("windows") or {}).get(window_name)
    run = probe.get("last_run") or {}
    last = (f"<span class=\"fig\" data-figure=\"last_run\">Last automated test "
            f"{_time(run.get('ts'), fmt_ago(run.get('ts'), snapshot.get('as_of')))}</span>"
            if run else _fig("last_run", "Last automated test: none yet"))
    if not _enough(window):
        return f"{_no_data(window_name)}<p class=\"figures\" data-window=\"{esc(window_name)}\">{last}</p>\n"
    w, name = window, window_name
    figures = [
        _fig("availability", f"Availability {fmt_percent(w.get('availability'))} · {name}"),
        last,
        _fig("ttft_p50", f"P50 latency {fmt_latency(w.get('ttft_p50_s'))} · {name}"),
        _fig("ttft_p95", f"P95 latency {fmt_latency(w.get('ttft_p95_s'))} · {name}"),
        _fig("errors", f"Errors {_errors_text(w)} · {name}"),
    ]
    return f"<p class=\"figures\" data-window=\"{esc(name)}\">{' '.join(figures)}</p>\n"


def render_embed(snapshot: dict, target: dict, probe: dict, window: str, root: str = "../../") -> str:
    """GET /embed/{target}: the availability panel alone, for an iframe of about 360×200."""
    name, kind = target.get("target"), probe.get("kind")
    s = state_of(probe.get("state"))
    body = (
        f"<section id=\"panel\" class=\"probe panel\" data-target=\"{esc(name)}\" data-kind=\"{esc(kind)}\" "
        f"data-state=\"{s}\" data-window=\"{esc(window)}\">\n"
        f"<h1 class=\"panel-title\">{esc(name)} · {esc(kind)}</h1>\n<p>{_state(s)}</p>\n"
        f"{_embed_figures(snapshot, probe, window)}"
        f"<p class=\"panel-foot\"><a class=\"details\" href=\"{target_href(root, name)}\" "
        "target=\"_blank\" rel=\"noopener\">details</a></p>\n</section>\n"
    )
    return _document(f"{name} · {kind}", "page-embed", body, root)
