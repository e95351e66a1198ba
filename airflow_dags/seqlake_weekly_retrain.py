"""seqlake_weekly_retrain: one logical date W = {{ ds }}, the Monday that starts the week of data.

training_snapshots -> train -> promote

The data interval of W is the week [W, W+7) (cron "0 6 * * 1" with data intervals: it runs the
Monday after, once the nightly run of Sunday W+6 is done), so the last day with data is W+6.
training_snapshots writes the sequences.retrain_cutoffs latest weekly snapshots whose labels
that day completes; train fits on them and registers a version as pending (it never touches
the alias); promote scores that version and the champion on the same test split and moves
`champion` only through the gate (mlflow.promotion_margin). A rerun of promote keeps the
recorded decision.
"""
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
    snapshots = t.job("sequences", "--labelled-until", LAST_DAY, task_id="training_snapshots", timeout_minutes=180)
    train = t.job("train", "--labelled-until", LAST_DAY, "--no-promote", timeout_minutes=360)
    promote = t.job("promote", "--labelled-until", LAST_DAY, timeout_minutes=60)

    snapshots >> train >> promote
