"""Progress lines for long work: stage, rows, elapsed."""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Iterator

log = logging.getLogger("seqlake")


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    # py4j and Spark's Python side are chatty at INFO.
    logging.getLogger("py4j").setLevel(logging.WARNING)


@contextlib.contextmanager
def stage(name: str) -> Iterator[dict]:
    """Log the start and end of a stage with its elapsed time; put counts into the yielded dict."""
    info: dict = {}
    start = time.monotonic()
    log.info("[%s] started", name)
    try:
        yield info
    finally:
        extra = " ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in info.items())
        log.info("[%s] done in %.1fs %s", name, time.monotonic() - start, extra)
