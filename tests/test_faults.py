"""Trust under faults, on one small generated lake with pseudonymisation on and dirty input:

- the Spark driver killed with SIGKILL at one point inside each of the ten writing commands of a
  night and a week (the six nightly stages, `train`, `promote`, `vocab fit`, `housekeeping`) leaves
  every table readable at its previous version and the MLflow registry usable; rerunning the
  command gives exactly a clean run's rows, and audit rows that describe the data;
- two runs of a stage for different days at once both succeed; two for the same day at once end
  in one success and one explained conflict, never in mixed rows;
- a skipped night fails naming the first missing day and the command that mends it, touches
  nothing, and following those commands in order mends it;
- no raw user id of the input (quarantined lines included), and never the key or its HMAC pads,
  in any file of the lakes, their MLflow stores, the Spark event logs or the runs' logs.

The killed runs are real ``seqlake`` processes (Python driver and its JVM, one process group),
as are the base lake's ingest and the concurrent runs, all with Spark event logs on; the rest of
the base lake, the clean reference and the reruns use the tests' Spark session.
"""
from __future__ import annotations

import collections
import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Callable

import pytest

from seqlake import cli, profiles, scoring, sequences, state, tracking, train, vocab
from seqlake import constants as C
from seqlake.generate import USER_ID_DIGITS, generate
from seqlake.sessionize import sessionize

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

MODEL = "fault_test_model"
LAKE_SETTINGS = (
    # Dirty lines of every kind the generator writes (quarantined, each with a raw user id).
    "generator.users=600", "generator.days=10", "generator.workers=2", "generator.dirty_rate=0.01",
    "sequences.horizon_days=2",
    "pseudonymise.enabled=true", f"pseudonymise.key_env={KEY_ENV}",
    *TRAIN_SETTINGS, "sequences.length=20", "training.epochs=1", "training.gbt_max_iter=5",
    # The base's snapshots: the one at BASE_LAST (2-day label, 600 users) may have a validation
    # split without a buyer.
    f"training.cutoffs=[{CUTOFFS[0]},{CUTOFFS[1]}]",
    f"mlflow.registered_model={MODEL}", "mlflow.experiment=fault_test",
)
# The `seqlake` processes write Spark event logs under <test root>/eventlogs, uncompressed:
# Spark 4 compresses them with zstd by default, and a killed run's log then ends in a block no
# decoder can read, so the scan would miss what the run wrote last. What is logged is the same.
EVENT_LOG_SETTINGS = ("spark.conf.spark.eventLog.enabled=true", "spark.conf.spark.eventLog.compress=false")

# Each writing command of one night (DAY) and of the weekly jobs after it, in order, as
# `seqlake` arguments, with the tables it writes (train and promote write only to MLflow).
STAGES = {
    "ingest": (["ingest", "--date", str(DAY)], [C.EVENTS, C.EVENTS_QUARANTINE, C.INGEST_RUNS]),
    "sessionize": (["sessionize", "--date", str(DAY)],
                   [C.SESSION_EVENTS, C.SESSIONS, C.EVENTS_QUARANTINE, C.SESSIONIZE_RUNS]),
    # Label window [BASE_LAST, DAY]: covered once DAY is sessionized.
    "sequences": (["sequences", "--cutoff", str(BASE_LAST)], [C.USER_SEQUENCES, C.RUN_METRICS]),
    "state": (["state", "--date", str(DAY)], [C.USER_STATE, C.STATE_RUNS, C.RUN_METRICS]),
    "score": (["score", "--date", str(DAY)], [C.USER_PROPENSITY, C.SCORE_RUNS, C.RUN_METRICS]),
    "profile": (["profile", "--date", str(DAY)], [C.USER_PROFILE]),
    # Weekly: a candidate on the snapshots of vocab version 1 (BASE_LAST's among them), judged
    # against no champion (`prepare`), so that the gate's decision and its alias move are certain.
    "train": (["train", "--no-promote"], []),
    "promote": (["promote"], []),
    # Version 2: the items first seen after the first fit's window.
    "vocab": (["vocab", "fit", "--date", str(DAY)], [C.VOCAB, C.VOCAB_VERSIONS]),
    # OPTIMIZE only: VACUUM deletes nothing younger than its 7 days' retention here.
    "housekeeping": (["housekeeping", "--date", str(DAY), "--tables", f"{C.EVENTS},{C.USER_STATE}",
                      "--no-vacuum"], [C.EVENTS, C.USER_STATE]),
}
REGISTRY = "registry"  # the lake's MLflow model registry, as a kill point's target
# (stage, target, moment). For a table: "data" = the first new data file of the table's write
# appears (the commit has not happened); "commit" = the table's new commit appears (the run dies
# between the commits of two tables, before its run record). For the registry: "version" = a new
# model version is registered; "alias" = the alias `champion` moves (before the decision is
# recorded).
# One point a command (each a real process: a JVM start and the work up to the point, the test's
# largest cost); "data" in three stages, "commit" in five, the registry's two moments.
KILL_POINTS = [
    ("ingest", C.EVENTS, "commit"),  # events committed, quarantine and ingest_runs not yet
    ("sessionize", C.SESSION_EVENTS, "commit"),  # session_events committed, sessions not yet
    ("sequences", C.USER_SEQUENCES, "data"),
    ("state", C.USER_STATE, "commit"),  # between the MERGE and the state_runs record
    ("score", C.USER_PROPENSITY, "data"),
    ("profile", C.USER_PROFILE, "data"),
    ("train", REGISTRY, "version"),
    ("promote", REGISTRY, "alias"),
    ("vocab", C.VOCAB, "commit"),  # the tokens of version 2 committed, vocab_versions not yet
    ("housekeeping", C.EVENTS, "commit"),  # OPTIMIZE committed, user_state not yet touched
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
        # For `seqlake` processes: Spark event logs beside the lakes, so that the scan reads them.
        self.event_logs = landing.parent / "eventlogs"
        event_logs = (*EVENT_LOG_SETTINGS, f"spark.conf.spark.eventLog.dir={self.event_logs}")
        self.process_args = [*self.args, *[x for s in event_logs for x in ("--set", s)]]

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


def _add_dirty_lines(folder: Path) -> None:
    """Lines the generator does not write, each quarantined, each holding raw user ids of the
    day: invalid UTF-8, a nested user id, a record over the size limit, and a user id under an
    unknown key (the user id itself missing)."""
    good = [json.loads(line) for line in sorted(folder.glob("part-*.jsonl"))[0].read_text().splitlines()[:4]]
    latin1 = json.dumps({**good[0], "brand": "caf\u00e9"}, ensure_ascii=False).encode("latin-1")
    nested = json.dumps({**good[1], "user_id": {"id": good[1]["user_id"], "also": [good[0]["user_id"]]}}).encode()
    huge = json.dumps({**good[2], "category_path": "x" * 20000}).encode()
    renamed = {k: v for k, v in good[3].items() if k != "user_id"} | {"customer": good[3]["user_id"]}
    (folder / "extra-dirty.jsonl").write_bytes(b"\n".join([latin1, nested, huge, json.dumps(renamed).encode()]) + b"\n")


@pytest.fixture(scope="module")
def base(spark, tmp_path_factory):
    """A lake through BASE_LAST: ingested (by a `seqlake` process), sessionized, a vocabulary,
    two snapshots, a champion, the state, scores and profiles of BASE_LAST. Returns (folder,
    landing, empty conf)."""
    os.environ[KEY_ENV] = KEY
    root = tmp_path_factory.mktemp("faults")
    empty_conf = root / "empty.yaml"
    empty_conf.write_text("{}\n")
    landing = root / "landing"
    lake = Lake(root / "base", landing, empty_conf)
    lake.event_logs.mkdir()
    cfg = lake.cfg
    generate(cfg.generator, cfg.lake.landing_root)
    for day in (FIRST + dt.timedelta(days=1), DAY):
        _add_dirty_lines(Path(cfg.landing_path(SOURCE, day)))
    (root / "logs").mkdir()
    proc = _launch(lake, ["ingest", "--from", str(FIRST), "--to", str(BASE_LAST)], root / "logs" / "base-ingest.log")
    assert proc.wait() == 0, (root / "logs" / "base-ingest.log").read_text()[-3000:]
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
    with Spark event logs on, appending its output to ``log_path``."""
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "seqlake.cli", *lake.process_args, *argv],
                                env={**os.environ, "PYSPARK_PYTHON": sys.executable},
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def registry(lake: Lake) -> tuple[int, int | None, str | None]:
    """(newest model version, the champion's version, the newest version's `promotion` tag) of
    the lake's registry, read from its sqlite file directly: cheap enough to poll while a killed
    run writes it."""
    db = lake.root / "_mlflow" / "mlflow.db"
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as con:
        newest = con.execute("SELECT max(version) FROM model_versions WHERE name = ?", (MODEL,)).fetchone()[0] or 0
        alias = con.execute("SELECT version FROM registered_model_aliases WHERE name = ? AND alias = ?",
                            (MODEL, tracking.CHAMPION)).fetchone()
        tag = con.execute("SELECT value FROM model_version_tags WHERE name = ? AND version = ? AND key = 'promotion'",
                          (MODEL, newest)).fetchone()
    return newest, alias[0] if alias else None, tag[0] if tag else None


def moment(lake: Lake, target: str, when: str) -> tuple[Callable[[], bool], float]:
    """(whether the moment has come, how often to look) for a kill point; see KILL_POINTS."""
    if target == REGISTRY:
        index = {"version": 0, "alias": 1}[when]
        before = registry(lake)[index]
        # The alias moves a few registry writes before the decision is recorded: look often.
        return (lambda: registry(lake)[index] != before), 0.002
    files_before = lake.data_files(target) if (lake.root / target).exists() else set()
    version_before = lake.version(target) if (lake.root / target).exists() else -1

    def reached() -> bool:
        if not (lake.root / target).exists():
            return False
        if when == "data":
            return bool(lake.data_files(target) - files_before)
        return lake.version(target) > version_before

    return reached, 0.01


def run_and_kill(lake: Lake, argv: list[str], target: str, when: str, log_path: Path) -> None:
    """Start ``seqlake <argv>`` in its own process group; SIGKILL the whole group (Python driver
    and JVM) at the kill point (``target``, ``when``)."""
    reached, every = moment(lake, target, when)
    proc = _launch(lake, argv, log_path)
    deadline = time.monotonic() + 300
    while not reached():
        if proc.poll() is not None:
            pytest.fail(f"{argv} ended (exit {proc.returncode}) before {target} {when}; log {log_path}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"{argv}: no {when} of {target} within 300 s")
        time.sleep(every)
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


def prepare(lake: Lake, name: str) -> None:
    """What a stage needs before it runs, in the reference and the faulty lake alike: `promote`
    judges its candidate against no champion, so that it certainly promotes (and moves the alias)."""
    from mlflow import MlflowClient

    if name == "promote":
        tracking.setup(lake.cfg)
        MlflowClient().delete_registered_model_alias(MODEL, tracking.CHAMPION)


def assert_registry_usable(lake: Lake, name: str) -> None:
    """The registry after ``name`` ran (or was killed and rerun): every version carries its
    provenance, the champion is one scoring accepts and its files are there, and the newest
    version's recorded decision agrees with the alias."""
    import mlflow
    from mlflow import MlflowClient

    tracking.setup(lake.cfg)
    versions = MlflowClient().search_model_versions(f"name = '{MODEL}'")
    for v in versions:
        assert {"source", "vocab_version", "eval_cutoff"} <= v.tags.keys(), (name, v.version, v.tags)
    champion = scoring.champion(lake.cfg, SOURCE)
    assert (Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}/{champion.version}")) / "MLmodel").exists()
    newest = max(versions, key=lambda v: int(v.version))
    decision = newest.tags.get("promotion")
    if name == "promote":
        assert decision == "promoted" and champion.version == str(newest.version), (decision, champion, newest)
    elif name == "train":
        assert decision == train.PENDING, decision


def test_kill_9_at_every_point_then_a_rerun_equals_a_clean_run(spark, base):
    reference = copy_lake(base, "reference")
    for name, (argv, _) in STAGES.items():
        prepare(reference, name)
        assert reference.run(*argv) == 0, name
        if name in ("train", "promote"):
            assert_registry_usable(reference, name)
    faulty = copy_lake(base, "faulty")
    log_path = logs_dir(base) / "killed.log"

    for name, (argv, written) in STAGES.items():
        prepare(faulty, name)
        for stage_name, target, when in [p for p in KILL_POINTS if p[0] == name]:
            versions = {t: faulty.version(t) for t in faulty.tables()}
            prints = {t: fingerprint(spark, faulty, t, versions[t]) for t in written if t in versions}
            files = {t: faulty.data_files(t) for t in written if t in versions}
            run_and_kill(faulty, argv, target, when, log_path)

            # Every table is readable, and at its previous version holds what it held.
            for t, v in versions.items():
                spark.read.format("delta").load(str(faulty.root / t)).count()
                if t in prints:
                    assert fingerprint(spark, faulty, t, v) == prints[t], (stage_name, target, when, t)
                else:
                    assert faulty.version(t) == v, f"{stage_name} changed {t}, which it does not write"
            if target == REGISTRY:
                print(f"killed {stage_name} at the registry's {when}: newest version, champion, its decision "
                      f"= {registry(faulty)}")
            elif when == "data":
                # Killed mid-write: the files are there, the commit is not.
                assert faulty.version(target) == versions.get(target, -1), (stage_name, target)
                assert faulty.data_files(target) - files.get(target, set()), (stage_name, target)
            else:
                assert faulty.version(target) == versions[target] + 1, (stage_name, target)
            if (stage_name, target, when) == ("state", C.USER_STATE, "commit"):
                # Housekeeping runs before the night is rerun: user_state's latest commit is then
                # not the killed run's MERGE, and the rerun's MERGE changes nothing (its guard).
                # The rerun must still record what the night folded.
                assert faulty.run("housekeeping", "--date", str(DAY), "--tables", C.USER_STATE, "--no-vacuum") == 0
                assert faulty.version(C.USER_STATE) > versions[C.USER_STATE] + 1
        assert faulty.run(*argv) == 0, f"rerun of {name} after its kills"

        # The audit rows describe the data, as a clean run's do (the killed runs wrote none).
        for t in [t for t in written if t.endswith("_runs")]:
            assert canonical_rows(spark, faulty, t) == canonical_rows(spark, reference, t), (name, t)
        if name == "state":
            night = f"state_date = '{DAY}'"
            rows = [spark.read.format("delta").load(str(lake.root / C.STATE_RUNS)).filter(night)
                    .select("mode", "events_in", "users_updated", "users_total").collect()
                    for lake in (faulty, reference)]
            assert rows[0] == rows[1] and len(rows[0]) == 1 and rows[0][0]["users_updated"] > 0, rows
        if name in ("train", "promote"):
            assert_registry_usable(faulty, name)
        if name == "vocab":
            assert vocab.load(spark, faulty.cfg, SOURCE).version == 2

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


ADVICE = re.compile(r"run `(seqlake [^`]+)`")


def advised(message: str) -> str:
    """The one command a refusal advises (each names exactly one)."""
    commands = ADVICE.findall(message)
    assert len(commands) == 1, message
    return commands[0]


def test_a_skipped_night_fails_naming_the_missing_day_and_touches_nothing(spark, base, capsys):
    lake = copy_lake(base, "skipped")
    assert lake.run("ingest", "--date", str(NEXT_DAY)) == 0  # DAY never arrives
    capsys.readouterr()
    versions = {t: lake.version(t) for t in lake.tables()}
    first_step = f"seqlake ingest --source {SOURCE} --date {DAY}"
    # Every stage of NEXT_DAY, and the fold of DAY itself (which would record an empty day),
    # names DAY and the first step it lacks, and writes nothing.
    for argv in (["sessionize", "--date", str(NEXT_DAY)], ["state", "--date", str(NEXT_DAY)],
                 ["score", "--date", str(NEXT_DAY)], ["profile", "--date", str(NEXT_DAY)],
                 ["state", "--date", str(DAY)]):
        assert lake.run(*argv) == cli.EXIT_DATA, argv
        err = capsys.readouterr().err
        assert advised(err) == first_step and f"was never ingested for {DAY}" in err, (argv, err)
        assert {t: lake.version(t) for t in lake.tables()} == versions, argv
    # The night's check fails the same way: each failed check names that step.
    assert lake.run("check", "--date", str(NEXT_DAY)) == cli.EXIT_DATA
    failed = [line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("FAIL")]
    assert [line.split()[1] for line in failed] == ["sessionize", "state", "score", "profile"], failed
    assert all(advised(line) == first_step for line in failed), failed
    # Following the advice mends the night: each refusal names the next step, and running
    # exactly those commands in order lets the night's scoring and profiles succeed.
    followed = []
    while (code := lake.run("score", "--date", str(NEXT_DAY))) == cli.EXIT_DATA and len(followed) < 8:
        command = advised(capsys.readouterr().err)
        followed.append(command)
        assert lake.run(*command.split()[1:]) == 0, (command, capsys.readouterr().err)
    assert code == 0
    assert followed == [first_step, *[f"seqlake {stage} --source {SOURCE} --date {day}" for stage, day in (
        ("sessionize", DAY), ("state", DAY), ("sessionize", NEXT_DAY), ("state", NEXT_DAY))]]
    assert lake.run("profile", "--date", str(NEXT_DAY)) == 0
    assert lake.run("check", "--date", str(NEXT_DAY)) == 0


def test_nightly_in_one_application_writes_what_the_separate_commands_write(spark, base):
    """`seqlake nightly` for DAY and NEXT_DAY against the stages run one command at a time; the
    second night evaluates BASE_LAST's scores (horizon 2 days), the first has none to evaluate."""
    separate, nightly = copy_lake(base, "separate"), copy_lake(base, "nightly")
    for day in (DAY, NEXT_DAY):
        for stage in ("ingest", "sessionize", "state", "score", "profile"):
            assert separate.run(stage, "--date", str(day)) == 0, (stage, day)
        # As the nightly DAG's task runs it: DAY completes no scored day's horizon (nothing to do,
        # exit 0), NEXT_DAY completes BASE_LAST's.
        assert separate.run("evaluate", "--completed-by", str(day)) == 0, day
        assert separate.run("check", "--date", str(day)) == 0, day
    assert separate.run("evaluate", "--date", str(DAY)) == 3  # asked directly, a horizon not over is refused
    assert nightly.run("nightly", "--from", str(DAY), "--to", str(NEXT_DAY)) == 0
    assert nightly.tables() == separate.tables() and C.PROPENSITY_EVALUATION in nightly.tables()

    def rounded(rows: collections.Counter) -> collections.Counter:
        # Realised AUCs differ in the last bit between two runs (the evaluator's summation order).
        def fix(value):
            return round(value, 9) if isinstance(value, float) else value
        return collections.Counter({json.dumps({k: fix(v) for k, v in json.loads(row).items()}, sort_keys=True): n
                                    for row, n in rows.items()})

    for t in separate.tables():
        assert rounded(canonical_rows(spark, nightly, t)) == rounded(canonical_rows(spark, separate, t)), t


def _raw_user_ids(landing: Path) -> set[bytes]:
    ids: set[bytes] = set()
    for path in (landing / "raw").rglob("*.jsonl"):
        ids.update(RAW_USER_ID.findall(path.read_bytes()))
    return ids


def secret_forms(key: bytes) -> list[bytes]:
    """The key and the two pads an HMAC-SHA256 derives from it (RFC 2104: the key, hashed when
    longer than the 64-byte block, padded with zero bytes to 64, XOR 0x36 and XOR 0x5C), each as
    raw bytes and as hex in both cases (Spark prints a binary literal as hex). An HMAC computed
    with SQL expressions puts the pads in every query plan, so in the event logs."""
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    padded = key.ljust(64, b"\x00")
    forms = []
    for raw in (key, bytes(b ^ 0x36 for b in padded), bytes(b ^ 0x5C for b in padded)):
        forms += [raw, raw.hex().encode(), raw.hex().upper().encode()]
    return forms


def _leaks_in_file(path: Path, raw_ids: set[bytes], secrets: list[bytes]) -> set[bytes]:
    """Raw ids and forms of the key found in one file: Parquet decoded column by column (its pages
    are compressed), zip archives member by member, anything else (Spark's uncompressed event
    logs, the truncated Parquet files of killed writes) as bytes."""
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
    found.update(f"<key form {i}>".encode() for i, form in enumerate(secrets) if form in blob)
    return found


def test_secret_forms_are_the_pads_hmac_uses():
    import hmac

    key = KEY.encode()
    forms = secret_forms(key)
    inner, outer = forms[3], forms[6]
    message = b"u000123"
    expected = hmac.new(key, message, hashlib.sha256).hexdigest()
    assert hashlib.sha256(outer + hashlib.sha256(inner + message).digest()).hexdigest() == expected
    assert forms[4] == inner.hex().encode() and forms[5] == inner.hex().upper().encode()


def test_no_raw_user_id_or_key_in_any_lake_file_mlflow_artifact_or_log(spark, base):
    root, landing, _ = base
    lake = Lake(root / "base", landing, root / "empty.yaml")
    # The riskiest column is there to be scanned: quarantined raw records of many kinds, each
    # holding a raw user id in the input.
    reasons = dict(spark.read.format("delta").load(str(lake.root / C.EVENTS_QUARANTINE))
                   .groupBy("reason").count().collect())
    assert {C.BAD_ENCODING, C.NESTED_VALUE, C.OVERSIZED_RECORD, C.MALFORMED_RECORD, C.BAD_TIMESTAMP,
            C.UNKNOWN_EVENT_TYPE, C.OVERSIZED_FIELD, "missing_user_id"} <= reasons.keys(), reasons
    # After the other tests: the base, reference, faulty and other lakes, with their MLflow
    # stores, the orphan files of killed writes, the Spark event logs of every `seqlake`
    # process (the base's ingest, the killed and the concurrent runs) and their logs.
    raw_ids = _raw_user_ids(landing)
    assert len(raw_ids) > 100  # the scan looks for something that is there to find
    secrets = secret_forms(KEY.encode())
    scanned, leaks, event_logs = 0, {}, []
    for path in [p for p in root.rglob("*") if p.is_file() and landing not in p.parents]:
        found = _leaks_in_file(path, raw_ids, secrets)
        scanned += 1
        if path.name.startswith("events_") and lake.event_logs in path.parents:
            event_logs.append(path)
        if found:
            leaks[str(path.relative_to(root))] = sorted(found)[:3]
    assert scanned > 200
    # The event logs were there and read as they are: plain JSON lines, query plans among them
    # (the base's ingest, and each killed or concurrent run, wrote one).
    written = [p for p in event_logs if p.stat().st_size]
    assert written and all(p.read_bytes().startswith(b'{"Event":"SparkListenerLogStart"') for p in written)
    assert any(b"SparkListenerSQLExecutionStart" in p.read_bytes() for p in written)
    assert not leaks, leaks
    # MLflow params and tags, through its API too.
    import mlflow

    tracking.setup(lake.cfg)
    client = mlflow.MlflowClient()
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            text = json.dumps([run.data.params, run.data.tags]).encode()
            assert not any(form in text for form in secrets) and not (set(RAW_USER_ID.findall(text)) & raw_ids)
