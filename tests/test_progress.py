"""Progress of a long stage: Spark's task counts are reported while it runs, then a summary."""
from __future__ import annotations

import logging
import re
import time

from seqlake import progress


def test_a_running_stage_reports_spark_tasks_done_of_total(spark, monkeypatch, caplog):
    monkeypatch.setattr(progress, "PROGRESS_EVERY_S", 0.5)

    def slow(rows):
        time.sleep(1.0)
        return rows

    with caplog.at_level(logging.INFO, logger="seqlake"):
        with progress.stage("slow job") as info:
            info["rows"] = spark.sparkContext.parallelize(range(8), 8).mapPartitions(slow).count()
    lines = [r.getMessage() for r in caplog.records]
    running = [line for line in lines if re.fullmatch(r"\[slow job\] 1 stage running: \d of 8 tasks done, \d+s", line)]
    assert running, lines
    done = [int(re.search(r"(\d) of 8", line).group(1)) for line in running]
    assert done == sorted(done) and done[0] < 8  # reported while tasks were still running
    assert re.fullmatch(r"\[slow job\] done in \d+\.\ds rows=8", lines[-1])
    assert progress.spark_tasks() is None  # nothing runs between jobs
