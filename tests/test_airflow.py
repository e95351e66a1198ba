"""The Airflow DAGs, in the Airflow environment (.venv-airflow) as the scheduler would see them:
the folder loads, the wiring, schedules, retries and templated dates are right. End to end (a
real scheduler backfilling two nights, every task a real spark-submit of jobs/*.py; a corrupt
day stopped by `airflow dags test`; the weekly gate) they run under `make airflow`, as the
README says, in tests/test_readme_paths.py, on a lake built by ``build_history`` here."""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

AIRFLOW_VENV = Path(os.environ.get("SEQLAKE_AIRFLOW_VENV", REPO / ".venv-airflow"))
DAGS = REPO / "airflow_dags"
START = dt.date(2024, 1, 1)
SMALL = ("generator.users=600", "training.epochs=2", "training.batch_size=128",
         "model.lstm_units=[8]", "model.dense_units=[8]", "model.embedding_dim=2", "model.item_embedding_dim=1")


def _airflow_bin(name: str) -> str:
    path = AIRFLOW_VENV / "bin" / name
    if not path.exists():
        pytest.fail(f"{path} is missing: `make setup` creates the Airflow environment")
    return str(path)


def _env(home: Path, settings: list[str]) -> dict[str, str]:
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
        SEQLAKE_RETRY_MINUTES="5",
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


# --------------------------------------------------------------------------- the lake of the end-to-end runs


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


def test_no_job_file_shadows_a_module_its_imports_need():
    """spark-submit runs jobs/<name>.py with jobs/ first on sys.path: a job named like a standard
    library module (profile.py did) breaks every other job's imports."""
    names = {p.stem for p in (REPO / "jobs").glob("*.py")}
    assert not names & set(sys.stdlib_module_names)
    assert not names & {"seqlake", "pyspark", "delta", "mlflow", "tensorflow", "keras", "petastorm"}
