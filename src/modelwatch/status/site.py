"""Every page, badge and JSON answer of the status site, from one snapshot.

:class:`Site` answers a path and its query (the daemon's worker process calls it for
each request it has not cached) and writes the whole site as static files
(``modelwatch status --out DIR``). Paths are DESIGN.md's; pages link to each other
and to the stylesheet by relative URLs, so the same HTML works under the daemon's
root and from any directory of a static host.

Static file names, where a static host cannot use a query string:

==============================================  =============================================
daemon                                          static export
==============================================  =============================================
``/``                                           ``index.html``
``/pages/N/`` (the index from target 50N-49)    ``pages/N/index.html``
``/targets/T/``                                 ``targets/T/index.html``
``/embed/T/?kind=K&window=W``                   ``embed/T/index.html`` (first kind, 24h),
                                                ``embed/T/K/W/index.html``
``/api/v1/status``                              ``api/v1/status.json``
``/api/v1/targets/T``                           ``api/v1/targets/T.json``
``/api/v1/targets/T/history?kind=K&grain=G``    ``api/v1/targets/T/history/K-G.json`` (24 h
                                                of hours, 90 days of days)
``/api/v1/incidents``                           ``api/v1/incidents.json``
``/badge/T.svg?kind=K&metric=M&window=W``       ``badge/T.svg`` (first kind, availability,
                                                24h), ``badge/T/K/M-W.svg``; ``.json`` alike
==============================================  =============================================
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import sqlite3
import tempfile
from importlib import resources
from pathlib import Path
from urllib.parse import unquote

from modelwatch import figures, rollups
from modelwatch.report import parse_time
from modelwatch.status import badges, html
from modelwatch.status.snapshot import WINDOWS, SnapshotBuilder, Tally, day_rollups, rollup_rows

METRICS = ("availability", "ttft_p50", "ttft_p95")
VOICE_KEYS = ("stages", "turn_bands", "interrupt")  # a probe has those its kind has (status.voice)
GRAINS = {"hour": (3600, 31 * 86400.0, 86400.0), "day": (86400, 400 * 86400.0, 90 * 86400.0)}
STATIC = {"status.css": "text/css; charset=utf-8", "favicon.svg": "image/svg+xml"}
HTML_TYPE = "text/html; charset=utf-8"
GZIP_LEVEL = 6
JSON_TYPE = "application/json"


@dataclasses.dataclass(frozen=True)
class Answer:
    """One response: status, type, body and what it is (page, embed, api, badge or static)."""

    status: int
    content_type: str
    body: bytes
    role: str
    gzipped: bytes | None = None  # the body gzipped, for clients that take it (large answers)
    etag: str | None = None  # a hash of the body (the worker adds it)


def _json(data: object, status: int = 200, role: str = "api") -> Answer:
    return Answer(status, JSON_TYPE, json.dumps(data, separators=(",", ":"), allow_nan=False).encode(), role)


def _not_found(what: str) -> Answer:
    return _json({"error": what}, 404)


def _bad(what: str) -> Answer:
    return _json({"error": what}, 400)


class Site:
    """The status site of one database: the builder, and a view of its latest snapshot.

    :meth:`refresh` may run in one thread while :meth:`answer` runs in another (the worker
    process answers requests while it builds the next snapshot): each answer reads the
    view once, and a refresh replaces the whole view at once.
    """

    def __init__(self, builder: SnapshotBuilder) -> None:
        self.builder = builder
        self.view: View | None = None

    @property
    def snapshot(self) -> dict | None:
        view = self.view
        return None if view is None else view.snapshot

    def refresh(self, now: float | None = None) -> dict:
        """Read the database again, render what every visitor asks for; return the new snapshot."""
        snapshot = self.builder.build(now)
        self.view = View(snapshot, self.builder.db_path, self.builder.settings.min_runs)
        return snapshot

    def answer(self, path: str, query: dict[str, str]) -> Answer:
        """The response to GET ``path`` (percent-encoded, as requested) with ``query``."""
        view = self.view
        if view is None:
            self.refresh()
            view = self.view
        return view.answer(path, query)

    def export(self, out: str | Path) -> int:
        """Write the whole site under ``out``; return how many files."""
        if self.view is None:
            self.refresh()
        return self.view.export(out)


class View:
    """Every answer from one snapshot; the index pages and the status JSON rendered up front."""

    def __init__(self, snapshot: dict, db_path: str, min_runs: int) -> None:
        self.snapshot = snapshot
        self.db_path = db_path
        self.min_runs = min_runs
        self._targets = {t["target"]: t for t in snapshot["targets"]}
        self.pages = max(1, -(-len(snapshot["targets"]) // html.INDEX_PAGE_TARGETS))
        root = {1: ""}
        self._index = {n: _gzipped(Answer(200, HTML_TYPE, html.render_index(
            snapshot, root.get(n, "../../"), n).encode(), "page")) for n in range(1, self.pages + 1)}
        self._status = _gzipped(_json(api_status(snapshot)))

    def answer(self, path: str, query: dict[str, str]) -> Answer:
        """The response to GET ``path`` (percent-encoded, as requested) with ``query``."""
        path = unquote(path)
        if path in ("", "/", "/index.html"):
            return self._index[1]
        if path.startswith("/pages/"):
            return self._index_page(path)
        if path.startswith("/static/"):
            return _static(path[len("/static/"):])
        if path in ("/api/v1/status", "/api/v1/status.json"):
            return self._status
        if path in ("/api/v1/incidents", "/api/v1/incidents.json"):
            return self._incidents(query)
        for prefix, handler in (("/targets/", self._target_page), ("/embed/", self._embed),
                                ("/api/v1/targets/", self._api_target), ("/badge/", self._badge)):
            if path.startswith(prefix):
                return handler(path, path[len(prefix):], query)
        return _not_found("no such page")

    def _index_page(self, path: str) -> Answer:
        number = path[len("/pages/"):].strip("/")
        if not number.isdigit() or not 2 <= int(number) <= self.pages:
            return _not_found(f"the index has pages 1 to {self.pages}")
        return self._index[int(number)]

    def _find(self, name: str) -> dict | None:
        return self._targets.get(name.strip("/"))

    def _chosen(self, name: str, query: dict) -> tuple[dict, dict, str] | Answer:
        """The target, its probe (``kind``, else the first) and the ``window`` a query names."""
        target = self._find(name)
        if target is None:
            return _not_found(f"no target named {name.strip('/')!r}")
        found = _probe_and_window(target, query)
        return found if isinstance(found, Answer) else (target, *found)

    def _target_page(self, path: str, name: str, query: dict) -> Answer:
        target = self._find(name)
        if target is None:
            return _not_found(f"no target named {name.strip('/')!r}")
        page = html.render_target(self.snapshot, target, html.root_for_path(path))
        return Answer(200, HTML_TYPE, page.encode(), "page")

    def _embed(self, path: str, name: str, query: dict) -> Answer:
        chosen = self._chosen(name, query)
        if isinstance(chosen, Answer):
            return chosen
        page = html.render_embed(self.snapshot, *chosen, html.root_for_path(path))
        return Answer(200, HTML_TYPE, page.encode(), "embed")

    def _api_target(self, path: str, name: str, query: dict) -> Answer:
        name = name.removesuffix(".json")
        target = self._find(name)
        if target is not None:
            return _json(api_target(self.snapshot, target))
        if name.endswith("/history") and self._find(name[:-len("/history")]) is not None:
            return self.history(self._find(name[:-len("/history")]), query)
        return _not_found(f"no target named {name!r}")

    def _badge(self, path: str, name: str, query: dict) -> Answer:
        stem, dot, suffix = name.rpartition(".")
        if not dot or suffix not in ("svg", "json"):
            return _not_found("a badge is /badge/TARGET.svg or /badge/TARGET.json")
        chosen = self._chosen(stem, query)
        if isinstance(chosen, Answer):
            return chosen
        _target, probe, window = chosen
        metric = query.get("metric", "availability")
        if metric not in METRICS:
            return _bad(f"metric must be one of {', '.join(METRICS)}")
        label, message, color = badges.badge_values(probe["windows"][window], metric, window, probe["kind"],
                                                    self.snapshot["thresholds"])
        if suffix == "json":
            return _json(badges.shields_json(label, message, color), role="badge")
        return Answer(200, "image/svg+xml", badges.badge_svg(label, message, color).encode(), "badge")

    def _incidents(self, query: dict) -> Answer:
        try:
            since = parse_time(query.get("since", "90d"), self._now())
        except ValueError as exc:
            return _bad(f"since {exc}")
        found = [i for i in self.snapshot["incidents"]
                 if i["ongoing"] or figures.timestamp(i["end"]) >= since]
        return _json({"as_of": self.snapshot["as_of"], "incidents": found})

    def _now(self) -> float:
        """The snapshot's time: relative times in queries count back from what the page shows."""
        return figures.timestamp(self.snapshot["as_of"])

    def history(self, target: dict, query: dict) -> Answer:
        """Windows per hour or day of one probe: ``grain``, ``since`` and ``until`` bounded."""
        found = _probe_and_window(target, {**query, "window": "24h"})
        if isinstance(found, Answer):
            return found
        probe, _ = found
        grain = query.get("grain", "hour")
        if grain not in GRAINS:
            return _bad("grain must be hour or day")
        period, longest, default = GRAINS[grain]
        now = self._now()
        try:
            until = parse_time(query.get("until", "now"), now)
            # by default the periods of the page's own window: 24 hours, 90 days, the current one last
            since = parse_time(query["since"], now) if "since" in query else \
                until // period * period - (default // period - 1) * period
        except ValueError as exc:
            return _bad(f"since/until {exc}")
        if not since < until or until - since > longest:
            return _bad(f"since must be before until, at most {int(longest // 86400)} days apart for {grain}s")
        points = _history(self.db_path, target["target"], probe["kind"], grain, since, until, self.min_runs)
        return _json({"target": target["target"], "kind": probe["kind"], "grain": grain,
                      "since": figures.iso(since // period * period), "until": figures.iso(until),
                      "points": points})

    def export(self, out: str | Path) -> int:
        """Write the whole site under ``out``; return how many files."""
        out = Path(out)
        snapshot = self.snapshot
        files: dict[str, bytes] = {"index.html": self._index[1].body, "api/v1/status.json": self._status.body}
        for name in STATIC:
            files[f"static/{name}"] = _static(name).body
        files["api/v1/incidents.json"] = self._incidents({}).body
        for n in range(2, self.pages + 1):
            files[f"pages/{n}/index.html"] = self._index[n].body
        for target in snapshot["targets"]:
            # names read from a database (--db) may be anything: only those that are paths
            if path_safe(target["target"]) and all(path_safe(p["kind"]) for p in target["probes"]):
                files.update(self._target_files(target))
        for rel, body in files.items():
            _write(out / rel, body)
        return len(files)

    def _target_files(self, target: dict) -> dict[str, bytes]:
        name = target["target"]
        files = {f"targets/{name}/index.html": self._target_page(f"/targets/{name}/", name, {}).body,
                 f"api/v1/targets/{name}.json": _json(api_target(self.snapshot, target)).body,
                 f"embed/{name}/index.html": self._embed(f"/embed/{name}/", name, {}).body}
        for suffix in ("svg", "json"):
            files[f"badge/{name}.{suffix}"] = self._badge("", f"{name}.{suffix}", {}).body
        for probe in target["probes"]:
            kind = probe["kind"]
            for grain in GRAINS:
                files[f"api/v1/targets/{name}/history/{kind}-{grain}.json"] = self.history(
                    target, {"kind": kind, "grain": grain}).body
            for window in WINDOWS:
                query = {"kind": kind, "window": window}
                files[f"embed/{name}/{kind}/{window}/index.html"] = self._embed(
                    f"/embed/{name}/{kind}/{window}/", name, query).body
                for metric in METRICS:
                    for suffix in ("svg", "json"):
                        files[f"badge/{name}/{kind}/{metric}-{window}.{suffix}"] = self._badge(
                            "", f"{name}.{suffix}", {**query, "metric": metric}).body
        return files


def path_safe(name: str) -> bool:
    """Whether a target name can be a relative path under the export directory as it is."""
    return not name.startswith("/") and all(part not in ("", ".", "..") for part in name.split("/")) \
        and "\\" not in name and "\x00" not in name


def _gzipped(answer: Answer) -> Answer:
    """The answer with its gzip form, made once per snapshot (a 4 MB status JSON costs 100 ms)."""
    return dataclasses.replace(answer, gzipped=gzip.compress(answer.body, GZIP_LEVEL))


def _probe_and_window(target: dict, query: dict) -> tuple[dict, str] | Answer:
    kinds = {p["kind"]: p for p in target["probes"]}
    kind = query.get("kind") or target["probes"][0]["kind"]
    if kind not in kinds:
        return _not_found(f"{target['target']!r} has no probe of kind {kind!r}")
    window = query.get("window", "24h")
    if window not in WINDOWS:
        return _bad(f"window must be one of {', '.join(WINDOWS)}")
    return kinds[kind], window


def api_status(snapshot: dict) -> dict:
    """The JSON of ``/``: DESIGN.md's keys (the page's strips and bars are in the target JSON), and
    ``first_audio``: the probes whose ttft_s is a first audio, by 24 h P50."""
    return {"as_of": snapshot["as_of"], "state": snapshot["state"], "targets": [
        {"target": t["target"], "provider": t["provider"], "model": t["model"], "state": t["state"],
         "probes": [{"kind": p["kind"], "state": p["state"], "last_run": p["last_run"],
                     "windows": p["windows"]} for p in t["probes"]]}
        for t in snapshot["targets"]],
        "first_audio": snapshot.get("first_audio") or {"window": "24h", "probes": []}}


def api_target(snapshot: dict, target: dict) -> dict:
    """The JSON of ``/targets/{target}``: every probe with its daily entries and incidents, what its
    ttft_s times (``first_audio``) and the voice figures of its kind."""
    return {"as_of": snapshot["as_of"], **{k: target[k] for k in ("target", "provider", "model", "state")},
            "probes": [{**{k: p[k] for k in ("kind", "state", "last_run", "windows", "daily", "incidents",
                                             "recent", "our_side")},
                        "first_audio": p.get("first_audio"), "transport": p.get("transport"),
                        **{k: p[k] for k in VOICE_KEYS if k in p}}
                       for p in target["probes"]]}


def _history(db_path: str, target: str, kind: str, grain: str, since: float, until: float,
             min_runs: int) -> list[dict]:
    period = GRAINS[grain][0]
    first = int(since) // period * period
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5.0)
    try:
        table, key = day_rollups(conn) if grain == "day" else (rollups.HOURLY.table, rollups.HOURLY.key_column)
        tallies: dict[int, Tally] = {}
        for _t, _k, at, tally in rollup_rows(conn, table, key, first, int(until), (target, kind)):
            tallies.setdefault(at // period * period, Tally()).add(tally)
    finally:
        conn.close()
    points = []
    for start in range(first, int(until), period):
        w = tallies.get(start, Tally()).window(start, start + period, min_runs)
        points.append(w)
    return points


def _static(name: str) -> Answer:
    if name not in STATIC:
        return _not_found("no such file")
    body = (resources.files("modelwatch.status") / "static" / name).read_bytes()
    return Answer(200, STATIC[name], body, "static")


def _write(path: Path, body: bytes) -> None:
    """Write one file whole (a reader of the directory never sees half of it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
