"""One hostile byte must never stop storage: text a server sends is made storable first.

A header value that is not UTF-8 (aiohttp decodes it into surrogates) or a JSON
error body spelling lone surrogates used to reach SQLite as such: the writer
thread died on UnicodeEncodeError and every later row was lost while /metrics
went on counting and /-/healthy said OK. Here the real daemon probes such a
server, and the store is also handed rows that no cleaning upstream repaired.
"""

from __future__ import annotations

import json
import time
import pytest

from conftest import TEST_KEY, free_port
from daemon_helpers import http_get, metric, rows, running_daemon, wait_for
from raw_server import Reply, http_response, raw_server

from modelwatch.outcomes import ProbeResult
from modelwatch.store import Store

pytestmark = pytest.mark.slow  # starts daemons, CLI processes or Prometheus: `pytest -m "not slow"` skips it

CHUNK = ("data: " + json.dumps({"id": "c1", "object": "chat.completion.chunk", "model": "m",
         "choices": [{"index": 0, "delta": {"content": "OK"}, "finish_reason": "stop"}]})
         + "\n\ndata: [DONE]\n\n").encode()
HEADER_REPLY = http_response("200 OK", [(b"Content-Type", b"text/event-stream"),
                                        (b"x-request-id", b"abc\xff\xfe\xc3(")], CHUNK)
# JSON escapes for lone surrogates: json.loads gives a str SQLite cannot encode.
SURROGATE_BODY = b'{"error": {"message": "bad \\udcff\\ud800 thing", "type": "server_error"}}'
BODY_REPLY = http_response("500 Internal Server Error", [(b"Content-Type", b"application/json")],
                           SURROGATE_BODY)


def _config(path, url: str, port: int):  # noqa: ANN001, ANN202
    path.write_text(
        f"storage: {{path: {path.parent / 'modelwatch.db'}}}\n"
        f"server: {{listen: '127.0.0.1:{port}'}}\n"
        "defaults: {interval: 250ms, timeout: 3s}\n"
        "providers:\n"
        f"  hdr: {{type: openai-compatible, base_url: '{url}/hdr/v1', api_key: '{TEST_KEY}'}}\n"
        f"  body: {{type: openai-compatible, base_url: '{url}/body/v1', api_key: '{TEST_KEY}'}}\n"
        "targets:\n"
        "  - {name: bad-header, provider: hdr, model: m, probes: [{kind: rest}]}\n"
        "  - {name: bad-body, provider: body, model: m, probes: [{kind: rest}]}\n")
    return path


def test_undecodable_server_text_is_stored_and_the_writer_lives_on(tmp_path):
    port = free_port()
    replies = {"/hdr/": Reply([HEADER_REPLY]), "/body/": Reply([BODY_REPLY])}
    with raw_server(replies) as url:
        config = _config(tmp_path / "c.yaml", url, port)
        db = tmp_path / "modelwatch.db"
        with running_daemon(config, port) as (proc, base):
            wait_for(lambda: metric(http_get(base + "/metrics") or "", "modelwatch_probes_total") >= 16, 20)
            time.sleep(0.6)  # past a commit window
            assert http_get(base + "/-/healthy") == "OK\n"
            text = http_get(base + "/metrics")
        proc.wait(15)
    counted = metric(text, "modelwatch_probes_total")
    stored = rows(db)
    assert len(stored) >= counted  # every probe /metrics counted is in the database
    assert metric(text, "modelwatch_store_errors_total") == 0
    by_target = {r["target"]: r for r in stored}
    assert by_target["bad-header"]["outcome"] == "ok"
    assert by_target["bad-header"]["request_id"].startswith("abc\ufffd")
    assert by_target["bad-body"]["outcome"] == "server_error"
    assert "bad \ufffd\ufffd thing" in by_target["bad-body"]["error"]
    assert "Traceback" not in proc.stderr.read()


def _result(i: int, **fields) -> ProbeResult:
    return ProbeResult(ts=time.time(), target=f"t{i}", provider="p", model="m", kind="rest",
                       outcome="ok", **fields)


def test_the_store_repairs_or_drops_rows_sqlite_refuses_and_keeps_writing(db_path):
    errors, dropped = [], []
    store = Store(db_path, 86400.0, on_error=lambda: errors.append(1), on_dropped=lambda: dropped.append(1))
    store.submit(_result(0))
    store.submit(_result(1, error="lone \udcff surrogate", request_id="id-\ud800"))
    store.submit(_result(2, input_tokens=2 ** 70))  # beyond SQLite's 64-bit integers
    store.submit(_result(3, duration_s=float("nan")))
    time.sleep(0.6)
    assert store.healthy()
    store.submit(_result(4))
    store.close()
    got = {r["target"]: r for r in rows(db_path)}
    assert sorted(got) == ["t0", "t1", "t2", "t3", "t4"]
    assert got["t1"]["error"] == "lone \ufffd surrogate" and got["t1"]["request_id"] == "id-\ufffd"
    assert got["t2"]["input_tokens"] is None
    assert got["t3"]["duration_s"] is None
    assert not dropped


def test_a_row_that_cannot_be_stored_in_any_form_is_dropped_alone(db_path, monkeypatch):
    """Only the poisoned row is lost, counted; the rows beside it are written."""
    import modelwatch.store as store_module

    real = store_module.storable
    monkeypatch.setattr(store_module, "storable",
                        lambda row: row if row.get("target") == "poison" else real(row))
    dropped = []
    store = Store(db_path, 86400.0, on_dropped=lambda: dropped.append(1))
    store.submit(_result(0))
    store.submit(ProbeResult(ts=time.time(), target="poison", provider="p", model="m", kind="rest",
                             outcome="ok", error="\udcff"))
    store.submit(_result(1))
    store.close()
    assert sorted(r["target"] for r in rows(db_path)) == ["t0", "t1"]
    assert dropped == [1]


def test_health_reflects_a_dead_writer(db_path):
    store = Store(db_path, 86400.0)
    assert store.healthy()
    store._closing.set()  # noqa: SLF001 - end the thread the way close() does ...
    store._thread.join(5)  # noqa: SLF001
    store._closing.clear()  # noqa: SLF001 - ... but as if nobody asked: a writer that died
    assert not store.healthy()
