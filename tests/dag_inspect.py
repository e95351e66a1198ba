"""Run by tests/test_airflow.py in the Airflow environment (not collected by pytest there):
load the DAG folder as the scheduler would and print what the tests assert, as JSON.

usage: python tests/dag_inspect.py DAG_FOLDER LOGICAL_DATE
"""
import json
import sys

import jinja2

HEAVY = ("pyspark", "tensorflow", "mlflow", "seqlake", "pandas", "delta")


def main(folder: str, logical_date: str) -> None:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.execution_time import macros

    heavy_before = {m for m in sys.modules if m.split(".")[0] in HEAVY}
    bag = DagBag(dag_folder=folder)
    heavy = sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in HEAVY} - {m.split(".")[0] for m in heavy_before})

    def render(value):
        if isinstance(value, str):
            return jinja2.Template(value).render(ds=logical_date, macros=macros)
        return value

    out = {"import_errors": {k: v.splitlines()[-1] for k, v in bag.import_errors.items()}, "heavy_imports": heavy,
           "dags": {}}
    for dag in bag.dags.values():
        tasks = {}
        for t in dag.tasks:
            tasks[t.task_id] = {
                "upstream": sorted(t.upstream_task_ids),
                "retries": t.retries,
                "retry_delay_s": t.retry_delay.total_seconds(),
                "exponential_backoff": bool(t.retry_exponential_backoff),
                "timeout_s": t.execution_timeout.total_seconds() if t.execution_timeout else None,
                "depends_on_past": t.depends_on_past,
                "wait_for_downstream": t.wait_for_downstream,
                "application": getattr(t, "application", None),
                "args": [render(a) for a in getattr(t, "application_args", None) or []],
                "conn_id": getattr(t, "conn_id", getattr(t, "_conn_id", None)),
                "mode": getattr(t, "mode", None),
            }
        out["dags"][dag.dag_id] = {
            "timetable": repr(dag.timetable),
            "max_active_runs": dag.max_active_runs,
            "catchup": dag.catchup,
            "tasks": tasks,
        }
    print("INSPECT " + json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
