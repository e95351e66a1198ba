"""Progress lines for long work: stage, rows, elapsed, and Spark's tasks while a stage runs."""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import Iterator

log = logging.getLogger("seqlake")

# How often a running stage reports Spark's task counts.
PROGRESS_EVERY_S = 5.0


def configure_logging(verbose: bool = False) -> None:
    """Our lines only, unless ``verbose``: TensorFlow's C++ start-up lines off (set before it is
    imported, and inherited by Spark's Python workers), py4j quiet."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # its notice is one more line per process
    # py4j and Spark's Python side are chatty at INFO.
    logging.getLogger("py4j").setLevel(logging.WARNING)


def spark_tasks() -> tuple[int, int, int] | None:
    """(stages running, tasks done, tasks in them) of the running Spark application's active
    stages, or None without one (or between jobs)."""
    from pyspark import SparkContext

    sc = SparkContext._active_spark_context
    if sc is None:
        return None
    tracker = sc.statusTracker()
    infos = [info for info in (tracker.getStageInfo(i) for i in tracker.getActiveStageIds()) if info]
    if not infos:
        return None
    return len(infos), sum(i.numCompletedTasks for i in infos), sum(i.numTasks for i in infos)


def _report(name: str, start: float, done: threading.Event) -> None:
    while not done.wait(PROGRESS_EVERY_S):
        try:
            tasks = spark_tasks()
        except Exception:  # the session stopping under us: nothing to report
            return
        if tasks:
            stages, finished, total = tasks
            log.info("[%s] %d stage%s running: %d of %d tasks done, %.0fs", name, stages,
                     "s" if stages > 1 else "", finished, total, time.monotonic() - start)


@contextlib.contextmanager
def stage(name: str) -> Iterator[dict]:
    """Log the start and end of a stage with its elapsed time, and Spark's task progress every
    ``PROGRESS_EVERY_S`` while it runs; put counts into the yielded dict."""
    info: dict = {}
    start = time.monotonic()
    log.info("[%s] started", name)
    done = threading.Event()
    reporter = threading.Thread(target=_report, args=(name, start, done), daemon=True)
    reporter.start()
    try:
        yield info
    finally:
        done.set()
        extra = " ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in info.items())
        log.info("[%s] done in %.1fs %s", name, time.monotonic() - start, extra)
