"""Vocab fit, one training snapshot and one nightly state update against the lower-bound job.

On the generated set of ``bench_ingest_sessionize.py`` (default 10M events; generated, ingested
and sessionized first when its lake is missing, untimed), each in a fresh JVM on ``local[2]``:
  1. lower bound: read the raw JSON, repartition by user, sort within partitions, write Parquet
     (the same job as the ingest benchmark, rerun here so the ratio is measured side by side);
  2. ``vocab fit`` on the first three weeks;
  3. one training snapshot (all history before the cutoff, labels, 50-event arrays);
  4. one nightly ``state`` update (the last day folded into the state of the day before; the
     rebuild it needs is run first, after the fit, and not timed).
It prints events per second, snapshot / lower bound (target <= 2.0), nightly update / snapshot
(target < 0.20), and the peak resident memory of each driver (target < 2 GB), and writes
bench/results/encoding-<time>.{json,md}.

    .venv/bin/python bench/bench_encoding.py --size 10000000
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ingest_sessionize import (  # noqa: E402
    REPO, bench_settings, child, generate_once, jvm_peak_rss_mb, save_results,
)

SOURCE = "generator"


def run_job(job: str, work: Path, date_from: str, date_to: str, driver_memory: str) -> dict:
    """Run one job in this (child) process and return its measurements."""
    from seqlake.config import load_config
    from seqlake.spark import build_spark

    cfg = load_config(REPO / "conf" / "local.yaml", bench_settings(work, driver_memory))
    spark = build_spark(cfg)
    first, last = dt.date.fromisoformat(date_from), dt.date.fromisoformat(date_to)
    info: dict = {}
    if job == "prepare":
        # Untimed: the lake of ingest + sessionize, and the state of the day before the last.
        from seqlake import tables, constants as C
        from seqlake.ingest import ingest
        from seqlake.sessionize import sessionize
        from seqlake.sources import load_source
        from seqlake.state import update_state

        if not tables.has_rows(spark, cfg, C.SESSION_EVENTS, f"event_date = '{last}'"):
            ingest(spark, cfg, load_source(cfg.ingest.sources_dir, SOURCE), window_start=first, window_end=last)
            sessionize(spark, cfg, source=SOURCE, date_from=first, date_to=last)
    if job == "state_base":
        from seqlake.state import update_state

        update_state(spark, cfg, source=SOURCE, day=last - dt.timedelta(days=1), rebuild=True)
    start = time.monotonic()
    if job == "lower_bound":
        from bench_ingest_sessionize import run_job as ingest_bench_job

        spark.stop()
        return ingest_bench_job("lower_bound", work, date_from, date_to, driver_memory)
    if job == "vocab":
        from seqlake.vocab import fit

        result = fit(spark, cfg, source=SOURCE, fit_from=first, fit_to=first + dt.timedelta(days=20))
        info.update(version=result.vocab_version, tokens=result.tokens)
    elif job == "snapshot":
        from seqlake import vocab
        from seqlake.sequences import build_snapshot

        cutoff = last - dt.timedelta(days=cfg.sequences.horizon_days - 1)
        result = build_snapshot(spark, cfg, source=SOURCE, cutoff=cutoff, vocabulary=vocab.load(spark, cfg, SOURCE))
        info.update(cutoff=str(cutoff), users=result.users, positives=result.positives)
    elif job == "nightly":
        from seqlake.state import update_state

        result = update_state(spark, cfg, source=SOURCE, day=last)
        info.update(mode=result.mode, events_in=result.events_in, users_updated=result.users_updated)
    info["seconds"] = time.monotonic() - start
    info["jvm_peak_rss_mb"] = jvm_peak_rss_mb(spark)
    spark.stop()
    info["python_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return info


def events_before(work: Path, cutoff: dt.date) -> int:
    """Events the snapshot reads (all days before the cutoff), from the generator's manifest."""
    manifest = json.loads((work / "landing" / "truth" / SOURCE / "manifest.json").read_text())
    per_day = manifest.get("events_per_day") or {}
    return sum(n for day, n in per_day.items() if dt.date.fromisoformat(day) < cutoff)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=10_000_000, help="generated events (default: %(default)s)")
    parser.add_argument("--work", default="/tmp/seqlake-bench", help="scratch folder shared with the ingest benchmark")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--driver-memory", default="2g", help="spark.driver.memory of every job (default: %(default)s)")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--from", dest="date_from", help=argparse.SUPPRESS)
    parser.add_argument("--to", dest="date_to", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        from seqlake.progress import configure_logging

        configure_logging()  # stage timings on the child's stderr
        print("RESULT " + json.dumps(run_job(args.job, Path(args.work), args.date_from, args.date_to,
                                             args.driver_memory)))
        return

    work = Path(args.work) / f"events-{args.size}"
    work.mkdir(parents=True, exist_ok=True)
    print(f"== {args.size:,} events: generating (reused when present)", flush=True)
    gen = generate_once(work, args.size, args.seed)
    span = (gen["first_date"], gen["last_date"])
    for table in ("vocab", "vocab_versions", "user_sequences", "user_state", "state_runs", "run_metrics"):
        subprocess.run(["rm", "-rf", str(work / "lake" / table)], check=True)
    print("== prepare (untimed): ingest + sessionize when missing", flush=True)
    child("prepare", work, *span, args.driver_memory, script=__file__)
    measured = {}
    for job in ("lower_bound", "vocab", "state_base", "snapshot", "nightly"):
        print(f"== {job}" + (" (untimed: the state of the day before the last)" if job == "state_base" else ""),
              flush=True)
        result = child(job, work, *span, args.driver_memory, script=__file__)
        if job != "state_base":
            measured[job] = result
        print(f"   {result}", flush=True)

    cutoff = dt.date.fromisoformat(measured["snapshot"]["cutoff"])
    snapshot_events = events_before(work, cutoff)
    row = {
        "events": gen["events"],
        "snapshot_events_read": snapshot_events,
        "lower_bound_s": measured["lower_bound"]["seconds"],
        "vocab_fit_s": measured["vocab"]["seconds"],
        "snapshot_s": measured["snapshot"]["seconds"],
        "nightly_s": measured["nightly"]["seconds"],
        "snapshot_events_per_s": snapshot_events / measured["snapshot"]["seconds"] if snapshot_events else None,
        "snapshot_ratio_to_lower_bound": measured["snapshot"]["seconds"] / measured["lower_bound"]["seconds"],
        "nightly_share_of_snapshot": measured["nightly"]["seconds"] / measured["snapshot"]["seconds"],
        "jvm_peak_rss_mb": max(m["jvm_peak_rss_mb"] for m in measured.values()),
        "python_driver_peak_rss_mb": max(m["python_peak_rss_mb"] for m in measured.values()),
        "detail": measured,
    }
    header = ("| events | lower bound s | vocab fit s | snapshot s | nightly s | snapshot events/s "
              "| snapshot / lower bound (target <= 2.0) | nightly / snapshot (target < 0.20) "
              "| JVM driver peak RSS MB | Python driver peak RSS MB |")
    eps = f"{row['snapshot_events_per_s']:,.0f}" if row["snapshot_events_per_s"] else "n/a"
    table = "\n".join([
        header, "|" + "---|" * 10,
        f"| {row['events']:,} | {row['lower_bound_s']:.1f} | {row['vocab_fit_s']:.1f} | {row['snapshot_s']:.1f} | "
        f"{row['nightly_s']:.1f} | {eps} | {row['snapshot_ratio_to_lower_bound']:.2f} | "
        f"{row['nightly_share_of_snapshot']:.2f} | {row['jvm_peak_rss_mb']:.0f} | {row['python_driver_peak_rss_mb']:.0f} |",
    ])
    save_results("encoding", row, table)


if __name__ == "__main__":
    main()
