"""What the seqlake DAGs share: settings from the environment and the two kinds of task.

Parse time stays cheap: environment variables and a glob, nothing from the pipeline (which lives
in its own virtual environment, STACK.md) and no Spark. Settings (README "Orchestration"):

  SEQLAKE_HOME         the project folder: jobs/ and relative config paths (default: this folder's parent)
  SEQLAKE_VENV         the pipeline's virtual environment (default: $SEQLAKE_HOME/.venv)
  SEQLAKE_CONF         the pipeline config (default: conf/local.yaml under SEQLAKE_HOME)
  SEQLAKE_SET          extra `key=value` overrides for every job, separated by ';'
  SEQLAKE_SOURCE       the source to run (default: the config's `source`)
  SEQLAKE_SPARK_CONN   Airflow connection of spark-submit (default: spark_default); YARN or
                       Kubernetes is a change of this connection and of SEQLAKE_CONF, never of a DAG
  SEQLAKE_PACKAGES     spark-submit --packages (default: the Delta package of conf/local.yaml); its
                       jars fetched by `make setup` into SEQLAKE_VENV go as --jars instead
  SEQLAKE_DRIVER_MEMORY  spark-submit --driver-memory (default: 2g)
  SEQLAKE_START_DATE   first logical date of the schedules (default: 2024-01-01; catchup is off)
  SEQLAKE_RETRY_MINUTES  first retry delay, doubled per retry (default: 5)
  SEQLAKE_ALERT_COMMAND  a shell command run when a task has failed for good (after its retries),
                       with SEQLAKE_FAILED_DAG, _TASK, _DATE, _TRY and _ERROR in its environment
                       (for example a mail or a webhook call); default: none, the task log only

``AIRFLOW_VAR_SEQLAKE_<NAME>`` (an Airflow Variable defined in the environment) works too. They
are read at parse time, from the environment only: no metadata-database access while parsing.
"""
from __future__ import annotations

import datetime as dt
import glob
import os
import subprocess
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import PokeReturnValue, task
from airflow.sdk.exceptions import AirflowException, AirflowFailException

EXIT_DATA = 3  # the pipeline's "the data failed a check": a retry cannot help


def setting(name: str, default: str) -> str:
    """``SEQLAKE_<NAME>`` from the environment, else ``AIRFLOW_VAR_SEQLAKE_<NAME>``, else ``default``."""
    key = f"SEQLAKE_{name}"
    return os.environ.get(key) or os.environ.get(f"AIRFLOW_VAR_{key}") or default


HOME = Path(setting("HOME", str(Path(__file__).resolve().parent.parent)))
VENV = Path(setting("VENV", str(HOME / ".venv")))
CONF = setting("CONF", str(HOME / "conf" / "local.yaml"))
SETS = [s.strip() for s in setting("SET", "").split(";") if s.strip()]
SOURCE = setting("SOURCE", "")
SPARK_CONN = setting("SPARK_CONN", "spark_default")
PACKAGES = setting("PACKAGES", "io.delta:delta-spark_2.13:4.0.1")
DRIVER_MEMORY = setting("DRIVER_MEMORY", "2g")
START_DATE = dt.datetime.fromisoformat(setting("START_DATE", "2024-01-01")).replace(tzinfo=dt.timezone.utc)
RETRY_DELAY = dt.timedelta(minutes=float(setting("RETRY_MINUTES", "5")))
ALERT_COMMAND = setting("ALERT_COMMAND", "")


def global_args() -> list[str]:
    """Config and overrides: what every seqlake command takes before its name."""
    args = ["--conf", CONF]
    for item in SETS:
        args += ["--set", item]
    return args


# The run's source: the `source` param (a manual trigger may name another source), whose
# default is SEQLAKE_SOURCE; empty means the config's `source` (the CLI takes "" as unset). One
# argument, so that an empty source is never an empty argument for spark-submit to pass on.
SOURCE_ARGS = ["--source={{ params.source }}"]


def on_failure(context) -> None:
    """A task failed for good (retries spent, or a data check that is never retried): one line in
    the task log, and SEQLAKE_ALERT_COMMAND run with the details. Never raises: an alert that
    fails must not hide the task's own error."""
    ti = context.get("ti") or context.get("task_instance")
    details = {
        "SEQLAKE_FAILED_DAG": str(getattr(ti, "dag_id", "")),
        "SEQLAKE_FAILED_TASK": str(getattr(ti, "task_id", "")),
        "SEQLAKE_FAILED_DATE": str(context.get("ds", "")),
        "SEQLAKE_FAILED_TRY": str(getattr(ti, "try_number", "")),
        "SEQLAKE_FAILED_ERROR": str(context.get("exception", ""))[:500],
    }
    print("seqlake: task {SEQLAKE_FAILED_TASK} of {SEQLAKE_FAILED_DAG} for {SEQLAKE_FAILED_DATE} failed "
          "(try {SEQLAKE_FAILED_TRY}): {SEQLAKE_FAILED_ERROR}".format(**details))
    if ALERT_COMMAND:
        try:
            done = subprocess.run(["bash", "-c", ALERT_COMMAND], env={**os.environ, **details},
                                  capture_output=True, text=True, timeout=120)
            print(f"seqlake: alert command exited {done.returncode}")
        except (OSError, subprocess.SubprocessError) as exc:
            print(f"seqlake: alert command failed: {exc}")


def default_args() -> dict:
    return {
        "owner": "seqlake",
        "retries": 2,
        "retry_delay": RETRY_DELAY,
        "retry_exponential_backoff": True,
        "max_retry_delay": dt.timedelta(hours=1),
        "on_failure_callback": on_failure,
    }


def dag_options() -> dict:
    """What both DAGs share: start, no catchup (backfills instead), one run at a time, retries,
    the failure alert and the `source` param."""
    from airflow.sdk import Param

    return {
        "start_date": START_DATE,
        "catchup": False,
        "max_active_runs": 1,
        "default_args": default_args(),
        "dagrun_timeout": dt.timedelta(hours=20),
        "tags": ["seqlake"],
        "params": {"source": Param(SOURCE, type="string",
                                   description="the source to run (conf/sources/<name>.yaml); empty: the config's")},
    }


def jvm_dependencies() -> dict[str, str]:
    """spark-submit's ``jars`` when ``make setup`` fetched the package's jars into the pipeline's
    environment (no resolution, no Ivy report in every task log), else its ``packages``."""
    folder = VENV / "share" / "seqlake" / "jars" / PACKAGES.replace(":", "_")
    jars = sorted(glob.glob(str(folder / "*.jar"))) if (folder / "COMPLETE").exists() else []
    return {"jars": ",".join(jars)} if jars else {"packages": PACKAGES}


def pipeline_env() -> dict[str, str]:
    """spark-submit and its Python from the pipeline's environment (STACK.md: the provider finds
    spark-submit on PATH only)."""
    spark_home = next(iter(sorted(glob.glob(str(VENV / "lib" / "python3*" / "site-packages" / "pyspark")))), "")
    return {
        "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "SPARK_HOME": spark_home,
        "PYSPARK_PYTHON": str(VENV / "bin" / "python"),
        "PYSPARK_DRIVER_PYTHON": str(VENV / "bin" / "python"),
        "SEQLAKE_WORKDIR": str(HOME),
        "TF_ENABLE_ONEDNN_OPTS": "0",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


class SeqlakeJob(SparkSubmitOperator):
    """spark-submit of ``jobs/<job>.py``; exit code 3 (the data failed a check: quarantine over
    threshold, a missing day ...) fails the task at once instead of retrying."""

    def execute(self, context):
        try:
            return super().execute(context)
        except AirflowException as exc:
            process = getattr(self._hook, "_submit_sp", None)
            if process is not None and process.returncode == EXIT_DATA:
                raise AirflowFailException(f"{self.task_id}: the data failed a check (exit 3), not retried: "
                                           f"see the task log") from exc
            raise


def job(job_name: str, *args: str, task_id: str | None = None, timeout_minutes: int = 60, per_source: bool = True,
        **options) -> SeqlakeJob:
    """A task running ``jobs/<job_name>.py`` with the common arguments, the run's source (unless
    the job spans every source: ``per_source=False``), then ``args`` (templated); ``options`` go
    to the operator (depends_on_past ...)."""
    return SeqlakeJob(
        task_id=task_id or job_name,
        application=str(HOME / "jobs" / f"{job_name}.py"),
        application_args=[*global_args(), *(SOURCE_ARGS if per_source else []), *args],
        conn_id=SPARK_CONN,
        **jvm_dependencies(),
        driver_memory=DRIVER_MEMORY,
        name=f"seqlake-{task_id or job_name}",
        env_vars=pipeline_env(),
        conf={"spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={HOME / 'conf' / 'log4j2.properties'}"},
        execution_timeout=dt.timedelta(minutes=timeout_minutes),
        verbose=False,
        **options,
    )


def wait_for_landing(poke_minutes: int = 5, timeout_hours: int = 12):
    """A sensor: pokes ``seqlake landed --date {{ ds }}`` until the day's raw files are there.
    "Not yet" is a poke, a failing ``seqlake landed`` fails at once; the DAG's retries are only
    for the task process itself (an execution API that did not answer in time)."""

    @task.sensor(task_id="wait_for_landing", poke_interval=poke_minutes * 60, timeout=timeout_hours * 3600,
                 mode="reschedule")
    def wait(ds=None, params=None) -> PokeReturnValue:
        done = subprocess.run(
            [str(VENV / "bin" / "seqlake"), *global_args(), "landed", "--date", ds,
             f"--source={(params or {}).get('source', SOURCE)}"],
            cwd=HOME, env={**os.environ, **pipeline_env()}, capture_output=True, text=True,
        )
        print(done.stdout.strip() or done.stderr.strip())
        if done.returncode not in (0, EXIT_DATA):
            raise AirflowFailException(f"seqlake landed failed (exit {done.returncode}): {done.stderr.strip()}")
        return PokeReturnValue(is_done=done.returncode == 0)

    return wait()


def wait_for_night(dag_id: str, night: dt.timedelta, poke_minutes: int = 10, timeout_hours: int = 24):
    """A sensor on the ``checks`` task of ``dag_id``'s run whose logical date is this run's plus
    ``night`` (the night this run needs): it waits while that night has not run or runs, and
    fails as soon as that night has failed, instead of trusting the clock."""
    from airflow.providers.standard.sensors.external_task import ExternalTaskSensor

    return ExternalTaskSensor(
        task_id="wait_for_night", external_dag_id=dag_id, external_task_id="checks",
        # ExternalTaskSensor looks at logical_date - execution_delta.
        execution_delta=-night, allowed_states=["success"], failed_states=["failed", "upstream_failed"],
        mode="reschedule", poke_interval=poke_minutes * 60, timeout=timeout_hours * 3600,
    )
