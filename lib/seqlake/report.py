"""``seqlake report``: one self-contained HTML page about a source's night D and the nights before.

What a reader of the propensity tables wants to see at a glance, each as a chart with its
figures beside it: the latest realised evaluation by decile (predicted against realised, and the
same points as a calibration plot), the distribution of D's scores, drift over the last nights
(PSI and OOV shares of the scoring runs), sessions and quarantined records per day, and the
champion against the baselines on its test split (from its MLflow run).

Every figure is aggregated in Spark to at most a few hundred rows before it reaches the driver.
The charts are inline SVG drawn by matplotlib: the page needs no network, no script and no
other file, so it can be mailed, attached to a ticket or served from the lake as it is.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import html
import io
from typing import Callable

import pyspark.sql.functions as F
from pyspark.sql import SparkSession

from seqlake import constants as C
from seqlake import storage, tables, tracking
from seqlake.config import Config, join_path

HISTOGRAM_BINS = 40


class ReportRefused(Exception):
    """D was not scored for the source: there is nothing to report on (exit 3)."""


@dataclasses.dataclass(frozen=True)
class Section:
    title: str
    svg: str | None  # None: no chart, ``note`` says why
    note: str
    rows: list[tuple] = dataclasses.field(default_factory=list)  # the figures beside the chart
    header: tuple = ()


@dataclasses.dataclass(frozen=True)
class ReportResult:
    path: str
    sections: int
    charts: int


def _svg(draw: Callable) -> str:
    """matplotlib figure drawn by ``draw(ax)`` as an inline <svg> element."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    try:
        draw(ax)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        out = io.StringIO()
        fig.savefig(out, format="svg", metadata={"Date": None})  # the same figures, the same bytes
    finally:
        plt.close(fig)
    text = out.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: inline in HTML


def _days_axis(ax, days: list[dt.date]) -> None:
    """Whole days on the x axis (matplotlib would label hours between two nights)."""
    import matplotlib.dates as mdates

    ax.xaxis.set_major_locator(mdates.DayLocator(interval=max(1, len(days) // 8)))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d"))
    ax.set_xlim(min(days) - dt.timedelta(hours=12), max(days) + dt.timedelta(hours=12))


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _deciles(spark: SparkSession, cfg: Config, source: str, day: dt.date) -> list[Section]:
    evaluated = tables.read(spark, cfg, C.PROPENSITY_EVALUATION) if tables.exists(
        spark, cfg, C.PROPENSITY_EVALUATION) else None
    latest = None
    if evaluated is not None:
        latest = (evaluated.filter((F.col(C.SOURCE) == source) & (F.col(C.SCORE_DATE) <= F.lit(day)))
                  .agg(F.max(C.SCORE_DATE)).first()[0])
    if latest is None:
        why = (f"no scored day of {source} up to {day} has been evaluated yet: a day is evaluated once its "
               f"horizon of {cfg.sequences.horizon_days} days has passed (`seqlake evaluate`)")
        return [Section("Predicted against realised, by decile", None, why),
                Section("Calibration", None, why)]
    rows = (evaluated.filter((F.col(C.SOURCE) == source) & (F.col(C.SCORE_DATE) == F.lit(latest)))
            .orderBy("decile").collect())
    deciles = [r["decile"] for r in rows]
    predicted = [r["mean_propensity"] for r in rows]
    realised = [r["purchase_rate"] for r in rows]
    first = rows[0]

    def bars(ax):
        width = 0.4
        ax.bar([d - width / 2 for d in deciles], predicted, width, label="mean propensity", color="#4c72b0")
        ax.bar([d + width / 2 for d in deciles], realised, width, label="purchase rate", color="#dd8452")
        ax.axhline(first["base_rate"], color="grey", linestyle="--", linewidth=1, label="base rate")
        ax.set_xticks(deciles)
        ax.set_xlabel("decile (1 = highest scores)")
        ax.set_ylabel("share of users")
        ax.legend()

    def calibration(ax):
        top = max(max(predicted), max(realised)) * 1.05 or 1.0
        ax.plot([0, top], [0, top], color="grey", linestyle="--", linewidth=1, label="perfect")
        ax.plot(predicted, realised, marker="o", color="#4c72b0", label="deciles")
        ax.set_xlabel("mean predicted propensity")
        ax.set_ylabel("realised purchase rate")
        ax.legend()

    summary = (f"scores of {latest} (model version {first['model_version']}), purchases within "
               f"{first['horizon_days']} days: realised AUC-ROC {_fmt(first['auc_roc'])}, AUC-PR "
               f"{_fmt(first['auc_pr'])}, base rate {_fmt(first['base_rate'])}")
    table = [(r["decile"], r["users"], r["buyers"], _fmt(r["mean_propensity"]), _fmt(r["purchase_rate"]),
              _fmt(r["lift"])) for r in rows]
    return [
        Section("Predicted against realised, by decile", _svg(bars), summary, table,
                ("decile", "users", "buyers", "mean propensity", "purchase rate", "lift")),
        Section("Calibration", _svg(calibration),
                f"log loss {_fmt(first['log_loss'])}, Brier {_fmt(first['brier'])} (scores of {latest})"),
    ]


def _distribution(spark: SparkSession, cfg: Config, source: str, day: dt.date) -> Section:
    scores = tables.read(spark, cfg, C.USER_PROPENSITY).filter(
        (F.col(C.SOURCE) == source) & (F.col(C.SCORE_DATE) == F.lit(day)))
    bins = (scores.groupBy(F.least(F.floor(F.col("propensity") * HISTOGRAM_BINS), F.lit(HISTOGRAM_BINS - 1))
                           .cast("int").alias("bin"))
            .count().orderBy("bin").collect())
    counts = {r["bin"]: r["count"] for r in bins}
    users = sum(counts.values())
    run = (tables.read(spark, cfg, C.SCORE_RUNS)
           .filter((F.col(C.SOURCE) == source) & (F.col(C.SCORE_DATE) == F.lit(day)))
           .orderBy(F.col("finished_at").desc()).first())

    def histogram(ax):
        ax.bar([b / HISTOGRAM_BINS for b in range(HISTOGRAM_BINS)], [counts.get(b, 0) for b in range(HISTOGRAM_BINS)],
               width=1 / HISTOGRAM_BINS, align="edge", color="#4c72b0")
        for name, colour in (("propensity_p10", "#55a868"), ("propensity_p50", "#c44e52"), ("propensity_p90", "#8172b3")):
            ax.axvline(run[name], color=colour, linewidth=1, label=name.split("_")[1])
        ax.set_xlabel("propensity")
        ax.set_ylabel("users")
        ax.set_yscale("log")
        ax.legend()

    note = (f"{users:,} users scored on {day} by model version {run['model_version']}; mean "
            f"{_fmt(run['propensity_mean'])}, p10 {_fmt(run['propensity_p10'])}, median "
            f"{_fmt(run['propensity_p50'])}, p90 {_fmt(run['propensity_p90'])}")
    return Section("Score distribution", _svg(histogram), note)


def _drift(spark: SparkSession, cfg: Config, source: str, first: dt.date, day: dt.date) -> Section:
    runs = (tables.read(spark, cfg, C.SCORE_RUNS)
            .filter((F.col(C.SOURCE) == source) & F.col(C.SCORE_DATE).between(F.lit(first), F.lit(day)))
            .groupBy(C.SCORE_DATE)
            .agg(F.max_by("psi", "finished_at").alias("psi"), F.max_by("max_oov_share", "finished_at").alias("oov"),
                 F.max_by("empty_share", "finished_at").alias("empty"),
                 F.max_by("warnings", "finished_at").alias("warnings"))
            .orderBy(C.SCORE_DATE).collect())
    days = [r[C.SCORE_DATE] for r in runs]

    def lines(ax):
        psi = [(d, r["psi"]) for d, r in zip(days, runs) if r["psi"] is not None]
        if psi:
            ax.plot([d for d, _ in psi], [v for _, v in psi], marker="o", label="PSI against the night before")
        ax.plot(days, [r["oov"] for r in runs], marker="s", label="largest OOV share")
        ax.plot(days, [r["empty"] for r in runs], marker="^", label="users with no known event")
        ax.axhline(cfg.scoring.warn_psi, color="grey", linestyle="--", linewidth=1, label="PSI warning")
        ax.set_xlabel("scored day")
        ax.legend()
        _days_axis(ax, days)

    table = [(d, _fmt(r["psi"]), _fmt(r["oov"]), _fmt(r["empty"]), "; ".join(r["warnings"]) or "-")
             for d, r in zip(days, runs)]
    return Section("Drift over the last nights", _svg(lines), f"{len(runs)} scored nights in the {(day - first).days + 1} up to {day}",
                   table, ("day", "PSI", "largest OOV share", "empty share", "warnings"))


def _volumes(spark: SparkSession, cfg: Config, source: str, first: dt.date, day: dt.date) -> Section:
    window = F.col(C.SESSION_DATE).between(F.lit(first), F.lit(day))
    sessions = {r[0]: r[1] for r in tables.read(spark, cfg, C.SESSIONS)
                .filter((F.col(C.SOURCE) == source) & window).groupBy(C.SESSION_DATE).count().collect()}
    quarantined = {}
    if tables.exists(spark, cfg, C.EVENTS_QUARANTINE):
        quarantined = {r[0]: r[1] for r in tables.read(spark, cfg, C.EVENTS_QUARANTINE)
                       .filter((F.col(C.SOURCE) == source) & F.col(C.RUN_DATE).between(F.lit(first), F.lit(day)))
                       .groupBy(C.RUN_DATE).count().collect()}
    start = min([*sessions, *quarantined, day])  # not before the lake's first day
    days = [start + dt.timedelta(days=i) for i in range((day - start).days + 1)]

    def bars(ax):
        ax.bar(days, [sessions.get(d, 0) for d in days], color="#4c72b0", label="sessions")
        ax.set_ylabel("sessions")
        other = ax.twinx()
        other.plot(days, [quarantined.get(d, 0) for d in days], color="#c44e52", marker="o", label="quarantined")
        other.set_ylabel("quarantined records")
        ax.set_xlabel("day")
        handles = ax.get_legend_handles_labels()[0] + other.get_legend_handles_labels()[0]
        ax.legend(handles, [h.get_label() for h in handles])
        _days_axis(ax, days)

    table = [(d, sessions.get(d, 0), quarantined.get(d, 0)) for d in days]
    return Section("Sessions and quarantine per day", _svg(bars),
                   f"sessions by start day, records quarantined by the run of the day ({C.EVENTS_QUARANTINE})",
                   table, ("day", "sessions", "quarantined"))


def _champion(cfg: Config) -> Section:
    from mlflow import MlflowClient

    tracking.setup(cfg)
    current = tracking.champion_version(cfg)
    if current is None:
        return Section("Champion against the baselines", None,
                       f"no champion of {cfg.mlflow.registered_model} yet (`seqlake train`)")
    metrics = MlflowClient().get_run(current.run_id).data.metrics
    names = sorted({k[len("test_"):].rsplit("_auc_roc", 1)[0] for k in metrics
                    if k.startswith("test_") and k.endswith("_auc_roc") and k != "test_auc_roc"},
                   key=lambda n: (n != "model", n))
    kinds = ("auc_roc", "auc_pr", "log_loss", "brier")

    def bars(ax):
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            ax.bar([k + i * width for k in range(2)], [metrics[f"test_{name}_{m}"] for m in kinds[:2]], width,
                   label=name)
        ax.set_xticks([k + width * (len(names) - 1) / 2 for k in range(2)], ["AUC-ROC", "AUC-PR"])
        ax.set_ylabel("on the test split")
        ax.legend()

    table = [(name, *[_fmt(metrics.get(f"test_{name}_{m}")) for m in kinds]) for name in names]
    return Section("Champion against the baselines", _svg(bars),
                   f"champion: {cfg.mlflow.registered_model} version {current.version} (MLflow run {current.run_id})",
                   table, ("scorer", "AUC-ROC", "AUC-PR", "log loss", "Brier"))


def _page(source: str, day: dt.date, sections: list[Section]) -> str:
    def table(section: Section) -> str:
        if not section.rows:
            return ""
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in section.header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
                       for row in section.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    parts = []
    for s in sections:
        chart = f'<div class="chart">{s.svg}</div>' if s.svg else '<p class="missing">no chart</p>'
        parts.append(f'<section><h2>{html.escape(s.title)}</h2>{chart}<p>{html.escape(s.note)}</p>{table(s)}</section>')
    made = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>seqlake report: {html.escape(source)} {day}</title>
<style>
body {{ font-family: sans-serif; margin: 2em auto; max-width: 60em; color: #222; }}
section {{ margin-bottom: 2.5em; }} .chart svg {{ width: 100%; height: auto; }}
table {{ border-collapse: collapse; font-size: 0.9em; }} td, th {{ border: 1px solid #ccc; padding: 0.2em 0.6em; }}
.missing {{ color: #a33; }}
</style></head><body>
<h1>seqlake: {html.escape(source)}, night of {day}</h1>
<p>Made {made} from the lake's tables and the MLflow registry.</p>
{"".join(parts)}
</body></html>
"""


def default_path(cfg: Config, source: str, day: dt.date) -> str:
    return join_path(cfg.lake.root, "_reports", source, f"report-{day}.html")


def build(spark: SparkSession, cfg: Config, *, source: str, day: dt.date, nights: int = 14,
          out: str | None = None) -> ReportResult:
    """Write the report of ``source``'s night ``day`` (and the ``nights`` nights up to it) to
    ``out`` (default: ``<lake.root>/_reports/<source>/report-<day>.html``), replacing it."""
    scored = tables.exists(spark, cfg, C.USER_PROPENSITY) and tables.read(spark, cfg, C.USER_PROPENSITY).filter(
        (F.col(C.SOURCE) == source) & (F.col(C.SCORE_DATE) == F.lit(day))).limit(1).count() > 0
    if not scored:
        raise ReportRefused(f"{day} was not scored for source {source!r}: run `seqlake score --source {source} "
                            f"--date {day}` first")
    first = day - dt.timedelta(days=nights - 1)
    sections = [*_deciles(spark, cfg, source, day), _distribution(spark, cfg, source, day),
                _drift(spark, cfg, source, first, day), _volumes(spark, cfg, source, first, day), _champion(cfg)]
    page = _page(source, day, sections).encode("utf-8")
    path = out or default_path(cfg, source, day)
    filesystem, where = storage.arrow_filesystem(path, storage.hadoop_conf_of(spark))
    parent = where.rsplit("/", 1)[0]
    if parent:
        filesystem.create_dir(parent, recursive=True)
    with filesystem.open_output_stream(where) as stream:
        stream.write(page)
    return ReportResult(path=path, sections=len(sections), charts=sum(s.svg is not None for s in sections))
