"""seqlake_nightly: one logical date D = {{ ds }}, the UTC day whose data the run processes.

wait_for_landing -> ingest -> sessionize -> state_update -> score -> profile -> evaluate -> checks

The data interval of D is [D, D+1) (cron "0 0 * * *" with data intervals), so the run starts once
the day is over and every task gets D, never the wall clock. One run at a time, and the state
update waits for the previous night's (the state must hold D-1 to fold in D) and for everything
that read the state at D-1; sessionize waits for the previous night's too. So even a backfill that
runs several days at once (its own max_active_runs) writes in day order. A task whose data
fails a check (exit 3: quarantine over threshold, a missing day) fails at once, so nothing
downstream writes; other failures retry with back-off, and a task that fails for good runs the
failure alert (SEQLAKE_ALERT_COMMAND). `evaluate` scores the realised outcome of the day whose
horizon D completes (D - sequences.horizon_days), with nothing to do while that day has no scores.
The `source` param (default SEQLAKE_SOURCE, else the config's) lets a manual run take another source.
"""
import os
import sys

from airflow.sdk import DAG, CronDataIntervalTimetable

# Airflow puts its configured DAG folder on sys.path; this keeps the helper importable when the
# folder is loaded from elsewhere (tests, a DagBag of a path).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import seqlake_tasks as t  # noqa: E402

with DAG(
    dag_id="seqlake_nightly",
    description="ingest, sessionize, state, score and profile one day of behaviour logs",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    doc_md=__doc__,
    **t.dag_options(),
) as dag:
    landed = t.wait_for_landing()
    ingest = t.job("ingest", "--date", "{{ ds }}", timeout_minutes=120)
    # A day's sessions continue the previous day's open ones.
    sessionize = t.job("sessionize", "--date", "{{ ds }}", timeout_minutes=120, depends_on_past=True)
    # One user_state serves every day: the state moves to D only after D-1's score, profile and
    # checks (which all read it at D-1) have succeeded, even when a backfill runs days at once.
    state_update = t.job("state", "--date", "{{ ds }}", task_id="state_update", timeout_minutes=120,
                         depends_on_past=True, wait_for_downstream=True)
    score = t.job("score", "--date", "{{ ds }}", timeout_minutes=120)
    profile = t.job("profiles", "--date", "{{ ds }}", task_id="profile", timeout_minutes=60)
    evaluate = t.job("evaluate", "--completed-by", "{{ ds }}", timeout_minutes=60)
    checks = t.job("check", "--date", "{{ ds }}", task_id="checks", timeout_minutes=30)

    landed >> ingest >> sessionize >> state_update >> score >> profile >> evaluate >> checks
    state_update >> [profile, checks]
