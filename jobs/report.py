"""spark-submit entry point: `spark-submit --packages io.delta:delta-spark_2.13:4.0.1 jobs/report.py --conf conf/local.yaml --date YYYY-MM-DD`.

Thin by design: the arguments are those of `seqlake report` (see `seqlake report --help`).
"""
import sys

from seqlake.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("report", sys.argv[1:]))
