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

    def render(value, params):
        if isinstance(value, str):
            return jinja2.Template(value).render(ds=logical_date, macros=macros, params=params)
        return value

    out = {"import_errors": {k: v.splitlines()[-1] for k, v in bag.import_errors.items()}, "heavy_imports": heavy,
           "dags": {}}
    for dag in bag.dags.values():
        params = dag.params.dump()
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
                "args": [render(a, params) for a in getattr(t, "application_args", None) or []],
                "conn_id": getattr(t, "conn_id", getattr(t, "_conn_id", None)),
                "mode": getattr(t, "mode", None),
                "on_failure_callback": [getattr(c, "__name__", repr(c)) for c in
                                        (t.on_failure_callback if isinstance(t.on_failure_callback, list)
                                         else [t.on_failure_callback] if t.on_failure_callback else [])],
                "external": ({"dag_id": t.external_dag_id, "task_ids": list(t.external_task_ids),
                              "execution_delta_s": t.execution_delta.total_seconds(),
                              "allowed_states": list(t.allowed_states), "failed_states": list(t.failed_states)}
                             if hasattr(t, "external_dag_id") else None),
            }
        out["dags"][dag.dag_id] = {
            "timetable": repr(dag.timetable),
            "max_active_runs": dag.max_active_runs,
            "catchup": dag.catchup,
            "params": params,
            "tasks": tasks,
        }
    print("INSPECT " + json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
