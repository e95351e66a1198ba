"""The Airflow DAGs, in the Airflow environment (.venv-airflow) as the scheduler would see them:
the folder loads, the wiring, schedules, retries and templated dates are right, and end to end
a real scheduler (`airflow standalone`) runs a backfill of seqlake_nightly for two days on a small
generated lake (every task a real spark-submit of jobs/*.py) that leaves the same tables as the
same days run by `seqlake nightly`, and `airflow dags test` stops a corrupt day before anything
downstream writes."""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from pyspark.testing import assertDataFrameEqual

from seqlake import constants as C
from seqlake import tables

from conftest import REPO, TEST_SETTINGS, make_config

AIRFLOW_VENV = Path(os.environ.get("SEQLAKE_AIRFLOW_VENV", REPO / ".venv-airflow"))
DAGS = REPO / "airflow_dags"
START = dt.date(2024, 1, 1)
HISTORY_END = dt.date(2024, 1, 12)  # ingested and sessionized before the DAG runs
NIGHTS = [dt.date(2024, 1, 13), dt.date(2024, 1, 14)]
CORRUPT = dt.date(2024, 1, 15)
SMALL = ("generator.users=600", "generator.days=16", "training.epochs=2", "training.batch_size=128",
         "model.lstm_units=[8]", "model.dense_units=[8]", "model.embedding_dim=2", "model.item_embedding_dim=1")


def _airflow_bin(name: str) -> str:
    path = AIRFLOW_VENV / "bin" / name
    if not path.exists():
        pytest.fail(f"{path} is missing: `make setup` creates the Airflow environment")
    return str(path)


def _env(home: Path, settings: list[str], retry_minutes: str = "5") -> dict[str, str]:
    """The Airflow process's environment: its own home and sqlite DB, the project's DAG folder,
    a local[2] Spark connection, and the lake's settings for every job."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW", "SEQLAKE_", "PYSPARK", "SPARK_HOME", "VIRTUAL_ENV"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="True",
        AIRFLOW_CONN_SPARK_DEFAULT=json.dumps({"conn_type": "spark", "host": "local[2]"}),
        SEQLAKE_HOME=str(REPO),
        SEQLAKE_VENV=sys.prefix,
        SEQLAKE_SET=";".join(settings),
        SEQLAKE_DRIVER_MEMORY="1g",
        SEQLAKE_RETRY_MINUTES=retry_minutes,
        # `airflow standalone` starts its components as `airflow ...` from PATH.
        PATH=f"{AIRFLOW_VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    return env


def _run(args: list[str], env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_dag_folder_loads_and_wires_the_nightly_and_weekly_runs(tmp_path):
    done = _run([_airflow_bin("python"), str(REPO / "tests" / "dag_inspect.py"), str(DAGS), "2024-01-15"],
                _env(tmp_path, ["lake.root=/data/lake"]), timeout=300)
    lines = [line for line in done.stdout.splitlines() if line.startswith("INSPECT ")]
    assert lines, done.stdout + done.stderr
    out = json.loads(lines[0][len("INSPECT "):])
    assert out["import_errors"] == {}
    assert out["heavy_imports"] == []  # parsing imports no Spark, TensorFlow, MLflow or pipeline code
    nightly, weekly = out["dags"]["seqlake_nightly"], out["dags"]["seqlake_weekly_retrain"]
    assert "'0 0 * * *'" in nightly["timetable"] and "CronDataIntervalTimetable" in nightly["timetable"]
    assert "'0 6 * * 1'" in weekly["timetable"]
    assert nightly["max_active_runs"] == weekly["max_active_runs"] == 1
    order = ["wait_for_landing", "ingest", "sessionize", "state_update", "score", "profile", "evaluate", "checks"]
    assert set(nightly["tasks"]) == set(order)
    upstream = {"ingest": ["wait_for_landing"], "sessionize": ["ingest"], "state_update": ["sessionize"],
                "score": ["state_update"], "profile": ["score", "state_update"], "evaluate": ["profile"],
                "checks": ["evaluate", "state_update"]}
    for task_id, before in upstream.items():
        assert nightly["tasks"][task_id]["upstream"] == before
    # The state moves to D only once D-1's readers of it are done (also within a backfill).
    assert nightly["tasks"]["state_update"]["wait_for_downstream"]
    conf = ["--conf", str(REPO / "conf" / "local.yaml"), "--set", "lake.root=/data/lake"]
    # The source param (a manual run may change it): empty by default, the config's source.
    assert nightly["params"] == weekly["params"] == {"source": ""}
    jobs = {"ingest": "ingest", "sessionize": "sessionize", "state_update": "state", "score": "score",
            "profile": "profiles", "evaluate": "evaluate", "checks": "check"}
    for task_id, job in jobs.items():
        task = nightly["tasks"][task_id]
        assert task["application"] == str(REPO / "jobs" / f"{job}.py")
        flag = "--completed-by" if task_id == "evaluate" else "--date"
        assert task["args"] == [*conf, "--source=", flag, "2024-01-15"]
        assert task["retries"] == 2 and task["retry_delay_s"] == 300 and task["exponential_backoff"]
        assert task["timeout_s"] and task["conn_id"] == "spark_default"
        assert task["depends_on_past"] == (task_id in ("sessionize", "state_update"))
    assert nightly["tasks"]["wait_for_landing"]["mode"] == "reschedule"
    assert nightly["tasks"]["wait_for_landing"]["retries"] == 2  # a lost task process is retried
    # Every task of both DAGs alerts when it fails for good.
    for dag in (nightly, weekly):
        assert all(t["on_failure_callback"] == ["on_failure"] for t in dag["tasks"].values()), dag["tasks"]
    # Weekly: waits for the nightly run of the week's last day, trains, gates, then housekeeping.
    upstream = {"training_snapshots": ["wait_for_night"], "train": ["training_snapshots"], "promote": ["train"],
                "housekeeping": ["promote"]}
    assert {k: v["upstream"] for k, v in weekly["tasks"].items() if k != "wait_for_night"} == upstream
    sensor = weekly["tasks"]["wait_for_night"]
    assert sensor["mode"] == "reschedule" and sensor["external"]["dag_id"] == "seqlake_nightly"
    assert sensor["external"]["task_ids"] == ["checks"] and "failed" in sensor["external"]["failed_states"]
    # The sensor looks at logical_date - execution_delta: W (2024-01-15 06:00) -> Sunday's night.
    week = dt.datetime(2024, 1, 15, 6)
    assert week - dt.timedelta(seconds=sensor["external"]["execution_delta_s"]) == dt.datetime(2024, 1, 21)
    # The week of 2024-01-15 ends on Sunday 2024-01-21: the last day with data.
    assert weekly["tasks"]["training_snapshots"]["args"] == [*conf, "--source=", "--labelled-until", "2024-01-21"]
    assert weekly["tasks"]["train"]["args"][-3:] == ["--labelled-until", "2024-01-21", "--no-promote"]
    assert weekly["tasks"]["promote"]["application"] == str(REPO / "jobs" / "promote.py")
    # housekeeping spans every source: no --source.
    assert weekly["tasks"]["housekeeping"]["args"] == [*conf, "--date", "2024-01-21"]


# --------------------------------------------------------------------------- end to end


def _settings(root: Path) -> list[str]:
    return [*TEST_SETTINGS, f"lake.root={root / 'lake'}", f"lake.landing_root={root / 'landing'}", *SMALL]


def build_history(spark, cfg, history_end: dt.date) -> None:
    """Generate the lake's days, ingest and sessionize START..history_end, fit a vocabulary on the
    first week and train a champion on its snapshot; the later days wait in the landing folder."""
    from seqlake import sequences, train, vocab
    from seqlake.generate import generate
    from seqlake.ingest import ingest
    from seqlake.sessionize import sessionize
    from seqlake.sources import load_source

    generate(cfg.generator, cfg.lake.landing_root)
    spec = load_source(str(REPO / "conf" / "sources"), "generator")
    ingest(spark, cfg, spec, window_start=START, window_end=history_end)
    sessionize(spark, cfg, source="generator", date_from=START, date_to=history_end)
    vocab.fit(spark, cfg, source="generator", fit_from=START, fit_to=dt.date(2024, 1, 6))
    sequences.build_snapshot(spark, cfg, source="generator", cutoff=dt.date(2024, 1, 6),
                             vocabulary=vocab.load(spark, cfg, "generator"))
    assert train.train(spark, cfg, source="generator").promoted


@pytest.fixture(scope="module")
def history(spark, tmp_path_factory):
    """A generated lake with days 1..12 ingested and sessionized, a vocabulary and a champion
    (trained here); days 13..16 wait in the landing folder for the DAG."""
    root = tmp_path_factory.mktemp("airflow_history")
    build_history(spark, make_config(root, *SMALL), HISTORY_END)
    return root


def _copy(history: Path, to: Path) -> Path:
    """A copy of the history lake (Delta logs hold relative paths; the MLflow registry keeps
    pointing at the history's model artifacts, which stay put)."""
    shutil.copytree(history, to)
    return to


def _migrate(home: Path, env: dict[str, str]) -> None:
    home.mkdir(parents=True, exist_ok=True)
    done = _run([_airflow_bin("airflow"), "db", "migrate"], env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _dates(spark, cfg, table: str, column: str) -> list[dt.date]:
    return sorted(r[0] for r in tables.read(spark, cfg, table).select(column).distinct().collect())


def _versions(spark, cfg) -> dict[str, int]:
    from delta.tables import DeltaTable

    return {t: DeltaTable.forPath(spark, cfg.table_path(t)).history(1).first()["version"]
            for t in (C.EVENTS, C.SESSIONS, C.SESSION_EVENTS, C.USER_STATE, C.USER_PROPENSITY, C.USER_PROFILE)}


@pytest.fixture(scope="module")
def nightly(spark, history, tmp_path_factory):
    """seqlake_nightly for NIGHTS as a backfill a real scheduler runs (both days may run at once):
    (lake root, its Airflow environment, the backfill's DAG runs, seconds)."""
    root = _copy(history, tmp_path_factory.mktemp("airflow_nightly") / "lake_root")
    started = time.monotonic()
    runs = _backfill(root, NIGHTS[0], NIGHTS[-1])
    seconds = time.monotonic() - started
    print(f"backfill of {len(NIGHTS)} days: {seconds:.0f}s")
    return root, _env(root / "airflow", _settings(root), retry_minutes="0.25"), runs, seconds


def _task_logs(home: Path, task_id: str) -> dict[str, str]:
    """run id -> the text of every attempt's log of ``task_id`` in that run."""
    out: dict[str, str] = {}
    for path in sorted((home / "logs" / "dag_id=seqlake_nightly").glob(f"run_id=*/task_id={task_id}/attempt=*.log")):
        run_id = path.parent.parent.name[len("run_id="):]
        out[run_id] = out.get(run_id, "") + path.read_text(errors="replace")
    return out


@pytest.mark.slow
def test_nightly_dag_runs_two_days_and_the_tables_hold_exactly_those_days(spark, nightly):
    root, _, runs, _ = nightly
    assert sorted((r["logical_date"][:10], r["state"]) for r in runs) == [(d.isoformat(), "success") for d in NIGHTS], \
        _failed_task_logs(root / "airflow")
    cfg = make_config(root, *SMALL)
    every_day = [START + dt.timedelta(days=d) for d in range((NIGHTS[-1] - START).days + 1)]
    assert _dates(spark, cfg, C.EVENTS, C.EVENT_DATE) == every_day
    assert _dates(spark, cfg, C.SESSION_EVENTS, C.EVENT_DATE) == every_day
    assert _dates(spark, cfg, C.USER_PROPENSITY, C.SCORE_DATE) == NIGHTS
    assert _dates(spark, cfg, C.USER_PROFILE, C.PROFILE_DATE) == NIGHTS
    assert _dates(spark, cfg, C.STATE_RUNS, C.STATE_DATE) == NIGHTS  # bootstrap at 13, fold of 14
    # One ingest, sessionize and scoring run per night (no retry wrote twice), each balanced.
    ingests = tables.read(spark, cfg, C.INGEST_RUNS).filter(f"window_start >= '{NIGHTS[0]}'").collect()
    assert sorted(r["window_start"] for r in ingests) == NIGHTS
    assert all(r["rows_read"] == r["rows_written"] + r["rows_quarantined"] + r["duplicates_dropped"] for r in ingests)
    assert sorted(r["score_date"] for r in tables.read(spark, cfg, C.SCORE_RUNS).collect()) == NIGHTS
    for day in NIGHTS:
        events = tables.read(spark, cfg, C.EVENTS).filter(f"event_date = '{day}'").count()
        assert events == next(r["rows_written"] for r in ingests if r["window_start"] == day) > 0
    # The checks task ran (it is last) in each night and said so.
    checks = _task_logs(root / "airflow", "checks")
    assert sorted(checks) == sorted(r["run_id"] for r in runs)
    assert all("all 5 passed" in text for text in checks.values()), checks


@pytest.mark.slow
def test_a_corrupt_landing_day_fails_the_run_before_anything_downstream_writes(spark, nightly):
    root, env, runs, _ = nightly
    assert all(r["state"] == "success" for r in runs)
    cfg = make_config(root, *SMALL)
    before = _versions(spark, cfg)
    folder = Path(cfg.landing_path("generator", CORRUPT))
    good = sum(1 for f in folder.iterdir() if f.is_file() for _ in f.open())
    # Garbage worth 20% of the day: over ingest.quarantine_threshold (5%).
    (folder / "zz-corrupt.jsonl").write_text("".join(f"{{not json {i}\n" for i in range(good // 4)))
    # The failure alert: a command of the operator's choice, given what failed.
    alerts = root / "alerts.txt"
    env = {**env, "SEQLAKE_ALERT_COMMAND": f'echo "$SEQLAKE_FAILED_DAG $SEQLAKE_FAILED_TASK $SEQLAKE_FAILED_DATE" >> {alerts}'}
    done = _run([_airflow_bin("airflow"), "dags", "test", "seqlake_nightly", CORRUPT.isoformat()], env, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-4000:]
    assert "DagRun failed" in output and "not retried" in output
    # Only ingest failed (a data check: no retry); what follows it never ran, so alerted nothing.
    assert alerts.read_text().splitlines() == [f"seqlake_nightly ingest {CORRUPT}"], output[-4000:]
    assert _versions(spark, cfg) == before  # events, sessions, state, scores, profiles untouched
    assert CORRUPT not in _dates(spark, cfg, C.EVENTS, C.EVENT_DATE)
    quarantined = tables.read(spark, cfg, C.EVENTS_QUARANTINE).filter(f"run_date = '{CORRUPT}'")
    assert quarantined.filter("reason = 'malformed_record'").count() == good // 4
    failed = tables.read(spark, cfg, C.INGEST_RUNS).filter(f"window_start = '{CORRUPT}'").collect()
    assert [r["status"] for r in failed] == ["failed"]
    # The end-of-night checks: the last good night passes; the corrupt one names what is wrong.
    from seqlake import checks

    assert all(c.ok for c in checks.night(spark, cfg, source="generator", day=NIGHTS[-1]))
    found = {c.name: c for c in checks.night(spark, cfg, source="generator", day=CORRUPT)}
    assert not any(c.ok for c in found.values())
    assert "quarantined share" in found["ingest"].detail and "failed" in found["ingest"].detail
    # Each names the first step the corrupt day lacks: its ingest (which failed).
    mend = (f"run `seqlake ingest --source generator --date {CORRUPT}` first: source 'generator' was never "
            f"ingested for {CORRUPT}")
    assert found["sessionize"].detail == f"no sessionize run of generator covers {CORRUPT}; {mend}"
    assert found["state"].detail == f"user_state holds events up to {NIGHTS[-1]}; {mend}"


def test_no_job_file_shadows_a_module_its_imports_need():
    """spark-submit runs jobs/<name>.py with jobs/ first on sys.path: a job named like a standard
    library module (profile.py did) breaks every other job's imports."""
    names = {p.stem for p in (REPO / "jobs").glob("*.py")}
    assert not names & set(sys.stdlib_module_names)
    assert not names & {"seqlake", "pyspark", "delta", "mlflow", "tensorflow", "keras", "petastorm"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(port: int, server: subprocess.Popen, log: Path, timeout_s: int = 300) -> None:
    parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=10) as response:
                body = json.loads(response.read().decode())
            if all((body.get(p) or {}).get("status") == "healthy" for p in parts):
                return
        except (OSError, ValueError):
            pass
        assert server.poll() is None, log.read_text()[-4000:]
        assert time.monotonic() < deadline, f"airflow standalone not healthy after {timeout_s}s: {log.read_text()[-4000:]}"
        time.sleep(3)


def _failed_task_logs(home: Path, limit: int = 6000) -> str:
    """The tail of every task log that records a failure: what a failed backfill shows."""
    out = []
    for path in sorted((home / "logs").rglob("*.log")):
        text = path.read_text(errors="replace")
        if "error" in text.lower() or "failed" in text.lower():
            out.append(f"--- {path.relative_to(home)}\n{text[-limit:]}")
    return "\n".join(out)[-4 * limit:]


def _backfill_runs(home: Path) -> list[dict]:
    """The backfill's DAG runs, read from Airflow's sqlite database: each `airflow dags list-runs`
    costs a process importing Airflow, seconds of CPU the running tasks need. (Unpausing also
    starts the run of the latest interval, today's: its sensor waits; it is not the backfill's.)"""
    db = home / "airflow.db"
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as con:
        rows = con.execute("SELECT run_id, state, logical_date FROM dag_run WHERE dag_id = 'seqlake_nightly' "
                           "AND run_type = 'backfill' ORDER BY logical_date").fetchall()
    return [{"run_id": r[0], "state": r[1], "logical_date": r[2]} for r in rows]


def _backfill(root: Path, first: dt.date, last: dt.date, timeout_s: int = 1800) -> list[dict]:
    """`airflow backfill create` run by a real scheduler (`airflow standalone`: scheduler, DAG
    processor, API server, LocalExecutor); the DAG runs it made once they have all finished."""
    home = root / "airflow"
    port = _free_port()
    env = _env(home, _settings(root), retry_minutes="0.25")
    env.update(AIRFLOW__API__PORT=str(port), AIRFLOW__API__HOST="127.0.0.1",
               AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{port}/execution/",
               AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(_free_port()),
               AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=str(_free_port()),
               AIRFLOW__CORE__PARALLELISM="2")
    _migrate(home, env)
    for command in (["dags", "reserialize"], ["dags", "unpause", "seqlake_nightly"]):
        done = _run([_airflow_bin("airflow"), *command], env, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = (root / "standalone.log").open("w")
    server = subprocess.Popen([_airflow_bin("airflow"), "standalone"], env=env, cwd=REPO, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # A task's supervisor gives up on an execution API that does not answer within ~30 s (5
        # tries), and on a loaded machine the API server can start later than the scheduler:
        # the backfill starts once every component reports healthy.
        _wait_healthy(port, server, root / "standalone.log")
        # No --max-active-runs: the backfill may run both days at once (its default is 10), and the
        # DAG's own dependencies must still write in day order.
        # The running scheduler and DAG processor write the same sqlite file: a create that finds
        # it locked changed nothing (one transaction) and is tried again.
        for attempt in range(6):
            created = _run([_airflow_bin("airflow"), "backfill", "create", "--dag-id", "seqlake_nightly",
                            "--from-date", first.isoformat(), "--to-date", last.isoformat(),
                            "--reprocess-behavior", "failed"], env, timeout=300)
            if created.returncode == 0 or "database is locked" not in created.stdout + created.stderr:
                break
            time.sleep(5)
        assert created.returncode == 0, created.stdout[-3000:] + created.stderr[-3000:]
        deadline = time.monotonic() + timeout_s
        while True:
            runs = _backfill_runs(home)
            if runs and all(r["state"] in ("success", "failed") for r in runs):
                return runs
            assert time.monotonic() < deadline, f"backfill still running after {timeout_s}s: {runs}"
            assert server.poll() is None, (root / "standalone.log").read_text()[-4000:]
            time.sleep(10)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        # Components and task processes that left the process group (the API server renames
        # itself), and any spark-submit of this lake still running.
        subprocess.run(["pkill", "-f", str(root)], check=False)
        subprocess.run(["pkill", "-f", f"port:{port}"], check=False)
        log.close()


@pytest.mark.slow
def test_a_backfill_of_the_two_days_leaves_the_same_tables_as_the_nightly_command(
        spark, history, nightly, tmp_path_factory):
    """The scheduler's backfill (both days may run at once; the DAG's dependencies order the
    writes) against `seqlake nightly --from --to`, the same stages day after day in this process
    (which tests/test_faults.py holds equal to the separate commands)."""
    from seqlake import cli

    backfilled, _, runs, _ = nightly
    assert all(r["state"] == "success" for r in runs)
    root = _copy(history, tmp_path_factory.mktemp("airflow_one_by_one") / "lake_root")
    sets = [x for setting in _settings(root) for x in ("--set", setting)]
    assert cli.main(["--conf", str(REPO / "conf" / "local.yaml"), *sets, "nightly",
                     "--from", str(NIGHTS[0]), "--to", str(NIGHTS[-1])]) == 0
    a, b = make_config(root, *SMALL), make_config(backfilled, *SMALL)
    # The data tables hold no run ids or timestamps of a run: every row must be the same.
    for table in (C.EVENTS, C.SESSION_EVENTS, C.SESSIONS, C.USER_STATE, C.USER_PROPENSITY, C.USER_PROFILE):
        assertDataFrameEqual(tables.read(spark, b, table), tables.read(spark, a, table))


def test_weekly_gate_as_its_own_step_keeps_the_champion_unless_beaten_and_reruns_change_nothing(
        spark, history, tmp_path_factory):
    """`train --no-promote` leaves a pending version and the alias alone; `promote` judges it
    against the champion on the same test split (an equal model is not better by the margin)
    and records why; judging again changes nothing."""
    import dataclasses

    from mlflow import MlflowClient

    from seqlake import tracking, train

    root = _copy(history, tmp_path_factory.mktemp("airflow_gate") / "lake_root")
    cfg = make_config(root, *SMALL)
    cfg = dataclasses.replace(cfg, mlflow=dataclasses.replace(cfg.mlflow, promotion_margin=0.5))
    tracking.setup(cfg)
    assert str(tracking.champion_version(cfg).version) == "1"
    trained = train.train(spark, cfg, source="generator", promote_now=False)
    client = MlflowClient()
    name = cfg.mlflow.registered_model
    assert trained.model_version == "2" and not trained.promoted
    assert client.get_model_version(name, "2").tags["promotion"] == "pending"
    assert str(tracking.champion_version(cfg).version) == "1"  # training alone never moves the alias
    judged = train.judge(spark, cfg, source="generator")
    # Same data, same seed: (nearly) the same metrics, which do not beat the champion's by 0.5.
    assert judged.model_version == "2" and not judged.promoted and not judged.already_judged
    assert "does not beat champion version 1" in judged.reason
    assert str(tracking.champion_version(cfg).version) == "1"
    assert client.get_model_version(name, "2").tags["promotion"] == "rejected"
    assert client.get_run(trained.run_id).data.tags["promotion.decision"] == "rejected"
    again = train.judge(spark, cfg, source="generator", version="2")
    assert again.already_judged and again.reason == judged.reason and not again.promoted
    # Without a champion to beat, the same step promotes (the gate decides, not the step).
    client.set_model_version_tag(name, "2", "promotion", "pending")
    client.delete_registered_model_alias(name, "champion")
    judged = train.judge(spark, cfg, source="generator")
    assert judged.promoted and judged.reason == "no champion yet: version 2 becomes champion"
    assert str(tracking.champion_version(cfg).version) == "2"
