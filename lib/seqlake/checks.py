"""Checks that end a night: did every stage of day D run, balance and leave its rows?

``night(spark, cfg, source, day)`` reads only the run-audit tables and day D's partitions
(never all history) and returns one ``Check`` per rule; ``seqlake check --date D`` prints them
and exits 3 if any failed, which fails the nightly DAG run. The rules:

- ingest: the latest ingest run covering D succeeded, its rows balance (read = written +
  quarantined + duplicates) and its quarantined share is within ``ingest.quarantine_threshold``;
  for a one-day run, ``events`` holds exactly the rows it wrote for D.
- sessionize: the latest sessionize run covering D balanced (events in = sessionized + capped)
  and, for a one-day run, read every event of D (it ran after the day's last ingest).
- state: ``user_state`` holds exactly D.
- score: ``user_propensity`` holds D's rows, as many as D's latest scoring run reported.
- profile: ``user_profile`` holds D's rows, one per user of the state.

A check that fails because a step never ran ends with the first missing step of the night and
the command that mends it (``state.missing_step``), the same advice the stages give.

``landed(cfg, source, day)`` tells whether the day's raw files have arrived (the sensor at
the start of the nightly DAG); it needs no Spark.
"""
from __future__ import annotations

import dataclasses
import datetime as dt

import pyspark.sql.functions as F
from pyspark.sql import SparkSession

from seqlake import constants as C
from seqlake import sessionize, state, tables
from seqlake.config import Config


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _latest_run(spark: SparkSession, cfg: Config, table: str, source: str, start: str, end: str, day: dt.date):
    """The newest audit row of ``table`` whose [start, end] window covers ``day``, or None."""
    if not tables.exists(spark, cfg, table):
        return None
    return (
        tables.read(spark, cfg, table)
        .filter((F.col(C.SOURCE) == source) & (F.col(start) <= F.lit(day)) & (F.col(end) >= F.lit(day)))
        .orderBy(F.col("finished_at").desc())
        .first()
    )


def _count(spark: SparkSession, cfg: Config, table: str, source: str, date_column: str, day: dt.date) -> int:
    if not tables.exists(spark, cfg, table):
        return 0
    return tables.read(spark, cfg, table).filter(
        (F.col(C.SOURCE) == source) & (F.col(date_column) == F.lit(day))
    ).count()


def check_ingest(spark: SparkSession, cfg: Config, source: str, day: dt.date) -> Check:
    run = _latest_run(spark, cfg, C.INGEST_RUNS, source, "window_start", "window_end", day)
    if run is None:
        return Check("ingest", False, f"no ingest run of {source} covers {day}; "
                     f"run `seqlake ingest --source {source} --date {day}` first")
    accounted = run["rows_written"] + run["rows_quarantined"] + run["duplicates_dropped"] + run["rows_held_back"]
    share = run["rows_quarantined"] / run["rows_read"] if run["rows_read"] else 0.0
    problems = []
    if run["status"] != "ok":
        problems.append(f"run {run['run_id']} {run['status']}: {run['message']}")
    if accounted != run["rows_read"]:
        problems.append(f"rows read {run['rows_read']:,} != written + quarantined + duplicates + held back {accounted:,}")
    if share > cfg.ingest.quarantine_threshold:
        problems.append(f"quarantined share {share:.2%} over ingest.quarantine_threshold "
                        f"{cfg.ingest.quarantine_threshold:.2%}")
    if run["window_start"] == run["window_end"] == day and run["status"] == "ok":
        events = _count(spark, cfg, C.EVENTS, source, C.EVENT_DATE, day)
        if events != run["rows_written"]:
            problems.append(f"events holds {events:,} rows of {day}, the run wrote {run['rows_written']:,}")
    detail = "; ".join(problems) or (
        f"read {run['rows_read']:,} = written {run['rows_written']:,} + quarantined {run['rows_quarantined']:,} "
        f"({share:.2%}) + duplicates {run['duplicates_dropped']:,}"
    )
    return Check("ingest", not problems, detail)


def check_sessionize(spark: SparkSession, cfg: Config, source: str, day: dt.date) -> Check:
    run = _latest_run(spark, cfg, C.SESSIONIZE_RUNS, source, "date_from", "date_to", day)
    if run is None:
        step = sessionize.missing_step(spark, cfg, source, day)
        return Check("sessionize", False, f"no sessionize run of {source} covers {day}; " + (
            str(step) if step else f"run `seqlake sessionize --source {source} --date {day}` first"))
    problems = []
    if run["events_in"] != run["events_sessionized"] + run["events_capped"]:
        problems.append(f"events in {run['events_in']:,} != sessionized {run['events_sessionized']:,} + "
                        f"capped {run['events_capped']:,}")
    if run["date_from"] == run["date_to"] == day:
        events = _count(spark, cfg, C.EVENTS, source, C.EVENT_DATE, day)
        if events != run["events_in"]:
            problems.append(f"the run read {run['events_in']:,} events of {day}, events now holds {events:,} "
                            "(ingested again after sessionize?)")
    detail = "; ".join(problems) or (
        f"{run['events_in']:,} events = {run['events_sessionized']:,} in sessions + {run['events_capped']:,} capped"
    )
    return Check("sessionize", not problems, detail)


def check_state(spark: SparkSession, cfg: Config, source: str, day: dt.date) -> Check:
    held = (tables.read(spark, cfg, C.STATE_RUNS).filter(F.col(C.SOURCE) == source)
            .agg(F.max(C.STATE_DATE).alias("d")).first()["d"]) if tables.exists(spark, cfg, C.STATE_RUNS) else None
    detail = f"user_state holds events up to {held}" if held else f"no state of {source}"
    if held == day:
        return Check("state", True, detail)
    return Check("state", False, f"{detail}; {_advice(spark, cfg, source, day, 'state')}")


def check_score(spark: SparkSession, cfg: Config, source: str, day: dt.date) -> Check:
    rows = _count(spark, cfg, C.USER_PROPENSITY, source, C.SCORE_DATE, day)
    run = _latest_run(spark, cfg, C.SCORE_RUNS, source, C.SCORE_DATE, C.SCORE_DATE, day)
    if run is None or rows == 0:
        return Check("score", False, f"user_propensity holds {rows:,} rows of {day}; scoring runs: "
                     f"{'none' if run is None else run['run_id']}; {_advice(spark, cfg, source, day, 'score')}")
    ok = rows == run["users_scored"]
    return Check("score", ok, f"{rows:,} users scored with model version {run['model_version']}"
                 + ("" if ok else f", but the latest run reported {run['users_scored']:,}"))


def check_profile(spark: SparkSession, cfg: Config, source: str, day: dt.date) -> Check:
    rows = _count(spark, cfg, C.USER_PROFILE, source, C.PROFILE_DATE, day)
    users = (tables.read(spark, cfg, C.USER_STATE).filter(F.col(C.SOURCE) == source).count()
             if tables.exists(spark, cfg, C.USER_STATE) else 0)
    ok = rows > 0 and rows == users
    detail = f"user_profile holds {rows:,} rows of {day} for {users:,} users in the state"
    return Check("profile", ok, detail if ok or rows else f"{detail}; {_advice(spark, cfg, source, day, 'profile')}")


def _advice(spark: SparkSession, cfg: Config, source: str, day: dt.date, command: str) -> str:
    """The first missing step before ``command`` can run for ``day`` (the state must hold it),
    or ``command`` itself."""
    step = state.missing_step(spark, cfg, source, day)
    return str(step) if step else f"run `seqlake {command} --source {source} --date {day}` first"


CHECKS = {
    "ingest": check_ingest, "sessionize": check_sessionize, "state": check_state,
    "score": check_score, "profile": check_profile,
}


def night(spark: SparkSession, cfg: Config, *, source: str, day: dt.date,
          only: tuple[str, ...] = tuple(CHECKS)) -> list[Check]:
    """Every check of ``only`` for ``day``, in pipeline order."""
    unknown = set(only) - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown checks {sorted(unknown)}; expected some of {list(CHECKS)}")
    return [CHECKS[name](spark, cfg, source, day) for name in CHECKS if name in only]


# --------------------------------------------------------------------------- landing


def _filesystem(uri: str, cfg: Config | None = None):
    """(pyarrow FileSystem, path) for a local path or a URI (s3a:// is read as s3://, with the
    endpoint of the configuration's fs.s3a.* settings)."""
    from seqlake import storage

    return storage.arrow_filesystem(uri, storage.hadoop_conf(cfg) if cfg is not None else None)


def landed(cfg: Config, source: str, day: dt.date) -> tuple[bool, str]:
    """Whether the landing folder of ``day`` holds data files (and ``ingest.landing_marker``,
    when one is configured); with a one-line explanation."""
    from pyarrow import fs

    folder = cfg.landing_path(source, day)
    filesystem, path = _filesystem(folder, cfg)
    info = filesystem.get_file_info(path)
    if info.type != fs.FileType.Directory:
        return False, f"{folder} does not exist yet"
    entries = filesystem.get_file_info(fs.FileSelector(path, recursive=True))
    names = [e.base_name for e in entries if e.type == fs.FileType.File]
    data = [n for n in names if not n.startswith(("_", "."))]  # Hadoop's hidden files
    marker = cfg.ingest.landing_marker
    if marker and marker not in names:
        return False, f"{folder} has {len(data)} data files but no {marker} yet"
    if not data:
        return False, f"{folder} has no data files yet"
    return True, f"{folder}: {len(data)} data files" + (f" and {marker}" if marker else "")
