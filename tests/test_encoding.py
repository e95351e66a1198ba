"""Encoding: exact arrays for hand-made users, vocabulary stability, OOV determinism, leakage,
and incremental state = batch."""
from __future__ import annotations

import datetime as dt

import pyspark.sql.functions as F
import pytest
from delta.tables import DeltaTable

from seqlake import constants as C
from seqlake import schemas, sequences, state, tables, vocab
from seqlake.config import ConfigError
from seqlake.sessionize import sessionize

from conftest import make_config

D1, D2, D3 = dt.date(2024, 1, 1), dt.date(2024, 1, 2), dt.date(2024, 1, 3)
SOURCE = "generator"
SETTINGS = (
    "sequences.length=4",
    "sequences.horizon_days=1",
    "vocab.item_id.oov_buckets=4",
    "vocab.item_id.min_count=1",
    "vocab.category_id.oov_buckets=2",
    "vocab.brand.oov_buckets=2",
    "vocab.event_type.oov_buckets=1",
)


def at(day, hh, mm, ss=0, us=0):
    return dt.datetime.combine(day, dt.time(hh, mm, ss, us))


def ev(event_id, user, ts, event_type, item, category="c1", brand="b1", price=10.0):
    return (event_id, user, ts, event_type, item, category, None, brand, price, None, SOURCE, ts.date())


# u: five events before the cutoff D3 (truncated to the last four) and a purchase exactly at
# the cutoff, which may only show in the label. v: two events (left-padded).
EVENTS = [
    ev("u1", "u", at(D1, 10, 0, 0), "view", "i1", price=0.5),
    ev("u2", "u", at(D1, 10, 0, 0, 500_000), "view", "i1", price=1.0),  # gap 0.5 s
    ev("u3", "u", at(D1, 10, 0, 3, 500_000), "cart", "i2", price=3.0),  # gap 3 s
    ev("u4", "u", at(D1, 12, 0, 3, 500_000), "view", "i1", brand=None, price=None),  # 2 h: new session
    ev("u5", "u", at(D2, 12, 0, 3, 500_000), "purchase", "i3", price=100.0),  # 1 day
    ev("u6", "u", at(D3, 0, 0, 0), "purchase", "i1", price=10.0),  # at the cutoff
    ev("v1", "v", at(D2, 9, 0), "view", "i9", category="c2", brand="b2", price=20.0),
    ev("v2", "v", at(D2, 9, 10), "fav", "i2", price=20.0),  # gap 600 s
]


def sessionized_lake(spark, root, *overrides):
    cfg = make_config(root, *SETTINGS, *overrides)
    df = spark.createDataFrame(EVENTS, schemas.EVENTS)
    tables.replace_where(df, cfg, C.EVENTS, "true", partition_by=[C.SOURCE, C.EVENT_DATE])
    sessionize(spark, cfg, source=SOURCE, date_from=D1, date_to=D3)
    return cfg


def oov(spark, token, k):
    return spark.sql(f"SELECT 2 + pmod(xxhash64('{token}'), {k}) AS i").first()["i"]


def split(spark, user):
    return spark.sql(
        f"SELECT CASE WHEN pmod(xxhash64('split', '{SOURCE}', '{user}'), 10000) / 10000.0 < 0.1 THEN 'test' "
        f"WHEN pmod(xxhash64('split', '{SOURCE}', '{user}'), 10000) / 10000.0 < 0.2 THEN 'validation' "
        f"ELSE 'train' END AS s"
    ).first()["s"]


def vocab_rows(spark, cfg, version):
    return {
        (r["feature"], r["token"]): r["index"]
        for r in tables.read(spark, cfg, C.VOCAB).filter(f"vocab_version = {version}").collect()
    }


def snapshot_rows(spark, cfg, cutoff, drop=()):
    df = tables.read(spark, cfg, C.USER_SEQUENCES).filter(f"snapshot_date = '{cutoff}'").drop(*drop)
    return {r["user_id"]: r.asDict() for r in df.collect()}


def test_snapshot_arrays_features_and_label_exact(spark, tmp_path):
    cfg = sessionized_lake(spark, tmp_path)
    fitted = vocab.fit(spark, cfg, source=SOURCE, fit_from=D1, fit_to=D1)
    assert fitted.vocab_version == 1 and fitted.created
    # Day 1 holds view x3, cart x1; items i1 x3, i2 x1; c1; b1 (and one null brand).
    assert vocab_rows(spark, cfg, 1) == {
        ("event_type", "view"): 3, ("event_type", "cart"): 4,
        ("item_id", "i1"): 6, ("item_id", "i2"): 7,
        ("category_id", "c1"): 4, ("brand", "b1"): 4,
    }
    v1 = vocab.load(spark, cfg, SOURCE, 1)
    result = sequences.build_snapshot(spark, cfg, source=SOURCE, cutoff=D3, vocabulary=v1)
    assert (result.users, result.positives) == (2, 1)

    rows = snapshot_rows(spark, cfg, D3)
    i3, i9 = oov(spark, "i3", 4), oov(spark, "i9", 4)
    assert 2 <= i3 <= 5 and 2 <= i9 <= 5
    assert rows["u"] == {
        "source": SOURCE, "user_id": "u", "snapshot_date": D3, "vocab_version": 1, "length": 4,
        # u1 is truncated away (last four kept); purchase is out of vocabulary (K=1: index 2).
        "event_type": [3, 4, 3, 2],
        "item": [6, 7, 6, i3],
        "category": [4, 4, 4, 4],
        "brand": [4, 4, 1, 4],  # u4 has no brand: the null index
        "price_bucket": [3, 4, 1, 9],  # 1.0 -> [1,2); 3.0 -> [2,4); null; 100 -> [64,128)
        "gap_bucket": [2, 4, 15, 19],  # 0.5 s; 3 s; 7200 s -> [4096, 8192); 86400 s -> [65536, 131072)
        "session_start": [0, 0, 1, 1],
        "recency_days": (24 * 3600 - (12 * 3600 + 3.5)) / 86400,
        # The purchase at the cutoff instant is not an input: one purchase, five events.
        "frequency": 1, "monetary": 100.0, "n_events": 5, "n_sessions": 3, "active_days": 2,
        "carts_7d": 1, "purchases_7d": 1, "carts_30d": 1, "purchases_30d": 1,
        "label": 1, "horizon_days": 1, "split": split(spark, "u"),
    }
    assert rows["v"] == {
        "source": SOURCE, "user_id": "v", "snapshot_date": D3, "vocab_version": 1, "length": 2,
        "event_type": [0, 0, 3, 2],  # fav is out of vocabulary
        "item": [0, 0, i9, 7],
        "category": [0, 0, oov(spark, "c2", 2), 4],
        "brand": [0, 0, oov(spark, "b2", 2), 4],
        "price_bucket": [0, 0, 7, 7],  # 20 -> [16, 32)
        "gap_bucket": [0, 0, 1, 12],  # first event ever; 600 s -> [512, 1024)
        "session_start": [0, 0, 1, 0],
        "recency_days": (14 * 3600 + 50 * 60) / 86400,
        "frequency": 0, "monetary": 0.0, "n_events": 2, "n_sessions": 1, "active_days": 1,
        "carts_7d": 0, "purchases_7d": 0, "carts_30d": 0, "purchases_30d": 0,
        "label": 0, "horizon_days": 1, "split": split(spark, "v"),
    }
    # Drift metrics: of the 6 encoded events, i3 and i9 fell into item OOV buckets.
    metrics = {
        r["feature"]: (r["events"], r["oov_events"], r["null_events"])
        for r in tables.read(spark, cfg, C.RUN_METRICS).filter("stage = 'sequences'").collect()
    }
    assert metrics == {"item_id": (6, 2, 0), "event_type": (6, 2, 0), "category_id": (6, 1, 0), "brand": (6, 1, 1)}


def test_no_leak_purchase_at_cutoff_is_label_only(spark, tmp_path):
    cfg = sessionized_lake(spark, tmp_path)
    vocab.fit(spark, cfg, source=SOURCE, fit_from=D1, fit_to=D3)
    v = vocab.load(spark, cfg, SOURCE)
    sequences.build_snapshot(spark, cfg, source=SOURCE, cutoff=D3, vocabulary=v)
    u = snapshot_rows(spark, cfg, D3)["u"]
    i1 = vocab_rows(spark, cfg, v.version)[("item_id", "i1")]
    # u6 (purchase of i1 at 00:00:00 of the cutoff) is in no input column, only in the label.
    assert u["label"] == 1
    assert (u["n_events"], u["frequency"], u["monetary"], u["purchases_7d"]) == (5, 1, 100.0, 1)
    assert u["item"][-1] != i1 and u["length"] == 4


def test_vocab_refit_keeps_indices_appends_and_caps(spark, tmp_path):
    cfg = sessionized_lake(spark, tmp_path, "vocab.item_id.max_size=3")
    vocab.fit(spark, cfg, source=SOURCE, fit_from=D1, fit_to=D1)
    v1 = vocab_rows(spark, cfg, 1)
    refit = vocab.fit(spark, cfg, source=SOURCE, fit_from=D1, fit_to=D2)
    assert (refit.vocab_version, refit.created) == (2, True)
    v2 = vocab_rows(spark, cfg, 2)
    assert all(v2[key] == index for key, index in v1.items())  # old tokens keep their index
    # New tokens appended after the old ones, most frequent first, ties by token; the item
    # vocabulary is full after one more token (max_size=3), so i9 stays out of vocabulary.
    assert {k: v for k, v in v2.items() if k not in v1} == {
        ("event_type", "fav"): 5, ("event_type", "purchase"): 6,
        ("item_id", "i3"): 8, ("category_id", "c2"): 5, ("brand", "b2"): 5,
    }
    # The same window again adds nothing: no new version, the model's version stays current.
    again = vocab.fit(spark, cfg, source=SOURCE, fit_from=D1, fit_to=D2)
    assert (again.vocab_version, again.created) == (2, False)
    assert vocab.latest_version(spark, cfg, SOURCE) == 2
    # Changing K would move every index: refused, naming the key.
    moved = make_config(tmp_path, *SETTINGS, "vocab.item_id.oov_buckets=5")
    with pytest.raises(ConfigError, match="vocab.item_id.oov_buckets"):
        vocab.fit(spark, moved, source=SOURCE, fit_from=D1, fit_to=D3)


def test_scoring_from_state_encodes_like_training(spark, tmp_path):
    """The nightly path (user_state -> scoring snapshot) gives the training snapshot's rows, OOV
    buckets included, with the label left null."""
    cfg = sessionized_lake(spark, tmp_path)
    vocab.fit(spark, cfg, source=SOURCE, fit_from=D1, fit_to=D1)
    v1 = vocab.load(spark, cfg, SOURCE, 1)
    sequences.build_snapshot(spark, cfg, source=SOURCE, cutoff=D3, vocabulary=v1)
    training = snapshot_rows(spark, cfg, D3, drop=["label"])
    assert state.update_state(spark, cfg, source=SOURCE, day=D1).mode == "bootstrap"
    assert state.update_state(spark, cfg, source=SOURCE, day=D2).mode == "incremental"
    # A refit after training must not change how this model's snapshot is encoded.
    vocab.fit(spark, cfg, source=SOURCE, fit_from=D1, fit_to=D3)
    sequences.build_snapshot(spark, cfg, source=SOURCE, cutoff=D3, vocabulary=v1, scoring=True)
    assert snapshot_rows(spark, cfg, D3, drop=["label"]) == training
    # A model of the new version cannot score from a state encoded with version 1.
    with pytest.raises(state.StateGap, match="--rebuild --vocab-version 2"):
        sequences.build_snapshot(spark, cfg, source=SOURCE, cutoff=D3, vocabulary=vocab.load(spark, cfg, SOURCE),
                                 scoring=True)
    assert {r["label"] for r in tables.read(spark, cfg, C.USER_SEQUENCES).collect()} == {None}


def test_training_snapshot_needs_the_label_horizon(spark, tmp_path):
    cfg = sessionized_lake(spark, tmp_path, "sequences.horizon_days=2")
    vocab.fit(spark, cfg, source=SOURCE, fit_from=D1, fit_to=D1)
    with pytest.raises(sequences.LabelHorizonNotCovered, match="up to 2024-01-04"):
        sequences.build_snapshot(spark, cfg, source=SOURCE, cutoff=D3, vocabulary=vocab.load(spark, cfg, SOURCE))


def state_rows(spark, cfg):
    return sorted(
        (r.asDict(recursive=True) for r in tables.read(spark, cfg, C.USER_STATE).collect()),
        key=lambda r: (r["source"], r["user_id"]),
    )


@pytest.mark.slow
def test_daily_state_equals_one_shot_and_reruns_change_nothing(spark, tmp_path):
    from seqlake.generate import generate
    from seqlake.ingest import ingest
    from seqlake.sources import load_source

    days = 10  # bootstrap on day 5, then five folds: enough for carries, OOV days and reruns
    cfg = make_config(tmp_path, "generator.users=150", f"generator.days={days}", "sequences.length=8")
    first = cfg.generator.start_date
    last = first + dt.timedelta(days=days - 1)
    generate(cfg.generator, cfg.lake.landing_root)
    ingest(spark, cfg, load_source(cfg.ingest.sources_dir, SOURCE), window_start=first, window_end=last)
    sessionize(spark, cfg, source=SOURCE, date_from=first, date_to=last)
    vocab.fit(spark, cfg, source=SOURCE, fit_from=first, fit_to=first + dt.timedelta(days=6))

    # Bootstrap on day 5, then fold the days in one by one.
    start = first + dt.timedelta(days=4)
    state.update_state(spark, cfg, source=SOURCE, day=start)
    with pytest.raises(state.StateGap, match=str(start + dt.timedelta(days=1))):
        state.update_state(spark, cfg, source=SOURCE, day=start + dt.timedelta(days=2))
    for offset in range(1, days - 4):
        result = state.update_state(spark, cfg, source=SOURCE, day=start + dt.timedelta(days=offset))
        assert result.mode == "incremental" and result.users_updated > 0
    incremental = state_rows(spark, cfg)

    one_shot = make_config(tmp_path / "one_shot", "sequences.length=8")
    history = tables.read(spark, cfg, C.SESSION_EVENTS).filter(f"event_date <= '{last}'")
    v = vocab.load(spark, cfg, SOURCE)
    one_shot_rows = state.history_state(vocab.with_encoded_tokens(history, v), length=8, vocab_version=v.version)
    tables.replace_where(one_shot_rows, one_shot, C.USER_STATE, "true", partition_by=[C.SOURCE])
    assert incremental == state_rows(spark, one_shot)
    assert any(len(r["item"]) == 8 for r in incremental) and any(r["daily"] for r in incremental)
    # The profile accumulators are compared too, and are not trivially equal: session time,
    # counts per category and brand, hours and weekdays, session starts per day.
    assert any(r["session_micros"] > 0 for r in incremental)
    assert any(len(r["category_counts"]) > 1 and len(r["brand_counts"]) > 1 for r in incremental)
    assert all(sum(r["hour_counts"]) == sum(r["weekday_counts"]) == r["n_events"] for r in incremental)
    assert all(sum(sum(c) for c in r["category_counts"].values()) == r["n_events"] for r in incremental)
    assert any(d["sessions"] > 0 and d["carts"] == d["purchases"] == 0 for r in incremental for d in r["daily"])
    # Some folded day began inside a session of the day before: its gap went through the carry.
    carried = history.filter(
        (F.col(C.EVENT_DATE) > F.lit(start)) & ~F.col("is_session_start")
        & (F.to_date("activity_start") < F.col(C.EVENT_DATE))
    )
    assert carried.limit(1).count() == 1
    assert {len(r[name]) for r in incremental for name in vocab.ARRAYS} <= set(range(1, 9))

    # A rerun of the last day (or an earlier one) changes nothing, not even the table version.
    version = DeltaTable.forPath(spark, cfg.table_path(C.USER_STATE)).history(1).first()["version"]
    assert state.update_state(spark, cfg, source=SOURCE, day=last).mode == "noop"
    assert state.update_state(spark, cfg, source=SOURCE, day=last - dt.timedelta(days=3)).mode == "noop"
    assert DeltaTable.forPath(spark, cfg.table_path(C.USER_STATE)).history(1).first()["version"] == version
    assert state_rows(spark, cfg) == incremental

    # Drift metrics were recorded per day and feature; the day after the fit window has OOV items.
    metrics = tables.read(spark, cfg, C.RUN_METRICS).filter("stage = 'state' AND feature = 'item_id'")
    assert metrics.count() == days - 4
    assert metrics.filter(f"run_date = '{last}'").first()["oov_share"] > 0

    # A scoring snapshot from this state is laid out for Petastorm: up to files_per_snapshot
    # Parquet files per split partition, each readable by pyarrow alone, arrays of int32 of the
    # configured length.
    import urllib.parse

    import pyarrow.parquet as pq

    v = vocab.load(spark, cfg, SOURCE)
    cutoff = last + dt.timedelta(days=1)
    result = sequences.build_snapshot(spark, cfg, source=SOURCE, cutoff=cutoff, vocabulary=v, scoring=True)
    files = (tables.read(spark, cfg, C.USER_SEQUENCES).filter(f"snapshot_date = '{cutoff}'").inputFiles())
    by_split = {s: [f for f in files if f"/split={s}/" in f] for s in ("train", "validation", "test")}
    assert sum(map(len, by_split.values())) == len(files)
    assert len(by_split["train"]) == cfg.sequences.files_per_snapshot
    assert all(1 <= len(f) <= cfg.sequences.files_per_snapshot for f in by_split.values())
    rows = 0
    for uri in files:
        table = pq.read_table(urllib.parse.urlparse(uri).path)
        assert str(table.schema.field("item").type) in ("list<element: int32>", "list<element: int32 not null>")
        assert {len(a) for a in table.column("item").to_pylist()} == {8}
        rows += table.num_rows
    assert rows == result.users == len(incremental)
