"""Trust under faults, on one small generated lake with pseudonymisation on:

- the Spark driver killed with SIGKILL at 12 points inside the six writing stages leaves every
  table readable at its previous version, and rerunning the day gives exactly a clean run's rows;
- two runs of a stage for different days at once both succeed; two for the same day at once end
  in one success and one explained conflict, never in mixed rows;
- a skipped night fails naming the missing day and touches nothing;
- no raw user id of the input, and never the key, in any file of the lake, its MLflow store or
  the runs' logs.

The killed runs are real ``seqlake`` processes (Python driver and its JVM, one process group);
the base lake, the clean reference and the reruns use the tests' Spark session.
"""
from __future__ import annotations

import collections
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from seqlake import cli, profiles, scoring, sequences, state, train, vocab
from seqlake import constants as C
from seqlake.generate import USER_ID_DIGITS, generate
from seqlake.ingest import ingest
from seqlake.sessionize import sessionize
from seqlake.sources import load_source

from conftest import REPO, TEST_SETTINGS, TRAIN_SETTINGS

pytestmark = pytest.mark.slow

SOURCE = "generator"
KEY_ENV = "SEQLAKE_FAULT_TEST_KEY"
KEY = "fault-test-key-1f9b3c77e2a0"  # distinctive, so that a leak is unmistakable
FIRST, BASE_LAST, DAY, NEXT_DAY = (dt.date(2024, 1, d) for d in (1, 8, 9, 10))
CUTOFFS = (dt.date(2024, 1, 4), dt.date(2024, 1, 6))  # training snapshots of the base lake
RAW_USER_ID = re.compile(rb"u\d{%d}" % USER_ID_DIGITS)
# Columns that name the run or the moment it ran; everything else must be equal after a rerun.
VOLATILE = {"run_id", "mlflow_run_id", "started_at", "finished_at", "recorded_at", "created_at"}

LAKE_SETTINGS = (
    "generator.users=600", "generator.days=10", "generator.workers=2",
    "sequences.horizon_days=2",
    "pseudonymise.enabled=true", f"pseudonymise.key_env={KEY_ENV}",
    *TRAIN_SETTINGS, "sequences.length=20", "training.epochs=1", "training.gbt_max_iter=5",
    "mlflow.registered_model=fault_test_model", "mlflow.experiment=fault_test",
)

# Each writing stage of one night (DAY), as `seqlake` arguments, with the tables it writes.
STAGES = {
    "ingest": (["ingest", "--date", str(DAY)], [C.EVENTS, C.EVENTS_QUARANTINE, C.INGEST_RUNS]),
    "sessionize": (["sessionize", "--date", str(DAY)],
                   [C.SESSION_EVENTS, C.SESSIONS, C.EVENTS_QUARANTINE, C.SESSIONIZE_RUNS]),
    # Label window [BASE_LAST, DAY]: covered once DAY is sessionized.
    "sequences": (["sequences", "--cutoff", str(BASE_LAST)], [C.USER_SEQUENCES, C.RUN_METRICS]),
    "state": (["state", "--date", str(DAY)], [C.USER_STATE, C.STATE_RUNS, C.RUN_METRICS]),
    "score": (["score", "--date", str(DAY)], [C.USER_PROPENSITY, C.SCORE_RUNS, C.RUN_METRICS]),
    "profile": (["profile", "--date", str(DAY)], [C.USER_PROFILE]),
}
# (stage, table, moment): "data" = the first new data file of the table's write appears (the
# commit has not happened); "commit" = the table's new commit appears (the run dies between the
# commits of two tables, before its run record).
KILL_POINTS = [
    ("ingest", C.EVENTS, "data"),
    ("ingest", C.EVENTS, "commit"),
    ("sessionize", C.SESSION_EVENTS, "data"),
    ("sessionize", C.SESSION_EVENTS, "commit"),
    ("sessionize", C.SESSIONS, "data"),
    ("sequences", C.USER_SEQUENCES, "data"),
    ("state", C.USER_STATE, "data"),
    ("state", C.USER_STATE, "commit"),
    ("score", C.USER_PROPENSITY, "data"),
    ("score", C.USER_PROPENSITY, "commit"),
    ("profile", C.USER_PROFILE, "data"),
    ("profile", C.USER_PROFILE, "commit"),
]


def lake_args(root: Path, landing: Path, empty_conf: Path) -> list[str]:
    """``seqlake`` global arguments equal to ``make_config``'s settings for the lake at root."""
    settings = [*TEST_SETTINGS, f"lake.root={root}", f"lake.landing_root={landing}",
                f"ingest.sources_dir={REPO / 'conf' / 'sources'}", *LAKE_SETTINGS]
    return ["--conf", str(empty_conf), *[x for s in settings for x in ("--set", s)]]


class Lake:
    """One lake folder (with its MLflow store) sharing the base's landing."""

    def __init__(self, root: Path, landing: Path, empty_conf: Path):
        self.root = root
        self.args = lake_args(root, landing, empty_conf)
        self.cfg = cli.load_config(str(empty_conf), self.args[3::2])

    def tables(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / "_delta_log").is_dir())

    def run(self, *argv: str) -> int:
        """A stage in this process (the tests' Spark session)."""
        return cli.main([*self.args, *argv])

    def version(self, table: str) -> int:
        log = self.root / table / "_delta_log"
        return max((int(p.stem) for p in log.glob("*.json")), default=-1)

    def data_files(self, table: str) -> set[str]:
        base = self.root / table
        return {str(p) for p in base.rglob("*.parquet") if "_delta_log" not in p.parts}


@pytest.fixture(scope="module")
def base(spark, tmp_path_factory):
    """A lake through BASE_LAST: ingested, sessionized, a vocabulary, two snapshots, a champion,
    the state, scores and profiles of BASE_LAST. Returns (folder, landing, empty conf)."""
    os.environ[KEY_ENV] = KEY
    root = tmp_path_factory.mktemp("faults")
    empty_conf = root / "empty.yaml"
    empty_conf.write_text("{}\n")
    landing = root / "landing"
    lake = Lake(root / "base", landing, empty_conf)
    cfg = lake.cfg
    generate(cfg.generator, cfg.lake.landing_root)
    ingest(spark, cfg, load_source(cfg.ingest.sources_dir, SOURCE), window_start=FIRST, window_end=BASE_LAST)
    sessionize(spark, cfg, source=SOURCE, date_from=FIRST, date_to=BASE_LAST)
    vocab.fit(spark, cfg, source=SOURCE, fit_from=FIRST, fit_to=CUTOFFS[0])
    v = vocab.load(spark, cfg, SOURCE)
    for cutoff in CUTOFFS:
        sequences.build_snapshot(spark, cfg, source=SOURCE, cutoff=cutoff, vocabulary=v)
    assert train.train(spark, cfg, source=SOURCE).promoted
    state.update_state(spark, cfg, source=SOURCE, day=BASE_LAST)
    scoring.score(spark, cfg, source=SOURCE, day=BASE_LAST)
    profiles.build_profiles(spark, cfg, source=SOURCE, day=BASE_LAST)
    yield root, landing, empty_conf
    os.environ.pop(KEY_ENV, None)


def copy_lake(base, name: str) -> Lake:
    root, landing, empty_conf = base
    shutil.copytree(root / "base", root / name)
    return Lake(root / name, landing, empty_conf)


def canonical_rows(spark, lake: Lake, table: str, version: int | None = None) -> collections.Counter:
    """The table's rows as a multiset of canonical JSON (map keys sorted), volatile columns dropped."""
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    df = reader.load(str(lake.root / table))
    df = df.drop(*[c for c in df.columns if c in VOLATILE])
    return collections.Counter(json.dumps(json.loads(row), sort_keys=True) for row in df.toJSON().collect())


def fingerprint(spark, lake: Lake, table: str, version: int) -> tuple[int, int]:
    """(rows, sum of row hashes) of one version: cheap, and equal only for equal contents."""
    import pyspark.sql.functions as F

    df = spark.read.format("delta").option("versionAsOf", version).load(str(lake.root / table))
    row = df.agg(F.count(F.lit(1)).alias("n"),
                 F.sum(F.xxhash64(F.to_json(F.struct(*df.columns))).cast("decimal(38,0)")).alias("h")).first()
    return row["n"], int(row["h"] or 0)


def _launch(lake: Lake, argv: list[str], log_path: Path) -> subprocess.Popen:
    """``seqlake <argv>`` as a real process (its JVM a child in the same, new process group),
    appending its output to ``log_path``."""
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "seqlake.cli", *lake.args, *argv],
                                env={**os.environ, "PYSPARK_PYTHON": sys.executable},
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def run_and_kill(lake: Lake, argv: list[str], table: str, moment: str, log_path: Path) -> None:
    """Start ``seqlake <argv>`` in its own process group; SIGKILL the whole group (Python driver
    and JVM) the moment ``table`` gets its first new data file, or its next commit."""
    files_before = lake.data_files(table) if (lake.root / table).exists() else set()
    version_before = lake.version(table) if (lake.root / table).exists() else -1
    proc = _launch(lake, argv, log_path)
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{argv} ended (exit {proc.returncode}) before {table} {moment}; log {log_path}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"{argv}: no {moment} of {table} within 300 s")
        if (lake.root / table).exists():
            reached = (lake.data_files(table) - files_before) if moment == "data" else (
                lake.version(table) > version_before)
            if reached:
                break
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for _ in range(100):  # the JVM dies with the group; wait until the kernel has reaped it
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)


def logs_dir(base) -> Path:
    """The runs' logs live beside the lakes, so that the privacy scan reads them too."""
    path = base[0] / "logs"
    path.mkdir(exist_ok=True)
    return path


def test_kill_9_at_twelve_points_then_a_rerun_equals_a_clean_run(spark, base):
    reference = copy_lake(base, "reference")
    for name, (argv, _) in STAGES.items():
        assert reference.run(*argv) == 0, name
    faulty = copy_lake(base, "faulty")
    log_path = logs_dir(base) / "killed.log"

    for name, (argv, written) in STAGES.items():
        for stage_name, table, moment in [p for p in KILL_POINTS if p[0] == name]:
            versions = {t: faulty.version(t) for t in faulty.tables()}
            prints = {t: fingerprint(spark, faulty, t, versions[t]) for t in written if t in versions}
            files = {t: faulty.data_files(t) for t in written if t in versions}
            run_and_kill(faulty, argv, table, moment, log_path)

            # Every table is readable, and at its previous version holds what it held.
            for t, v in versions.items():
                spark.read.format("delta").load(str(faulty.root / t)).count()
                if t in prints:
                    assert fingerprint(spark, faulty, t, v) == prints[t], (stage_name, table, moment, t)
                else:
                    assert faulty.version(t) == v, f"{stage_name} changed {t}, which it does not write"
            if moment == "data":
                # Killed mid-write: the files are there, the commit is not.
                assert faulty.version(table) == versions.get(table, -1), (stage_name, table)
                assert faulty.data_files(table) - files.get(table, set()), (stage_name, table)
            else:
                assert faulty.version(table) == versions[table] + 1, (stage_name, table)
        assert faulty.run(*argv) == 0, f"rerun of {name} after its kills"

    assert faulty.tables() == reference.tables()
    for t in reference.tables():
        assert canonical_rows(spark, faulty, t) == canonical_rows(spark, reference, t), t


def test_concurrent_runs_different_days_both_succeed_same_day_one_conflicts_cleanly(spark, base):
    lake = copy_lake(base, "concurrent")
    tmp_path = logs_dir(base)

    def both(first: list[str], second: list[str], name: str) -> None:
        logs = [tmp_path / f"{name}-{i}.log" for i in (0, 1)]
        procs = [_launch(lake, argv, log) for argv, log in zip((first, second), logs)]
        assert [p.wait() for p in procs] == [0, 0], [log.read_text()[-2000:] for log in logs]

    # Two training snapshots at once (rebuilt: the base lake holds both): both succeed, and the
    # table equals the serial result.
    snapshots = canonical_rows(spark, lake, C.USER_SEQUENCES)
    both(["sequences", "--cutoff", str(CUTOFFS[0])], ["sequences", "--cutoff", str(CUTOFFS[1])], "sequences")
    assert canonical_rows(spark, lake, C.USER_SEQUENCES) == snapshots

    # Two days' ingest at once: both succeed, and each day equals a serial rerun of it.
    both(["ingest", "--date", str(DAY)], ["ingest", "--date", str(NEXT_DAY)], "ingest")
    together = canonical_rows(spark, lake, C.EVENTS)
    assert lake.run("ingest", "--from", str(DAY), "--to", str(NEXT_DAY)) == 0
    assert canonical_rows(spark, lake, C.EVENTS) == together
    expected = together

    # The same day at once: Delta lets one commit; the other stops with exit 4 and says why.
    # (If the two happen not to overlap, both succeed as a rerun would; try again.)
    for attempt in range(4):
        logs = [tmp_path / f"same-{attempt}-{i}.log" for i in (0, 1)]
        procs = [_launch(lake, ["ingest", "--date", str(DAY)], log) for log in logs]
        codes = sorted(p.wait() for p in procs)
        assert canonical_rows(spark, lake, C.EVENTS) == expected, "mixed or duplicated rows"
        if codes != [0, 0]:
            break
    assert codes == [0, cli.EXIT_CONFLICT], [log.read_text()[-3000:] for log in logs]
    loser = next(log.read_text() for log in logs if "conflict:" in log.read_text())
    message = [line for line in loser.splitlines() if "seqlake ingest: conflict:" in line]
    assert message and "another run committed to the same table" in message[0]
    assert "Concurrent" in message[0] or "DELTA_CONCURRENT" in message[0], message[0]
    assert "Traceback" not in loser


def test_a_skipped_night_fails_naming_the_missing_day_and_touches_nothing(spark, base, capsys):
    lake = copy_lake(base, "skipped")
    assert lake.run("ingest", "--date", str(NEXT_DAY)) == 0  # DAY never arrives
    capsys.readouterr()
    versions = {t: lake.version(t) for t in lake.tables()}
    for argv in (["sessionize", "--date", str(NEXT_DAY)], ["state", "--date", str(NEXT_DAY)],
                 ["score", "--date", str(NEXT_DAY)], ["profile", "--date", str(NEXT_DAY)]):
        assert lake.run(*argv) == cli.EXIT_DATA, argv
        err = capsys.readouterr().err
        assert str(DAY) in err or str(NEXT_DAY) in err, (argv, err)
        assert {t: lake.version(t) for t in lake.tables()} == versions, argv
    # Catching up night by night works.
    for argv in (["ingest", "--date", str(DAY)], ["sessionize", "--from", str(DAY), "--to", str(NEXT_DAY)],
                 ["state", "--date", str(DAY)], ["state", "--date", str(NEXT_DAY)],
                 ["score", "--date", str(NEXT_DAY)], ["profile", "--date", str(NEXT_DAY)]):
        assert lake.run(*argv) == 0, argv


def _raw_user_ids(landing: Path) -> set[bytes]:
    ids: set[bytes] = set()
    for path in (landing / "raw").rglob("*.jsonl"):
        ids.update(RAW_USER_ID.findall(path.read_bytes()))
    return ids


def _leaks_in_file(path: Path, raw_ids: set[bytes]) -> set[bytes]:
    """Raw ids and the key found in one file: Parquet decoded column by column (its pages are
    compressed), zip archives member by member, anything else (and the truncated Parquet files
    of killed writes) as bytes."""
    import pyarrow
    import pyarrow.parquet as pq

    blob = None
    if path.suffix == ".parquet":
        try:
            blob = json.dumps(pq.read_table(path).to_pylist(), default=str).encode()
        except (pyarrow.ArrowInvalid, OSError):
            pass  # a killed write's truncated file: no reader can open it; scanned as bytes
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            blob = b"\n".join(archive.read(name) for name in archive.namelist())
    if blob is None:
        blob = path.read_bytes()
    found = set(RAW_USER_ID.findall(blob)) & raw_ids
    if KEY.encode() in blob:
        found.add(b"<the key>")
    return found


def test_no_raw_user_id_or_key_in_any_lake_file_mlflow_artifact_or_log(spark, base):
    root, landing, _ = base
    # After the other tests: the base, reference, faulty and other lakes, with their MLflow
    # stores, the orphan files of killed writes, and the killed runs' logs.
    raw_ids = _raw_user_ids(landing)
    assert len(raw_ids) > 100  # the scan looks for something that is there to find
    scanned, leaks = 0, {}
    for path in [p for p in root.rglob("*") if p.is_file() and landing not in p.parents]:
        found = _leaks_in_file(path, raw_ids)
        scanned += 1
        if found:
            leaks[str(path.relative_to(root))] = sorted(found)[:3]
    assert scanned > 200
    assert not leaks, leaks
    # MLflow params and tags, through its API too.
    import mlflow

    from seqlake import tracking

    tracking.setup(Lake(root / "base", landing, root / "empty.yaml").cfg)
    client = mlflow.MlflowClient()
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            text = json.dumps([run.data.params, run.data.tags]).encode()
            assert KEY.encode() not in text and not (set(RAW_USER_ID.findall(text)) & raw_ids)
