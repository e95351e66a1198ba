"""seqlake_weekly_retrain: one logical date W = {{ ds }}, the Monday that starts the week of data.

wait_for_night -> training_snapshots -> train -> promote -> housekeeping

The data interval of W is the week [W, W+7) (cron "0 6 * * 1" with data intervals: it starts the
Monday after), so the last day with data is W+6, and wait_for_night holds the run until the
nightly run of W+6 has passed its checks (it fails at once if that night failed), not trusting
that the night is over by 06:00.
training_snapshots writes the sequences.retrain_cutoffs latest weekly snapshots whose labels
that day completes; train fits on them and registers a version as pending (it never touches
the alias); promote scores that version and the champion on the same test split and moves
`champion` only through the gate (mlflow.promotion_margin). A rerun of promote keeps the
recorded decision. housekeeping then compacts the week's files (OPTIMIZE of the recent days,
VACUUM past the retention) before the next night starts at midnight.
"""
import datetime as dt
import os
import sys

from airflow.sdk import DAG, CronDataIntervalTimetable

# Airflow puts its configured DAG folder on sys.path; this keeps the helper importable when the
# folder is loaded from elsewhere (tests, a DagBag of a path).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import seqlake_tasks as t  # noqa: E402

LAST_DAY = "{{ macros.ds_add(ds, 6) }}"  # the week's last day with data

with DAG(
    dag_id="seqlake_weekly_retrain",
    description="weekly training snapshots, training and the champion gate",
    schedule=CronDataIntervalTimetable("0 6 * * 1", timezone="UTC"),
    doc_md=__doc__,
    **t.dag_options(),
) as dag:
    # The weekly logical date is W 06:00; the night it needs is W+6 00:00.
    night = t.wait_for_night("seqlake_nightly", dt.timedelta(days=6) - dt.timedelta(hours=6))
    snapshots = t.job("sequences", "--labelled-until", LAST_DAY, task_id="training_snapshots", timeout_minutes=180)
    train = t.job("train", "--labelled-until", LAST_DAY, "--no-promote", timeout_minutes=360)
    promote = t.job("promote", "--labelled-until", LAST_DAY, timeout_minutes=60)

    housekeeping = t.job("housekeeping", "--date", LAST_DAY, timeout_minutes=180, per_source=False)

    night >> snapshots >> train >> promote >> housekeeping
