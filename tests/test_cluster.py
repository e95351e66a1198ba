"""The pipeline on a real cluster on this machine (python -m seqlake.localcluster): Spark
standalone with two worker JVMs, SeaweedFS S3, the Hive metastore in PostgreSQL.

The cluster side runs as `seqlake` subprocesses with conf/cluster.local.yaml (the session's
``spark`` fixture is local[2] with an in-memory catalog, and one Python process has one
SparkContext); the same tiny lake is also built in-process in local mode, and the two must agree.
The cluster gets a state folder of its own, so it starts empty and is torn down afterwards; it
needs the cluster's ports free (`make cluster-down` first if a developer cluster runs).
"""
from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REPO, make_config

pytestmark = pytest.mark.slow

CONF = REPO / "conf" / "cluster.local.yaml"
GENERATOR = ("generator.users=200", "generator.days=8", "generator.seed=11", "generator.workers=1")
FIRST, LAST = dt.date(2024, 1, 1), dt.date(2024, 1, 2)


@pytest.fixture(scope="module")
def cluster():
    from seqlake import localcluster

    # Under /tmp, not pytest's basetemp (mode 700): the postgres OS user must reach its data.
    state = Path(tempfile.mkdtemp(prefix="seqlake-cluster-"))
    started = time.monotonic()
    try:
        running = localcluster.up(state, history=False, mlflow=False)
        print(f"cluster up in {time.monotonic() - started:.1f} s")
        yield running
    finally:
        localcluster.down(state)
        shutil.rmtree(state, ignore_errors=True)


def _seqlake(cluster, *args: str, settings: tuple[str, ...] = (), wait: bool = True):
    env = {**os.environ, **cluster.env(), "PYSPARK_PYTHON": sys.executable}
    env.pop("PYSPARK_GATEWAY_PORT", None)
    command = [sys.executable, "-m", "seqlake.cli", "--conf", str(CONF), "--set", f"spark.master={cluster.master_url}",
               *[x for s in (*GENERATOR, *settings) for x in ("--set", s)], *args]
    if not wait:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"seqlake {' '.join(args)}: exit {done.returncode}\n{done.stdout}\n{done.stderr[-4000:]}"
    return done.stdout


def _count(output: str) -> int:
    """The single value of a one-cell `seqlake sql` table."""
    rows = [line.strip("|").strip() for line in output.splitlines() if line.startswith("|")]
    return int(rows[1])


@pytest.fixture(scope="module")
def local_sessions(spark, tmp_path_factory) -> int:
    """Sessions of the same generated days through the same stages in local mode, in-process."""
    from seqlake import constants as C
    from seqlake import tables
    from seqlake.generate import generate
    from seqlake.ingest import ingest
    from seqlake.sessionize import sessionize
    from seqlake.sources import load_source

    cfg = make_config(tmp_path_factory.mktemp("cluster-local"), *GENERATOR)
    generate(cfg.generator, cfg.lake.landing_root)
    ingest(spark, cfg, load_source(str(REPO / "conf" / "sources"), "generator"), window_start=FIRST, window_end=LAST)
    sessionize(spark, cfg, source="generator", date_from=FIRST, date_to=LAST)
    return tables.read(spark, cfg, C.SESSIONS).count()


def test_pipeline_on_the_cluster_matches_local_mode_and_is_shared_through_the_metastore(cluster, local_sessions):
    window = ("--from", FIRST.isoformat(), "--to", LAST.isoformat())
    _seqlake(cluster, "generate")  # written locally, uploaded to s3a://seqlake/landing
    assert cluster.s3().list_objects_v2(Bucket=cluster.bucket, Prefix="landing/raw/generator/dt=2024-01-01/")["KeyCount"]
    _seqlake(cluster, "ingest", *window)
    _seqlake(cluster, "sessionize", *window)

    # Two applications at once (one core each), neither of which wrote the tables: both find
    # seqlake.sessions through the PostgreSQL metastore, with the local run's count.
    query = ("sql", "SELECT count(*) FROM seqlake.sessions")
    readers = [_seqlake(cluster, *query, settings=("spark.conf.spark.cores.max=1",), wait=False) for _ in range(2)]
    outputs = []
    for reader in readers:
        out, err = reader.communicate(timeout=900)
        assert reader.returncode == 0, f"seqlake sql: exit {reader.returncode}\n{out}\n{err[-4000:]}"
        outputs.append(out)
    assert [_count(out) for out in outputs] == [local_sessions, local_sessions]
    assert local_sessions > 0

    # Every application ran its tasks on the standalone executors, and the two readers overlapped.
    master = cluster.master_state()
    assert master["aliveworkers"] == 2
    apps = sorted(master["completedapps"], key=lambda a: a["starttime"])
    assert len(apps) == 4 and all(a["state"] == "FINISHED" for a in apps), apps
    first, second = apps[-2:]
    assert second["starttime"] < first["starttime"] + first["duration"], "the two readers did not run at once"
