"""One session-scoped Spark (local[2], Delta, in-memory catalog) and per-test lake configs."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from seqlake.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
REES46 = SHARED_DATA / "rees46_sample" / "events.csv"
TAOBAO = SHARED_DATA / "taobao_sample" / "UserBehavior.csv"

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
    session = build_spark(cfg)
    yield session
    session.stop()


@pytest.fixture
def cfg(tmp_path) -> Config:
    return make_config(tmp_path)
