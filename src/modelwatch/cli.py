"""The ``modelwatch`` command line.

Every command prints errors as one sentence (never a traceback) and exits 2
for usage and configuration errors.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import queue
import re
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from importlib import resources
from pathlib import Path

import click

from modelwatch import __version__, loop
from modelwatch.config import PROBE_KINDS, ConfigError, default_config_path, load_config, parse_duration
from modelwatch.job import ProbeJob
from modelwatch.logs import LEVELS, setup_logging, stop_logging
from modelwatch.outcomes import LocalFault, Outcome, ProbeResult

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
GOODBYE_WAIT_S = 5.0  # `probe`: how long the probes' background closes and hangups may still take


class Failure(Exception):
    """A one-line error the CLI prints before exiting with ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def _set_level(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    # On the root context: a command's own context has no object to share when no
    # --log-level came before the command, so a flag after it would be lost.
    if value:
        ctx.find_root().ensure_object(dict)["log_level"] = value
    return value


def log_level_option(fn):  # noqa: ANN001, ANN201 - click decorator
    """``--log-level`` accepted before or after the command name."""
    return click.option("--log-level", type=click.Choice(LEVELS), callback=_set_level,
                        expose_value=False, is_eager=True,
                        help="debug, info, warning or error (default info).")(fn)


def config_option(fn):  # noqa: ANN001, ANN201
    """``-c/--config FILE``."""
    return click.option("-c", "--config", "config_path", metavar="FILE",
                        help="Config file (default $MODELWATCH_CONFIG, else "
                             "/etc/modelwatch/modelwatch.yaml).")(fn)


def _load(path: str | None, whole: bool = False):  # noqa: ANN202
    path = path or default_config_path()
    try:
        return load_config(path, whole=whole)
    except ConfigError as exc:
        raise Failure("invalid configuration:\n  " + "\n  ".join(exc.problems)) from None


def _start_logging() -> None:
    level = click.get_current_context().find_root().ensure_object(dict).get("log_level", "info")
    setup_logging(level)


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="modelwatch")
@log_level_option
def cli() -> None:
    """Availability and latency monitor for AI model APIs.

    Probes REST and realtime model endpoints on a schedule, records every
    result in SQLite and exposes Prometheus metrics. See docs/ for the config
    reference.
    """


@cli.command()
@config_option
@log_level_option
def run(config_path: str | None) -> None:
    """Run the daemon: schedule probes, write SQLite, serve /metrics.

    Example: modelwatch run -c /etc/modelwatch/modelwatch.yaml
    SIGTERM or SIGINT stop it cleanly (exit 0); SIGHUP reloads the config.
    """
    config = _load(config_path)
    _start_logging()
    loop.run(_run_daemon(config))


async def _run_daemon(config, on_ready=None, stop_after: float | None = None,  # noqa: ANN001
                      on_result=None) -> None:  # noqa: ANN001
    from modelwatch.daemon import Daemon, install_signal_handlers

    daemon = Daemon(config, on_result=on_result)
    stop = asyncio.Event()
    install_signal_handlers(stop, daemon)
    if stop_after:
        asyncio.get_running_loop().call_later(stop_after, stop.set)
    try:
        await daemon.run(stop, on_ready)
    except sqlite3.Error as exc:  # SQLite's own message never names the file
        raise Failure(f"cannot open the database {config.storage.path}: {exc}", 1) from None
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        raise Failure(f"cannot start:{where} {exc.strerror or exc}", 1) from None


@cli.command()
@config_option
@click.argument("targets", nargs=-1, metavar="[TARGET]...")
@click.option("--kind", type=click.Choice(PROBE_KINDS), help="Only probes of this kind.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per probe (JSON Lines).")
@click.option("--dry-run", is_flag=True, help="Probe nothing; print probes, tokens and cost per day.")
@log_level_option
def probe(config_path: str | None, targets: tuple[str, ...], kind: str | None, as_json: bool,
          dry_run: bool) -> None:
    """Run the matching probes once, now, concurrently.

    Different targets run at once; the kinds of one target run one after
    another, never overlapping (some servers end a running stream when another
    request arrives). TARGET is a target name or a glob (e.g. 'gpt-*'); none means all.
    Exit 0 if every probe is ok, 1 if any failed, 2 on a config error.
    Example: modelwatch probe gpt-4o-mini --json
    """
    config = _load(config_path)
    jobs = _select(config.jobs, targets, kind)
    _start_logging()
    if dry_run:
        from modelwatch.cost import dry_run_lines

        click.echo("\n".join(dry_run_lines(jobs, config.budget.daily_usd if config.budget else None)))
        return
    from modelwatch.probes import prober_for
    from modelwatch.probes.base import goodbyes, new_http_session, run_probe

    async def one(http, job: ProbeJob) -> ProbeResult | LocalFault:  # noqa: ANN001
        try:
            return await run_probe(job, http, prober_for(job.provider.type, job.probe.kind))
        except LocalFault as fault:  # our own failure: no provider outcome to print
            return fault

    async def one_target(http, target_jobs: list[ProbeJob]) -> list:  # noqa: ANN001
        return [(j.key, await one(http, j)) for j in target_jobs]

    async def all_once() -> list[ProbeResult | LocalFault]:
        by_target: dict[str, list[ProbeJob]] = {}
        for job in jobs:
            by_target.setdefault(job.target, []).append(job)
        async with new_http_session() as http:
            done = await asyncio.gather(*(one_target(http, group) for group in by_target.values()))
            await goodbyes(GOODBYE_WAIT_S)  # a failed call's hangup, a socket's close: before the loop ends
        results = dict(pair for group in done for pair in group)
        return [results[job.key] for job in jobs]  # in config order, as before

    results = loop.run(all_once())
    for job, r in zip(jobs, results, strict=True):
        if isinstance(r, LocalFault):
            click.echo(f"modelwatch: {job.target} {job.probe.kind}: not probed, a fault of our own "
                       f"({r.reason}): {r}", err=True)
        else:
            click.echo(json.dumps(r.as_row()) if as_json else format_result(r))
    if any(isinstance(r, LocalFault) or r.outcome != Outcome.OK.value for r in results):
        raise Failure("", 1)


def _select(jobs: tuple[ProbeJob, ...], targets: tuple[str, ...], kind: str | None) -> list[ProbeJob]:
    chosen = [j for j in jobs if (not kind or j.probe.kind == kind)
              and (not targets or any(fnmatch.fnmatchcase(j.target, t) for t in targets))]
    if not chosen:
        what = ", ".join(targets) if targets else "any target"
        raise Failure(f"no enabled probe matches {what}" + (f" with kind {kind}" if kind else ""))
    return chosen


def format_result(r: ProbeResult) -> str:
    """One human line per probe result."""
    def s(v: float | None) -> str:
        return "-" if v is None else f"{v * 1000:.0f}ms"
    line = (f"{r.target:<24} {r.kind:<12} {r.outcome:<17} connect={s(r.connect_s)} "
            f"ttfb={s(r.ttfb_s)} ttft={s(r.ttft_s)} total={s(r.duration_s)}")
    if r.input_tokens is not None or r.output_tokens is not None:
        line += f" tokens={r.input_tokens or 0}/{r.output_tokens or 0}"
    if r.stages:  # what each stage added to the time to first audio
        line += " stages=" + ",".join(f"{st.stage}:{s(st.ready_s())}" for st in r.stages)
    if r.turns:
        ttfts = [t.ttft_s for t in r.turns if t.ttft_s is not None]
        line += f" turns={len(r.turns)}" + (f" turn_ttft={s(min(ttfts))}..{s(max(ttfts))}" if ttfts else "")
    if r.interrupt_s is not None:
        line += f" interrupt={s(r.interrupt_s)}"
    if r.outcome != Outcome.OK.value:
        status = f" http={r.http_status}" if r.http_status else ""
        line += f"{status} code={r.error_code or '-'}" + (f" error={r.error!r}" if r.error else "")
    return line


@cli.command("check-config")
@config_option
@click.option("--shards", type=click.IntRange(1, 1000), metavar="N",
              help="Also print which probes each of N shards would run (shard: i/N on N hosts).")
@log_level_option
def check_config(config_path: str | None, shards: int | None) -> None:
    """Validate a config file and its includes; name every problem.

    Example: modelwatch check-config -c modelwatch.yaml --shards 3
    Exit 0 if valid, 2 otherwise (each problem as file: key.path: reason).
    Warns (still exit 0) when a max_concurrent_probes, a provider's or the
    global one, is too small for the schedule: probes x expected duration /
    interval above it means probes will start late. With --shards N, prints
    each shard's probes, their rate and targets, for the whole config.
    """
    from modelwatch.capacity import shortfalls
    from modelwatch.shards import plan_lines

    config = _load(config_path)
    targets = len({j.target for j in config.jobs})
    share = f" (shard {config.shard[0]}/{config.shard[1]})" if config.shard else ""
    click.echo(f"{config.path}: ok, {len(config.providers)} providers, {targets} targets, "
               f"{len(config.jobs)} probes{share}")
    if shards is not None:
        whole = _load(config_path, whole=True)
        for line in plan_lines(whole.jobs, shards):
            click.echo(line)
    for shortfall in shortfalls(config):
        click.echo(f"modelwatch: warning: {config.path}: {shortfall.message()}", err=True)


@cli.command()
@config_option
@click.option("--db", "db_path", metavar="PATH", help="Read this database instead of the config's.")
@click.option("--since", default="24h", show_default=True, metavar="WHEN",
              help="Start: a duration ago (1h, 7d, 90d) or an ISO 8601 time (UTC unless it has an offset).")
@click.option("--until", default="now", show_default=True, metavar="WHEN",
              help="End: now, a duration ago or an ISO 8601 time.")
@click.option("--target", "targets", multiple=True, metavar="GLOB",
              help="Only targets matching this name or glob (e.g. 'gpt-*'); repeatable.")
@click.option("--kind", metavar="KIND", help=f"Only probes of this kind ({', '.join(PROBE_KINDS)}).")
@click.option("--source", default="auto", show_default=True, metavar="SOURCE",
              help="auto, raw (exact percentiles, only while raw rows are kept) or rollups (hourly).")
@click.option("--format", "fmt", default="table", show_default=True, metavar="FORMAT",
              help="table, json or csv.")
@log_level_option
def report(config_path: str | None, db_path: str | None, since: str, until: str,
           targets: tuple[str, ...], kind: str | None, source: str, fmt: str) -> None:
    """Availability, outcomes and latency percentiles per target and kind.

    Ranges of up to 7 days and a million probes are read from the raw rows
    (exact percentiles); others from the hourly rollups, with raw rows for
    partial hours at the ends (exact counts, percentiles within 4.4%, marked ~).

    Example: modelwatch report --db /var/lib/modelwatch/modelwatch.db --since 30d --target 'gpt-*'
    """
    import time

    from modelwatch.report import FORMATS, SOURCES, ReportError, build_report, render

    _check_choice("--kind", kind, PROBE_KINDS)
    _check_choice("--source", source, SOURCES)
    _check_choice("--format", fmt, FORMATS)
    now = time.time()
    start, end = _report_time("--since", since, now), _report_time("--until", until, now)
    if start >= end:
        raise Failure(f"--since ({since}) must be earlier than --until ({until})")
    path = Path(db_path) if db_path else _load(config_path).storage.path
    if not path.exists():
        raise Failure(f"no database at {path}")
    try:
        result = build_report(path, start, end, targets=targets, kind=kind, source=source)
    except ReportError as exc:
        raise Failure(f"{path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - sqlite3 errors of a foreign or broken file
        raise Failure(f"cannot read {path}: {exc}", 1) from None
    click.echo(render(result, fmt))
    if fmt != "table":  # the table carries its notes; keep json and csv parseable
        for note in result.notes:
            click.echo(f"modelwatch: note: {note}", err=True)


@cli.command()
@config_option
@click.option("--db", "db_path", metavar="PATH", help="Database to read (default: storage.path of the config).")
@click.option("--out", "out_dir", metavar="DIR",
              help="Write the whole site (pages, embeds, badges, JSON) as static files into DIR.")
@log_level_option
def status(config_path: str | None, db_path: str | None, out_dir: str | None) -> None:
    """The status page's figures in the terminal, or the whole site as static files.

    With -c, the page shows the configured probes; with only --db, every probe the database
    holds from the last 90 days.

    Example: modelwatch status -c /etc/modelwatch/modelwatch.yaml --out /var/www/status
    """
    from modelwatch.status.service import series_from, settings_from
    from modelwatch.status.site import Site
    from modelwatch.status.snapshot import Settings, SnapshotBuilder
    from modelwatch.status.terminal import render_terminal

    config = _load(config_path) if config_path or not db_path else None
    path = Path(db_path) if db_path else config.storage.path
    if not path.exists():
        raise Failure(f"no database at {path}")
    settings = settings_from(config.status) if config else Settings()
    series = series_from(config.jobs) if config else None
    site = Site(SnapshotBuilder(path, settings, series))
    try:
        snapshot = site.refresh()
        if out_dir:
            written = site.export(out_dir)
    except OSError as exc:
        raise Failure(f"cannot write {out_dir}: {exc.strerror or exc}", 1) from None
    except Exception as exc:  # noqa: BLE001 - sqlite3 errors of a foreign or broken file
        raise Failure(f"cannot read {path}: {exc}", 1) from None
    if out_dir:
        click.echo(f"wrote {written} files to {out_dir} (status as of {snapshot['as_of']}); "
                   "serve the directory with any static web server")
    else:
        click.echo(render_terminal(snapshot))


def _check_choice(option: str, value: str | None, choices: tuple[str, ...]) -> None:
    if value is not None and value not in choices:
        raise Failure(f"{option} must be one of {', '.join(choices)}, not {value!r}")


def _report_time(option: str, value: str, now: float) -> float:
    from modelwatch.report import parse_time

    try:
        return parse_time(value, now)
    except ValueError as exc:
        raise Failure(f"{option} {exc}") from None


@cli.command()
@click.option("--listen", default="127.0.0.1:8080", show_default=True, metavar="HOST:PORT",
              help="Address to serve on; an empty host (:8080) is 127.0.0.1, port 0 picks a free port.")
@click.option("--scenario", "scenario_path", metavar="FILE",
              help="Scenario YAML (default: the bundled demo scenario).")
@log_level_option
def sim(listen: str, scenario_path: str | None) -> None:
    """Run the provider simulator (OpenAI-style endpoints) on loopback.

    Example: modelwatch sim --listen 127.0.0.1:8080 --scenario scenario.yaml
    Prints 'listening on URL' once ready; Ctrl-C stops it.
    """
    from modelwatch.sim import ScenarioError, default_scenario, load_scenario, serve

    try:
        scenario = load_scenario(scenario_path) if scenario_path else default_scenario()
    except ScenarioError as exc:
        raise Failure(str(exc)) from None
    _start_logging()
    try:
        serve(listen, scenario, on_ready=lambda url: click.echo(f"modelwatch sim: listening on {url}"))
    except OSError as exc:
        raise Failure(f"cannot listen on {listen}: {exc.strerror or exc}", 1) from None
    except ValueError as exc:
        raise Failure(str(exc)) from None


@cli.command()
@click.option("--for", "duration", metavar="DURATION", help="Stop by itself after this long (e.g. 30s).")
@click.option("--db", "db_path", metavar="PATH", help="Database file (default: a new temporary one).")
@log_level_option
def demo(duration: str | None, db_path: str | None) -> None:
    """Run the simulator and the daemon together, no keys needed.

    Probes a healthy, a flaky and a slow model (and more) on the bundled
    simulator, prints the status page URL and where else to look, then one line
    per probe result as it arrives. Logs only warnings unless --log-level says
    otherwise (the probe lines say what the info lines would).
    Example: modelwatch demo --for 60s
    """
    stop_after = parse_duration(duration) if duration else None
    sim_proc, sim_url = _start_sim_process()
    printer: _DemoPrinter | None = None
    try:
        db = db_path or str(Path(tempfile.mkdtemp(prefix="modelwatch-demo-")) / "modelwatch.db")
        os.environ.update(MODELWATCH_SIM_URL=sim_url, MODELWATCH_DEMO_DB=db,
                          MODELWATCH_DEMO_LISTEN=_free_listen("127.0.0.1", 9477))
        config = _load(str(resources.files("modelwatch") / "data" / "demo-config.yaml"))
        setup_logging(click.get_current_context().find_root().ensure_object(dict).get("log_level", "warning"))
        printer = _DemoPrinter(max(len(j.target) for j in config.jobs), max(len(j.probe.kind) for j in config.jobs))

        def ready(url: str) -> None:
            printer.put(f"Status page: {url}/\n"
                        f"modelwatch demo is running (Ctrl-C to stop)\n"
                        f"  metrics:   {url}/metrics\n  health:    {url}/-/healthy\n"
                        f"  simulator: {sim_url}\n  database:  {db}\n"
                        f"  report:    modelwatch report --db {db}\n"
                        f"Probe results as they arrive:")
        loop.run(_run_daemon(config, ready, stop_after, on_result=printer.put))
    finally:
        if printer is not None:
            printer.stop()
        sim_proc.terminate()
        sim_proc.wait(10)


class _DemoPrinter:
    """The demo's terminal output: text and probe results, printed in order by a thread of its own.

    Why a callback and a thread, not a logging handler: the daemon logs ``probe ok`` at
    debug level only, and a handler would have to pick its records out by message text.
    ``Daemon.on_result`` hands over the result itself; ``put`` runs on the event loop and
    only appends to a queue, so a slow or paused terminal (Ctrl-S, a full pipe) stalls this
    thread, never the probes (the same reason logs.py writes log lines from a listener thread).
    """

    def __init__(self, target_width: int, kind_width: int) -> None:
        self._widths = (target_width, kind_width)
        self._queue: queue.SimpleQueue[str | ProbeResult | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._print, name="modelwatch-demo-printer", daemon=True)
        self._thread.start()

    def put(self, item: str | ProbeResult) -> None:
        self._queue.put(item)

    def stop(self) -> None:
        """Print what is queued, then end the thread."""
        self._queue.put(None)
        self._thread.join(5)

    def _print(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                click.echo(item if isinstance(item, str) else demo_line(item, *self._widths))
            except OSError:  # stdout gone (a closed pipe): the demo carries on without its printout
                return


def demo_line(r: ProbeResult, target_width: int = 24, kind_width: int = 8) -> str:
    """One short aligned line per probe result: local time, target, kind, outcome, timings.

    ``21:40:03  gpt-4o-mini  rest  ok            ttft 183 ms  total 310 ms``
    ``21:40:04  flaky-model  rest  rate_limited  http 429  total 124 ms``
    """
    def ms(v: float) -> str:
        return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.1f} s"
    done = r.ts + (r.duration_s or 0)
    parts = [time.strftime("%H:%M:%S", time.localtime(done)), r.target.ljust(target_width),
             r.kind.ljust(kind_width), r.outcome.ljust(13)]  # the usual outcomes; rarer longer ones push
    if r.outcome != Outcome.OK.value:
        parts.append(f"http {r.http_status}" if r.http_status else (r.error_code or "-"))
    elif r.ttft_s is not None:
        parts.append(f"ttft {ms(r.ttft_s)}")
    if r.duration_s is not None:
        parts.append(f"total {ms(r.duration_s)}")
    return "  ".join(parts).rstrip()


def _start_sim_process() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "modelwatch", "sim", "--listen", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    match = re.search(r"listening on (\S+)", line)
    if not match:
        proc.kill()
        raise Failure("the simulator did not start", 1)
    return proc, match.group(1)


def _free_listen(host: str, port: int) -> str:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return f"{host}:0"
    return f"{host}:{port}"


def main() -> None:
    """Console entry point: run the CLI, turning every error into one line."""
    code = 0
    try:
        cli.main(prog_name="modelwatch", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except click.exceptions.Abort:
        code = 130
    except Failure as exc:
        if str(exc):
            click.echo(f"modelwatch: {exc}", err=True)
        code = exc.code
    except KeyboardInterrupt:
        code = 0
    except Exception as exc:  # noqa: BLE001 - the promise is one line, never a traceback
        click.echo(f"modelwatch: error: {type(exc).__name__}: {exc}", err=True)
        code = 1
    finally:
        stop_logging()
    sys.exit(code)
