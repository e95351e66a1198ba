"""Floors under two of the suite's targets: the least work each target's stage must do, timed.

A target ratio below its floor cannot be met by any implementation of the stage that does that
work on this engine and machine, so these figures tell a slow implementation from an
unreachable target. Each job runs in a fresh Python and JVM on ``local[2]``, in one run:

  lower_bound       the suite's yardstick (read the raw JSON, repartition by user, sort, write Parquet)
  ingest_floor      read the raw JSON with the JSON reader and write it as a Delta table partitioned
                    by day: no text lines kept, no checks, ids, quarantine, de-duplication or audit
  sessionize_floor  read that table, assign sessions (a gap and a running max over each user's
                    events in one sort), write them as Delta by day, then the per-session aggregate
                    as Delta: no tail of the day before, cap, MERGE or audit
  sequences         the suite's training snapshot (the denominator of the nightly target)
  nightly_floor     ``seqlake state`` for the last day, the real code, on a day reduced to the events
                    of --floor-users users: what a night costs with almost nothing to fold

    .venv/bin/python bench/floors.py --size 10000000

Targets they bound: (ingest + sessionize) / lower bound <= 2.0 (issue 2) against
(ingest_floor + sessionize_floor) / lower bound; state_nightly / sequences < 0.20 (issue 3)
against nightly_floor / sequences. The third floor, DuckDB's SQL on Spark against DuckDB (issue
7), runs in bench/run.py beside the peer. Prerequisites (untimed) build the lake first: ingest,
sessionize and vocab (skipped with --lake-ready, for a lake bench/run.py left under --work), and
always the state bootstrap to the day before the last. Results: bench/results/floors-<time>.{json,md}.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as suite  # noqa: E402
from bench_ingest_sessionize import REPO, generate_once, jvm_peak_rss_mb, save_results  # noqa: E402
from bench_ingest_sessionize import child as run_child  # noqa: E402

FLOOR_STAGES = ("ingest_floor", "sessionize_floor", "nightly_floor")


def run_floor(stage: str, work: Path, first: dt.date, last: dt.date, driver_memory: str, floor_users: int) -> dict:
    import pyspark.sql.functions as F
    from pyspark.sql import Window

    from seqlake.config import load_config
    from seqlake.spark import build_spark

    cfg = load_config(REPO / "conf" / "local.yaml",
                      suite.child_settings(work, driver_memory, work / "eventlog"))
    spark = build_spark(cfg)
    floors = work / "floors"
    # No per-file column statistics on the floors' tables (Delta records the first 32 columns'
    # by default; ours keep two): the floor must not pay for what ours does not.
    spark.conf.set("spark.databricks.delta.properties.defaults.dataSkippingNumIndexedCols", "0")
    # Created anew, so that the default applies (an overwrite keeps an existing table's properties).
    for table in {"ingest_floor": ["events"], "sessionize_floor": ["session_events", "sessions"]}.get(stage, []):
        subprocess.run(["rm", "-rf", str(floors / table)], check=True)
    info: dict = {}
    counted: dict[str, Path] = {}  # tables whose rows are counted after the clock stops
    start = time.monotonic()
    if stage == "ingest_floor":
        raw = spark.read.schema(
            "user_id string, ts string, event_type string, item_id string, category_id string, "
            "category_path string, brand string, price double, session string"
        ).json(f"{cfg.lake.landing_root}/raw/generator/dt=*/*.jsonl")
        events = raw.withColumn("ts", F.col("ts").cast("timestamp")).withColumn("event_date", F.to_date("ts"))
        events.write.format("delta").mode("overwrite").partitionBy("event_date").save(str(floors / "events"))
        counted = {"units": floors / "events"}
    elif stage == "sessionize_floor":
        gap_us = cfg.sessionize.gap_minutes * 60_000_000
        by_user = Window.partitionBy("user_id").orderBy("event_date", "ts", "item_id")
        so_far = by_user.rowsBetween(Window.unboundedPreceding, Window.currentRow)
        previous = F.lag("ts").over(by_user)
        starts = previous.isNull() | (F.unix_micros("ts") - F.unix_micros(previous) > gap_us)
        assigned = (
            spark.read.format("delta").load(str(floors / "events")).repartition("user_id")
            .withColumn("session_start", F.max(F.when(starts, F.col("ts"))).over(so_far))
            .withColumn("session_id", F.substring(F.sha2(F.concat_ws(
                "|", "user_id", F.unix_micros("session_start").cast("string")), 256), 1, 32))
        )
        assigned.write.format("delta").mode("overwrite").partitionBy("event_date").save(str(floors / "session_events"))
        sessions = (
            spark.read.format("delta").load(str(floors / "session_events"))
            .groupBy("user_id", "session_id")
            .agg(F.min("ts").alias("first_ts"), F.max("ts").alias("last_ts"), F.count(F.lit(1)).alias("n_events"),
                 F.sum(F.when(F.col("event_type") == "purchase", F.col("price"))).alias("revenue"))
            .withColumn("session_date", F.to_date("first_ts"))
        )
        sessions.write.format("delta").mode("overwrite").partitionBy("session_date").save(str(floors / "sessions"))
        counted = {"units": floors / "session_events", "sessions": floors / "sessions"}
    elif stage == "nightly_floor":
        from seqlake import state

        # The first users of the day (by id) stand for a day with almost nothing to fold; the
        # run is otherwise the nightly's own code on the same lake and state.
        day_events = state.session_events(spark, cfg, suite.SOURCE).filter(F.col("event_date") == F.lit(last))
        users = [r[0] for r in day_events.select("user_id").distinct().orderBy("user_id").limit(floor_users).collect()]
        full = state.session_events
        state.session_events = lambda spark, cfg, source: full(spark, cfg, source).filter(
            (F.col("event_date") != F.lit(last)) | F.col("user_id").isin(users))
        start = time.monotonic()  # the selection above is not part of a night
        r = state.update_state(spark, cfg, source=suite.SOURCE, day=last)
        info.update(units=r.events_in, users_updated=r.users_updated, users=r.users_total, mode=r.mode)
    else:
        raise SystemExit(f"unknown floor stage {stage}")
    info["seconds"] = time.monotonic() - start
    info.update({name: spark.read.format("delta").load(str(path)).count() for name, path in counted.items()})
    info["jvm_peak_rss_mb"] = jvm_peak_rss_mb(spark)
    spark.stop()
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=10_000_000, help="generated events (default: %(default)s)")
    parser.add_argument("--work", default="/tmp/seqlake-bench", help="scratch folder (generated data is reused)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--driver-memory", default="1g", help="spark.driver.memory of every job (default: %(default)s)")
    parser.add_argument("--floor-users", type=int, default=10, help="users left on the nightly floor's day")
    parser.add_argument("--lake-ready", action="store_true",
                        help="the lake under --work already holds events, session_events and a vocabulary")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--from", dest="date_from", help=argparse.SUPPRESS)
    parser.add_argument("--to", dest="date_to", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        from seqlake.progress import configure_logging

        configure_logging()
        first, last = dt.date.fromisoformat(args.date_from), dt.date.fromisoformat(args.date_to)
        work = Path(args.work)
        if args.job in FLOOR_STAGES:
            result = run_floor(args.job, work, first, last, args.driver_memory, args.floor_users)
        else:
            result = suite.run_stage(args.job, work, first, last, args.driver_memory)
        print("RESULT " + json.dumps(result, default=str))
        return

    work = Path(args.work) / f"events-{args.size}"
    work.mkdir(parents=True, exist_ok=True)
    gen = generate_once(work, args.size, args.seed)

    def child(stage: str) -> dict:
        print(f"== {stage}", flush=True)
        extra = ["--floor-users", str(args.floor_users)]
        result = run_child(stage, work, gen["first_date"], gen["last_date"], args.driver_memory, script=__file__,
                           extra=extra)
        print(f"   {json.dumps(result)}", flush=True)
        return result

    prerequisites = ([] if args.lake_ready else ["ingest", "sessionize", "vocab"]) + ["state_bootstrap"]
    for stage in prerequisites:
        child(stage)
    measured = {stage: child(stage) for stage in
                ("lower_bound", "ingest_floor", "sessionize_floor", "sequences", "nightly_floor")}
    seconds = {stage: m["seconds"] for stage, m in measured.items()}
    ingest_sessionize = (seconds["ingest_floor"] + seconds["sessionize_floor"]) / seconds["lower_bound"]
    nightly = seconds["nightly_floor"] / seconds["sequences"]
    rows = [
        {"target": "(ingest + sessionize) / lower bound", "limit": "<= 2.0",
         "floor": "(ingest_floor + sessionize_floor) / lower bound", "value": round(ingest_sessionize, 3)},
        {"target": "state_nightly / sequences", "limit": "< 0.20",
         "floor": f"nightly_floor ({args.floor_users} users' events) / sequences", "value": round(nightly, 3)},
    ]
    lines = ["| stage | wall s |", "|---|---|"] + [f"| {s} | {v:.1f} |" for s, v in seconds.items()]
    lines += ["", f"{gen['events']:,} events", "", "| target | limit | floor | floor value |", "|---|---|---|---|"]
    lines += [f"| {r['target']} | {r['limit']} | {r['floor']} | {r['value']} |" for r in rows]
    save_results("floors", {"events": gen["events"], "stages": measured, "floors": rows}, "\n".join(lines))


if __name__ == "__main__":
    main()
