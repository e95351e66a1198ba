"""Per-user profiles for analysts: the ``user_profile`` table (``seqlake profile --date D``).

One row per user of the source's ``user_state`` as of D: RFM (recency, frequency, monetary),
session habits (sessions in the last 7 and 30 days, events and minutes per session), top
categories and brands by weighted activity, preferred UTC hour and weekday, a lifecycle
segment, and the day's propensity and decile from ``user_propensity`` when D was scored.

Everything comes from ``user_state`` (one row per user, folded nightly by ``state``), never from
the event history, so a day's run reads one row per user however long the history is. The
state keeps raw counts per event type for each category and brand, so
``profile.activity_weights`` apply here and a change of weights needs no state rebuild.

Lifecycle segment as of D, the first rule that applies (``profile.*`` in the config):
- ``new``: the first event is in the ``new_days`` days ending with D (days_since_first_event < new_days);
- ``active``: the last event is in the ``active_days`` days ending with D;
- ``at_risk``: the last event is in the ``at_risk_days`` days ending with D;
- ``lapsed``: otherwise.

The table is partitioned by (source, profile_date); a run for D replaces exactly D's rows of
its source (Delta ``replaceWhere``), so a rerun gives the same rows.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools

import pyspark.sql.functions as F
from pyspark.sql import Column, DataFrame, SparkSession

from seqlake import constants as C
from seqlake import schemas, state, tables
from seqlake.config import ActivityWeights, Config, ProfileConfig
from seqlake.progress import stage

SEGMENTS = ("new", "active", "at_risk", "lapsed")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
TOP_TOKENS = 3
_MICROS_PER_DAY = 86_400_000_000.0
_MICROS_PER_MINUTE = 60_000_000.0


@dataclasses.dataclass(frozen=True)
class ProfileResult:
    source: str
    profile_date: dt.date
    users: int
    # Users per lifecycle segment, every segment present (0 when empty), in SEGMENTS order.
    by_segment: dict[str, int]
    # Users with a propensity of the day.
    scored: int
    path: str


# --------------------------------------------------------------------------- transformations


def _weighted_activity(counts: Column, weights: ActivityWeights) -> Column:
    """Sum over event types of weight x count; ``counts`` in constants.EVENT_TYPES order."""
    terms = [counts[i] * F.lit(float(getattr(weights, t))) for i, t in enumerate(C.EVENT_TYPES)]
    return functools.reduce(lambda a, b: a + b, terms)


def _top_tokens(count_map: Column, weights: ActivityWeights) -> Column:
    """Up to TOP_TOKENS keys of a token -> counts-per-event-type map (``user_state``'s
    category_counts / brand_counts), by weighted activity highest first, ties by token; tokens
    whose weighted activity is 0 are left out."""
    scored = F.transform(
        F.map_entries(count_map),
        lambda e: F.named_struct(
            # Negated so that an ascending sort puts the highest activity first, then the token.
            F.lit("minus_activity"), -_weighted_activity(e["value"], weights),
            F.lit("token"), e["key"],
        ),
    )
    ranked = F.sort_array(F.filter(scored, lambda s: s["minus_activity"] < 0))
    return F.transform(F.slice(ranked, 1, TOP_TOKENS), lambda s: s["token"])


def _first_max_position(counts: Column) -> Column:
    """1-based position of the largest count, the first one on ties."""
    return F.array_position(counts, F.array_max(counts)).cast("int")


def _sessions_in_days(daily: Column, day: dt.date, days: int) -> Column:
    """Sessions started in the ``days`` days ending with ``day``, from ``user_state.daily``
    (which holds every active day of the 30 ending with the user's last event)."""
    since = day - dt.timedelta(days=days - 1)
    recent = F.filter(daily, lambda d: (d[C.EVENT_DATE] >= F.lit(since)) & (d[C.EVENT_DATE] <= F.lit(day)))
    return F.aggregate(recent, F.lit(0).cast("long"), lambda acc, d: acc + d["sessions"])


def segment_of(days_since_first: Column, days_since_last: Column, settings: ProfileConfig) -> Column:
    """The lifecycle segment (module docstring): the first rule that applies."""
    return (
        F.when(days_since_first < F.lit(settings.new_days), F.lit("new"))
        .when(days_since_last < F.lit(settings.active_days), F.lit("active"))
        .when(days_since_last < F.lit(settings.at_risk_days), F.lit("at_risk"))
        .otherwise(F.lit("lapsed"))
    )


def profiles_from_state(
    user_state: DataFrame, *, profile_date: dt.date, settings: ProfileConfig, propensity: DataFrame
) -> DataFrame:
    """``user_profile`` rows (``schemas.USER_PROFILE``, with its column comments) of
    ``profile_date``, one per ``user_state`` row.

    Preconditions Spark cannot check: ``user_state`` holds every event up to the end of
    ``profile_date`` and none after it (no last_event_date after it); ``propensity`` holds
    ``user_propensity`` rows, at most one per (source, score_date, user_id). Its rows of
    ``profile_date`` are joined; users without one get a null propensity and decile.
    """
    day = F.lit(profile_date)
    # 00:00 UTC after profile_date: a date cast in the session time zone (UTC, spark.py).
    end_of_day = F.lit(profile_date + dt.timedelta(days=1)).cast("timestamp")
    scores = propensity.filter(F.col(C.SCORE_DATE) == day).select(*state.KEY, "propensity", "decile")
    since_first = F.datediff(day, F.to_date("first_ts"))
    since_last = F.datediff(day, F.col("last_event_date"))
    sessions = F.col("n_sessions")
    weights = settings.activity_weights
    profiles = user_state.join(scores, on=state.KEY, how="left").select(
        C.SOURCE,
        day.alias(C.PROFILE_DATE),
        C.USER_ID,
        ((F.unix_micros(end_of_day) - F.unix_micros("last_ts")) / F.lit(_MICROS_PER_DAY)).alias("recency_days"),
        F.col("n_purchases").alias("frequency"),
        "monetary",
        "n_events",
        "n_sessions",
        _sessions_in_days(F.col("daily"), profile_date, 7).alias("sessions_7d"),
        _sessions_in_days(F.col("daily"), profile_date, 30).alias("sessions_30d"),
        # Null rather than a division by zero for a history that starts inside a session.
        F.when(sessions > 0, F.col("n_events") / sessions).alias("avg_session_events"),
        F.when(sessions > 0, F.col("session_micros") / sessions / F.lit(_MICROS_PER_MINUTE))
        .alias("avg_session_minutes"),
        _top_tokens(F.col("category_counts"), weights).alias("top_categories"),
        _top_tokens(F.col("brand_counts"), weights).alias("top_brands"),
        (_first_max_position(F.col("hour_counts")) - 1).alias("preferred_hour"),
        F.element_at(F.array(*[F.lit(d) for d in WEEKDAYS]), _first_max_position(F.col("weekday_counts")))
        .alias("preferred_weekday"),
        since_first.alias("days_since_first_event"),
        since_last.alias("days_since_last_event"),
        segment_of(since_first, since_last, settings).alias("segment"),
        "propensity",
        "decile",
    )
    return profiles.select(*[F.col(f.name).alias(f.name, metadata=f.metadata) for f in schemas.USER_PROFILE.fields])


# --------------------------------------------------------------------------- the run


def build_profiles(spark: SparkSession, cfg: Config, *, source: str, day: dt.date) -> ProfileResult:
    """Write the ``user_profile`` rows of ``source`` for ``day`` (replacing them).

    The state of ``source`` must hold exactly ``day`` (``seqlake state --date D`` ran last for
    D): a state behind it would miss the day's events, one ahead of it would leak later events
    into the profile. Raises ``state.StateGap`` otherwise. A day that was not scored (or no
    ``user_propensity`` table yet) gives null propensities.
    """
    held = state.current_state(spark, cfg, source)
    if held is None or held.state_date != day:
        # Behind: the first missing step of the days up to D. Ahead: only a rebuild takes the
        # state back to D.
        raise state.StateGap(
            f"profiles of {day} need the state of source {source!r} as of {day}, but it holds "
            f"{held.state_date if held else 'nothing'}; {state.missing_step(spark, cfg, source, day)}"
        )
    user_state = tables.read(spark, cfg, C.USER_STATE).filter(F.col(C.SOURCE) == source)
    propensity = tables.read(spark, cfg, C.USER_PROPENSITY, schemas.USER_PROPENSITY).filter(
        F.col(C.SOURCE) == source
    )
    rows = profiles_from_state(user_state, profile_date=day, settings=cfg.profile, propensity=propensity)
    where = f"source = '{source}' AND profile_date = '{day}'"
    with stage(f"profile: {source} as of {day}") as info:
        tables.replace_where(rows, cfg, C.USER_PROFILE, where, partition_by=[C.SOURCE, C.PROFILE_DATE])
        summary = (
            tables.read(spark, cfg, C.USER_PROFILE)
            .filter(where)
            .groupBy("segment")
            .agg(F.count(F.lit(1)).alias("users"), F.count("propensity").alias("scored"))
            .collect()  # at most four rows
        )
        by_segment = {name: 0 for name in SEGMENTS} | {r["segment"]: r["users"] for r in summary}
        users, scored = sum(by_segment.values()), sum(r["scored"] for r in summary)
        info.update(users=users, scored=scored)
    return ProfileResult(source, day, users, by_segment, scored, cfg.table_path(C.USER_PROFILE))
