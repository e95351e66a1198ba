"""One session-scoped Spark (local[2], Delta, in-memory catalog) and per-test lake configs."""
from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path

import pytest

from seqlake.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
REES46 = SHARED_DATA / "rees46_sample" / "events.csv"
TAOBAO = SHARED_DATA / "taobao_sample" / "UserBehavior.csv"

# The JVMs of the tests' many short Spark applications (every `seqlake` process, Airflow task and
# README command) compile with C1 only and collect with the serial collector: that halves a short
# JVM's CPU on two cores (measured: 64 s -> 33 s for a start, a Delta write and four reads).
# Speed only; what the jobs compute is the same. Each worker's own session keeps the defaults.
TEST_JVM_OPTS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
if TEST_JVM_OPTS not in os.environ.get("SPARK_SUBMIT_OPTS", ""):
    os.environ["SPARK_SUBMIT_OPTS"] = f"{os.environ.get('SPARK_SUBMIT_OPTS', '')} {TEST_JVM_OPTS}".strip()

TEST_SETTINGS = [
    "spark.master=local[2]",
    "spark.shuffle_partitions=2",
    "spark.driver_memory=2g",
    "lake.catalog=in_memory",
    "ingest.files_per_day=2",
    "spark.conf.spark.ui.enabled=false",
    "spark.conf.spark.ui.showConsoleProgress=false",
    "spark.conf.spark.driver.host=127.0.0.1",
    "spark.conf.spark.driver.bindAddress=127.0.0.1",
    "spark.conf.spark.sql.adaptive.enabled=true",
    "spark.conf.spark.databricks.delta.snapshotPartitions=2",
    "spark.conf.spark.default.parallelism=2",
]


def make_config(root: Path, *overrides: str) -> Config:
    """Defaults plus test settings, with the lake (and landing) under ``root``."""
    return load_config(
        None,
        [
            *TEST_SETTINGS,
            f"lake.root={root / 'lake'}",
            f"lake.landing_root={root / 'landing'}",
            f"ingest.sources_dir={REPO / 'conf' / 'sources'}",
            *overrides,
        ],
    )


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from seqlake.spark import build_spark

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    cfg = make_config(tmp_path_factory.mktemp("spark"))
    # This JVM does the in-process work of the whole run, where C2's faster code should pay back
    # (the fault and signal lakes looked slower with C1 in a fresh-clone run; not measured A/B).
    flags = os.environ["SPARK_SUBMIT_OPTS"]
    os.environ["SPARK_SUBMIT_OPTS"] = flags.replace(TEST_JVM_OPTS, "").strip()
    try:
        session = build_spark(cfg)
    finally:
        os.environ["SPARK_SUBMIT_OPTS"] = flags
    yield session
    session.stop()


@pytest.fixture
def cfg(tmp_path) -> Config:
    return make_config(tmp_path)


# The lake with the generator's planted signal that training and scoring tests share (built
# once per session: generation, ingestion and snapshots take minutes).
SIGNAL_USERS = 10000  # ~930 test users, ~100 buyers at the label window: AUC noise about +-0.02
SIGNAL_START = dt.date(2024, 1, 1)
SIGNAL_DAYS = 28
CUTOFFS = [dt.date(2024, 1, 8), dt.date(2024, 1, 15), dt.date(2024, 1, 22)]  # the last = label window start
# Small and quick. The planted signal is in recurrence flags and event ages, not in which item
# it is: id embeddings this wide only give ~19k training rows something to memorise. 100
# events reach back far enough for most carts that are revisited (50 lose some).
TRAIN_SETTINGS = ("training.epochs=10", "training.patience=3", "training.batch_size=128",
                  "model.lstm_units=[16]", "model.dense_units=[8]", "model.item_embedding_dim=1",
                  "model.embedding_dim=2", "model.dropout=0.1", "sequences.length=100")


@pytest.fixture(scope="session")
def signal_lake(spark, tmp_path_factory):
    """(config, generator summary): 10k generated users over 28 days, ingested, sessionized, a
    vocabulary fitted on the first week and labelled snapshots at ``CUTOFFS``."""
    from seqlake import sequences, vocab
    from seqlake.generate import generate
    from seqlake.ingest import ingest
    from seqlake.sessionize import sessionize
    from seqlake.sources import load_source

    root = tmp_path_factory.mktemp("signal")
    cfg = make_config(root, f"generator.users={SIGNAL_USERS}", f"generator.days={SIGNAL_DAYS}",
                      "generator.workers=2", *TRAIN_SETTINGS)
    summary = generate(cfg.generator, cfg.lake.landing_root)
    spec = load_source(str(REPO / "conf" / "sources"), "generator")
    end = SIGNAL_START + dt.timedelta(days=SIGNAL_DAYS - 1)
    ingest(spark, cfg, spec, window_start=SIGNAL_START, window_end=end)
    sessionize(spark, cfg, source="generator", date_from=SIGNAL_START, date_to=end)
    vocab.fit(spark, cfg, source="generator", fit_from=SIGNAL_START, fit_to=CUTOFFS[0])
    v = vocab.load(spark, cfg, "generator")
    for cutoff in CUTOFFS:
        sequences.build_snapshot(spark, cfg, source="generator", cutoff=cutoff, vocabulary=v)
    return cfg, summary


# Minutes each long test group takes on a busy two-worker run (estimated from a fresh-clone run's
# timestamps); the rest take a few minutes each.
LONG_GROUPS = {"test_readme_paths": 40, "test_faults": 40, "signal_lake": 30, "test_cluster": 10}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups into node ids
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``--dist loadgroup``), a module's tests stay on one worker, so its
    module fixtures (lakes, Airflow homes) are built once; the modules that share the session's
    ``signal_lake`` stay together for the same reason."""
    signal_modules = {item.module.__name__ for item in items if "signal_lake" in item.fixturenames}
    group = {}
    for item in items:
        module = item.module.__name__
        group[item] = "signal_lake" if module in signal_modules else module
        item.add_marker(pytest.mark.xdist_group(group[item]))
    # The longest groups first (`make test` passes --no-loadscope-reorder so xdist keeps this
    # order): two workers then end together instead of one waiting on a long group started last.
    items.sort(key=lambda item: -LONG_GROUPS.get(group[item], 0))
