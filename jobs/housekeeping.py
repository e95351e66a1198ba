"""spark-submit entry point: `spark-submit --packages io.delta:delta-spark_2.13:4.0.1 jobs/housekeeping.py --conf conf/local.yaml [--date YYYY-MM-DD]`.

Thin by design: the arguments are those of `seqlake housekeeping` (see `seqlake housekeeping --help`).
"""
import sys

from seqlake.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("housekeeping", sys.argv[1:]))
