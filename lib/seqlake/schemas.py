"""Explicit schemas of every table seqlake writes. Transformations end with a select in this order.

With ``CONSTRAINTS`` below they are the tables' data contracts: ``tables`` creates each table with
its schema's NOT NULL columns and its CHECK constraints, so Delta refuses a write that breaks them.
"""
import pyspark.sql.types as T

from seqlake import constants as C

EVENTS = T.StructType([
    T.StructField("event_id", T.StringType(), False),
    T.StructField("user_id", T.StringType(), False),
    T.StructField("ts", T.TimestampType(), False),
    T.StructField("event_type", T.StringType(), False),
    T.StructField("item_id", T.StringType(), False),
    T.StructField("category_id", T.StringType(), False),
    T.StructField("category_path", T.StringType(), True),
    T.StructField("brand", T.StringType(), True),
    T.StructField("price", T.DoubleType(), True),
    T.StructField("source_session_id", T.StringType(), True),
    T.StructField("source", T.StringType(), False),
    T.StructField("event_date", T.DateType(), False),
])

EVENTS_QUARANTINE = T.StructType([
    T.StructField("run_id", T.StringType(), False),
    T.StructField("stage", T.StringType(), False),
    T.StructField("source", T.StringType(), False),
    T.StructField("reason", T.StringType(), False),
    T.StructField("detail", T.StringType(), True),
    T.StructField("raw_record", T.StringType(), True),
    T.StructField("source_file", T.StringType(), True),
    T.StructField("user_id", T.StringType(), True),
    T.StructField("event_id", T.StringType(), True),
    T.StructField("event_ts", T.TimestampType(), True),
    # The run's logical date (for ingest: the first day of its window).
    T.StructField("run_date", T.DateType(), False),
])

INGEST_RUNS = T.StructType([
    T.StructField("run_id", T.StringType(), False),
    T.StructField("source", T.StringType(), False),
    T.StructField("window_start", T.DateType(), False),
    T.StructField("window_end", T.DateType(), False),
    T.StructField("inputs", T.ArrayType(T.StringType()), False),
    T.StructField("started_at", T.TimestampType(), False),
    T.StructField("finished_at", T.TimestampType(), False),
    T.StructField("rows_read", T.LongType(), False),
    T.StructField("rows_written", T.LongType(), False),
    T.StructField("rows_quarantined", T.LongType(), False),
    T.StructField("duplicates_dropped", T.LongType(), False),
    T.StructField("rows_held_back", T.LongType(), False),
    T.StructField("quarantined_by_reason", T.MapType(T.StringType(), T.LongType()), False),
    T.StructField("status", T.StringType(), False),
    T.StructField("message", T.StringType(), True),
])

SESSION_EVENTS = T.StructType([
    *EVENTS.fields,
    T.StructField("activity_start", T.TimestampType(), False),
    T.StructField("session_id", T.StringType(), False),
    T.StructField("session_seq", T.IntegerType(), False),
    T.StructField("is_session_start", T.BooleanType(), False),
])

SESSIONS = T.StructType([
    T.StructField("user_id", T.StringType(), False),
    T.StructField("session_id", T.StringType(), False),
    T.StructField("source", T.StringType(), False),
    T.StructField("session_start", T.TimestampType(), False),
    T.StructField("session_end", T.TimestampType(), False),
    T.StructField("duration_seconds", T.DoubleType(), False),
    # Start of the uninterrupted activity (no gap over sessionize.gap_minutes) this session
    # was cut from; equals session_start unless sessionize.max_duration_minutes split it.
    T.StructField("activity_start", T.TimestampType(), False),
    T.StructField("n_events", T.LongType(), False),
    T.StructField("n_view", T.LongType(), False),
    T.StructField("n_cart", T.LongType(), False),
    T.StructField("n_remove_from_cart", T.LongType(), False),
    T.StructField("n_fav", T.LongType(), False),
    T.StructField("n_purchase", T.LongType(), False),
    T.StructField("distinct_items", T.LongType(), False),
    T.StructField("revenue", T.DoubleType(), False),
    T.StructField("has_purchase", T.BooleanType(), False),
    T.StructField("session_date", T.DateType(), False),
])

SESSIONIZE_RUNS = T.StructType([
    T.StructField("run_id", T.StringType(), False),
    T.StructField("source", T.StringType(), False),
    T.StructField("date_from", T.DateType(), False),
    T.StructField("date_to", T.DateType(), False),
    T.StructField("started_at", T.TimestampType(), False),
    T.StructField("finished_at", T.TimestampType(), False),
    T.StructField("events_in", T.LongType(), False),
    T.StructField("events_sessionized", T.LongType(), False),
    T.StructField("events_capped", T.LongType(), False),
    T.StructField("sessions_touched", T.LongType(), False),
])

# --------------------------------------------------------------------------- encoding (issue 3)

# One row per (source, vocab_version, feature, token). Every version holds its whole vocabulary:
# a refit copies the previous version's tokens with their indices and appends new ones.
VOCAB = T.StructType([
    T.StructField("source", T.StringType(), False),
    T.StructField("vocab_version", T.IntegerType(), False),
    T.StructField("feature", T.StringType(), False),
    T.StructField("token", T.StringType(), False),
    T.StructField("index", T.IntegerType(), False),
    # Occurrences in this version's fit window (0 for a kept token not seen in it).
    T.StructField("count", T.LongType(), False),
    # First day the token was seen by any fit of this source's vocabulary.
    T.StructField("first_seen", T.DateType(), False),
])

# One row per (source, vocab_version, feature): how the version was fitted.
VOCAB_VERSIONS = T.StructType([
    T.StructField("source", T.StringType(), False),
    T.StructField("vocab_version", T.IntegerType(), False),
    T.StructField("feature", T.StringType(), False),
    T.StructField("fit_from", T.DateType(), False),
    T.StructField("fit_to", T.DateType(), False),
    T.StructField("oov_buckets", T.IntegerType(), False),
    T.StructField("min_count", T.IntegerType(), False),
    T.StructField("max_size", T.IntegerType(), False),
    T.StructField("tokens", T.IntegerType(), False),
    T.StructField("new_tokens", T.IntegerType(), False),
    # Largest index in use + 1: the embedding input size a model needs.
    T.StructField("cardinality", T.IntegerType(), False),
    T.StructField("created_at", T.TimestampType(), False),
])

DAILY_COUNTS = T.StructType([
    T.StructField("event_date", T.DateType(), False),
    T.StructField("carts", T.LongType(), False),
    T.StructField("purchases", T.LongType(), False),
    # Sessions started that day (a session crossing midnight counts on the day it started).
    T.StructField("sessions", T.LongType(), False),
])

# Event counts per event type, in constants.EVENT_TYPES order.
_TYPE_COUNTS = T.ArrayType(T.LongType(), False)

# Per (source, user): everything a snapshot needs, as of the user's last event. A pure function
# of the user's events, so daily MERGEs and a one-shot computation give identical rows.
USER_STATE = T.StructType([
    T.StructField("source", T.StringType(), False),
    T.StructField("user_id", T.StringType(), False),
    T.StructField("first_ts", T.TimestampType(), False),
    T.StructField("last_ts", T.TimestampType(), False),
    T.StructField("last_event_date", T.DateType(), False),
    T.StructField("n_events", T.LongType(), False),
    T.StructField("n_purchases", T.LongType(), False),
    # Exact decimal so that the sum does not depend on the order days were added in.
    T.StructField("monetary", T.DecimalType(38, 6), False),
    T.StructField("n_sessions", T.LongType(), False),
    T.StructField("active_days", T.LongType(), False),
    # Every active day among the 30 days ending with last_event_date, in date order.
    T.StructField("daily", T.ArrayType(DAILY_COUNTS, False), False),
    # Total session duration: over events continuing a session, the time since the previous
    # event. Whole microseconds, so the sum does not depend on the order days were added in.
    T.StructField("session_micros", T.LongType(), False),
    # Events by UTC hour of ts (24 counts, hour 0 first) and by weekday of event_date (7, Monday first).
    T.StructField("hour_counts", T.ArrayType(T.LongType(), False), False),
    T.StructField("weekday_counts", T.ArrayType(T.LongType(), False), False),
    # Per category_id and per brand (null brand left out): event counts per type. Raw counts, so
    # profile.activity_weights apply at read time and a change of weights needs no rebuild.
    T.StructField("category_counts", T.MapType(T.StringType(), _TYPE_COUNTS, False), False),
    T.StructField("brand_counts", T.MapType(T.StringType(), _TYPE_COUNTS, False), False),
    # Vocabulary version the arrays are encoded with (the nightly fold keeps it; a scoring
    # snapshot for a model of another version needs `state --rebuild --vocab-version V`).
    T.StructField("vocab_version", T.IntegerType(), False),
    # The last sequences.length events in (ts, event_id) order, encoded, not padded.
    *[T.StructField(name, T.ArrayType(T.IntegerType(), False), False)
      for name in ("event_type", "item", "category", "brand", "price_bucket", "gap_bucket", "session_start")],
])

STATE_RUNS = T.StructType([
    T.StructField("run_id", T.StringType(), False),
    T.StructField("source", T.StringType(), False),
    # The state holds every event up to and including this day.
    T.StructField("state_date", T.DateType(), False),
    # bootstrap | incremental | rebuild | noop
    T.StructField("mode", T.StringType(), False),
    T.StructField("vocab_version", T.IntegerType(), False),
    T.StructField("events_in", T.LongType(), False),
    T.StructField("users_updated", T.LongType(), False),
    T.StructField("users_total", T.LongType(), False),
    T.StructField("started_at", T.TimestampType(), False),
    T.StructField("finished_at", T.TimestampType(), False),
])

_INT_ARRAY = T.ArrayType(T.IntegerType(), False)

USER_SEQUENCES = T.StructType([
    T.StructField("source", T.StringType(), False),
    T.StructField("user_id", T.StringType(), False),
    # Cutoff: inputs hold only events before 00:00 UTC of this day.
    T.StructField("snapshot_date", T.DateType(), False),
    T.StructField("vocab_version", T.IntegerType(), False),
    # True events in the arrays (the rest, on the left, is padding 0).
    T.StructField("length", T.IntegerType(), False),
    T.StructField("event_type", _INT_ARRAY, False),
    T.StructField("item", _INT_ARRAY, False),
    T.StructField("category", _INT_ARRAY, False),
    T.StructField("brand", _INT_ARRAY, False),
    T.StructField("price_bucket", _INT_ARRAY, False),
    T.StructField("gap_bucket", _INT_ARRAY, False),
    # 1 where the event opens a session, 0 otherwise and on padding.
    T.StructField("session_start", _INT_ARRAY, False),
    T.StructField("recency_days", T.DoubleType(), False),
    T.StructField("frequency", T.LongType(), False),
    T.StructField("monetary", T.DoubleType(), False),
    T.StructField("n_events", T.LongType(), False),
    T.StructField("n_sessions", T.LongType(), False),
    T.StructField("active_days", T.LongType(), False),
    T.StructField("carts_7d", T.LongType(), False),
    T.StructField("purchases_7d", T.LongType(), False),
    T.StructField("carts_30d", T.LongType(), False),
    T.StructField("purchases_30d", T.LongType(), False),
    # 1 if the user purchases in [snapshot_date, snapshot_date + horizon_days); null for scoring.
    T.StructField("label", T.IntegerType(), True),
    T.StructField("horizon_days", T.IntegerType(), False),
    # train | validation | test, by a hash of user_id: a user is in one split at every cutoff.
    T.StructField("split", T.StringType(), False),
])

RUN_METRICS = T.StructType([
    T.StructField("run_id", T.StringType(), False),
    T.StructField("stage", T.StringType(), False),
    T.StructField("source", T.StringType(), False),
    T.StructField("run_date", T.DateType(), False),
    T.StructField("vocab_version", T.IntegerType(), False),
    T.StructField("feature", T.StringType(), False),
    T.StructField("events", T.LongType(), False),
    T.StructField("null_events", T.LongType(), False),
    T.StructField("oov_events", T.LongType(), False),
    T.StructField("null_share", T.DoubleType(), False),
    T.StructField("oov_share", T.DoubleType(), False),
    T.StructField("recorded_at", T.TimestampType(), False),
])


def _c(name: str, dtype: T.DataType, nullable: bool, comment: str) -> T.StructField:
    """A field whose comment Delta keeps and `DESCRIBE seqlake.<table>` shows analysts."""
    return T.StructField(name, dtype, nullable, {"comment": comment})


REASON = T.StructType([
    _c("event_type", T.StringType(), False, "event type of the events behind the reason"),
    _c("category", T.StringType(), True, "their category id (null: unknown to the model's vocabulary)"),
    _c("events", T.IntegerType(), False, "how many of the user's last events are in this group"),
    _c("within_days", T.IntegerType(), False, "the oldest of them is at most this many days old"),
    _c("impact", T.DoubleType(), False, "drop in propensity when these events are removed (occlusion)"),
    _c("text", T.StringType(), False, "the reason in words"),
])

# One row per (source, score_date, user): the nightly score. Rerun with the same champion: same rows.
USER_PROPENSITY = T.StructType([
    _c("source", T.StringType(), False, "source of the events"),
    _c("score_date", T.DateType(), False, "last day of data in the inputs; predicts purchases from the next day on"),
    _c("user_id", T.StringType(), False, "user id (pseudonymised when pseudonymise.enabled)"),
    _c("propensity", T.DoubleType(), False, "probability of a purchase within horizon_days after score_date"),
    _c("rank", T.LongType(), False, "1 = highest propensity of the day (ties by user_id)"),
    _c("decile", T.IntegerType(), False, "1 = top 10% of the day's users by rank, 10 = bottom"),
    _c("horizon_days", T.IntegerType(), False, "days of the prediction window, starting the day after score_date"),
    _c("model_name", T.StringType(), False, "registered MLflow model"),
    _c("model_version", T.StringType(), False, "its version that held the champion alias"),
    _c("vocab_version", T.IntegerType(), False, "vocabulary version the model was trained and scored with"),
    _c("run_id", T.StringType(), False, "MLflow run that trained the model"),
    _c("reasons", T.ArrayType(REASON, False), False, "up to three top reasons, strongest first"),
])

# One row per scoring run (audit, appended): what was scored with what, and its monitoring.
SCORE_RUNS = T.StructType([
    _c("run_id", T.StringType(), False, "scoring run"),
    _c("source", T.StringType(), False, "source of the events"),
    _c("score_date", T.DateType(), False, "the day scored"),
    _c("model_name", T.StringType(), False, "registered MLflow model"),
    _c("model_version", T.StringType(), False, "champion version used"),
    _c("vocab_version", T.IntegerType(), False, "vocabulary version of the inputs"),
    _c("users_scored", T.LongType(), False, "rows written to user_propensity"),
    _c("propensity_mean", T.DoubleType(), False, "mean propensity"),
    _c("propensity_p10", T.DoubleType(), False, "10th percentile (approximate)"),
    _c("propensity_p50", T.DoubleType(), False, "median (approximate)"),
    _c("propensity_p90", T.DoubleType(), False, "90th percentile (approximate)"),
    _c("psi", T.DoubleType(), True, "population stability index against the previous scored day (null: none)"),
    _c("max_oov_share", T.DoubleType(), False, "largest OOV share of the inputs' events over the features"),
    _c("empty_share", T.DoubleType(), False, "share of users with no event the vocabulary knows"),
    _c("warnings", T.ArrayType(T.StringType(), False), False, "monitoring thresholds exceeded"),
    _c("model_loads", T.LongType(), False, "times a Python worker loaded the model"),
    _c("batches", T.LongType(), False, "Arrow batches scored"),
    _c("mlflow_run_id", T.StringType(), False, "the run in mlflow.scoring_experiment"),
    _c("started_at", T.TimestampType(), False, "UTC"),
    _c("finished_at", T.TimestampType(), False, "UTC"),
])

# One row per (source, score_date, decile): realised performance once the horizon has passed.
PROPENSITY_EVALUATION = T.StructType([
    _c("source", T.StringType(), False, "source of the events"),
    _c("score_date", T.DateType(), False, "the scored day evaluated"),
    _c("decile", T.IntegerType(), False, "1 = top 10% by propensity"),
    _c("users", T.LongType(), False, "users scored in the decile"),
    _c("buyers", T.LongType(), False, "of them, users who purchased within the horizon"),
    _c("mean_propensity", T.DoubleType(), False, "mean predicted propensity in the decile"),
    _c("purchase_rate", T.DoubleType(), False, "realised share of buyers in the decile"),
    _c("lift", T.DoubleType(), True, "purchase_rate over the day's overall rate (null: no buyer at all)"),
    _c("auc_roc", T.DoubleType(), True, "the day's realised AUC-ROC (same on every decile row)"),
    _c("auc_pr", T.DoubleType(), True, "the day's realised AUC-PR"),
    _c("log_loss", T.DoubleType(), False, "the day's log loss"),
    _c("brier", T.DoubleType(), False, "the day's Brier score"),
    _c("base_rate", T.DoubleType(), False, "the day's overall purchase rate"),
    _c("horizon_days", T.IntegerType(), False, "purchases counted in [score_date + 1, score_date + horizon_days]"),
    _c("model_version", T.StringType(), False, "model version that scored the day"),
])

# One row per (source, profile_date, user): every user of the state as of profile_date D, from
# `user_state` alone. A rerun for D gives the same rows.
USER_PROFILE = T.StructType([
    _c("source", T.StringType(), False, "source of the events"),
    _c("profile_date", T.DateType(), False, "the profile holds every event up to the end of this day (UTC)"),
    _c("user_id", T.StringType(), False, "user id (pseudonymised when pseudonymise.enabled)"),
    _c("recency_days", T.DoubleType(), False, "days from the last event to the end of profile_date"),
    _c("frequency", T.LongType(), False, "purchases"),
    _c("monetary", T.DecimalType(38, 6), False, "value of the purchases (sum of their prices; exact)"),
    _c("n_events", T.LongType(), False, "events"),
    _c("n_sessions", T.LongType(), False, "sessions started"),
    _c("sessions_7d", T.LongType(), False, "sessions started in the 7 days ending with profile_date"),
    _c("sessions_30d", T.LongType(), False, "sessions started in the 30 days ending with profile_date"),
    _c("avg_session_events", T.DoubleType(), True, "events per session (null without a session start)"),
    _c("avg_session_minutes", T.DoubleType(), True,
       "mean session duration, first to last event, in minutes (null without a session start)"),
    _c("top_categories", T.ArrayType(T.StringType(), False), False,
       "up to 3 category ids by weighted activity (profile.activity_weights), highest first, ties by id; "
       "activity 0 left out"),
    _c("top_brands", T.ArrayType(T.StringType(), False), False,
       "up to 3 brands by weighted activity, as top_categories (events without a brand left out)"),
    _c("preferred_hour", T.IntegerType(), False, "UTC hour 0-23 with the most events (ties: the earliest)"),
    _c("preferred_weekday", T.StringType(), False, "Monday..Sunday, UTC, with the most events (ties: the earliest)"),
    _c("days_since_first_event", T.IntegerType(), False, "whole days from the first event's UTC date to profile_date"),
    _c("days_since_last_event", T.IntegerType(), False, "whole days from the last event's UTC date to profile_date"),
    _c("segment", T.StringType(), False,
       "lifecycle, first rule that applies: new (days_since_first_event < profile.new_days), active "
       "(days_since_last_event < profile.active_days), at_risk (< profile.at_risk_days), lapsed"),
    _c("propensity", T.DoubleType(), True, "user_propensity of profile_date (null: not scored that day)"),
    _c("decile", T.IntegerType(), True, "its decile, 1 = top 10% (null: not scored that day)"),
])

# Comments of the `events` columns, shared by `session_events` (which carries them all).
_EVENT_COMMENTS = {
    "event_id": "Event id: 32 hex chars (128 bits of SHA-256) over "
                "the source and canonical fields; duplicates share it",
    "user_id": "User id from the source (HMAC-SHA256 pseudonym in hex when pseudonymise.enabled)",
    "ts": "Event time, UTC",
    "event_type": "Canonical event type: view, cart, remove_from_cart, fav or purchase",
    "item_id": "Item (product) id from the source",
    "category_id": "Category id from the source (a source without one maps another column to it)",
    "category_path": "Category path or code from the source, e.g. REES46 category_code (null if none)",
    "brand": "Brand from the source (null if unknown)",
    "price": "Item price as given by the source, in its currency (null if none; never negative)",
    "source_session_id": "Session id the source itself recorded, e.g. REES46 user_session (null if none)",
    "source": "Source name (conf/sources/<name>.yaml) the event was ingested from",
    "event_date": "UTC date of ts (partition column)",
}

# Column comments of the tables whose schemas above carry none; `tables.register` applies the
# missing ones (ALTER COLUMN ... COMMENT) so `DESCRIBE seqlake.<table>` explains every column.
COMMENTS: dict[str, dict[str, str]] = {
    "events": dict(_EVENT_COMMENTS),
    "events_quarantine": {
        "run_id": "Ingest or sessionize run that quarantined the row (a rerun of the window replaces it with its own)",
        "stage": "Stage that rejected the row: ingest or sessionize",
        "source": "Source name the row came from",
        "reason": "Reason code: the first check that failed, e.g. missing_user_id, ts_before_window, user_daily_cap",
        "detail": "What failed, in words, e.g. an excerpt of the offending value",
        "raw_record": "The rejected input line (for user_daily_cap: the "
                      "event as JSON); user ids pseudonymised if enabled",
        "source_file": "Input file the line was read from (null for user_daily_cap rows)",
        "user_id": "User id of the row if it could be read (pseudonymised if enabled), else null",
        "event_id": "Event id, for user_daily_cap rows only (null for ingest rejections, which never became events)",
        "event_ts": "Parsed event time, UTC (null if missing or unparseable)",
        "run_date": "Logical date: ingest, first day of the run window; sessionize, UTC date of the capped event",
    },
    "ingest_runs": {
        "run_id": "Ingest run id",
        "source": "Source name ingested",
        "window_start": "First UTC day of the run window",
        "window_end": "Last UTC day of the run window (inclusive)",
        "inputs": "Paths read: --input as given, else the landing folder of each day of the window",
        "started_at": "Run start, UTC",
        "finished_at": "Run end, UTC (when this row was written)",
        "rows_read": "Non-header input lines: written + quarantined + duplicates dropped + held back",
        "rows_written": "Rows written to events (0 when the run failed its quarantine threshold)",
        "rows_quarantined": "Rows written to events_quarantine",
        "duplicates_dropped": "Exact duplicates of an event written by the run, dropped",
        "rows_held_back": "Valid rows not written because the run exceeded ingest.quarantine_threshold (else 0)",
        "quarantined_by_reason": "Quarantined rows per reason code",
        "status": "ok, or failed (quarantine threshold exceeded or row accounting not balanced)",
        "message": "Why the run failed (null when ok)",
    },
    "session_events": {
        **_EVENT_COMMENTS,
        "activity_start": "Time (UTC) of the first event of the uninterrupted "
                          "activity (no gap over gap_minutes) of the event",
        "session_id": "Session id: 128 bits of SHA-256 over source, user_id, activity_start and slice",
        "session_seq": "1-based position of the event in its session, by (ts, event_id)",
        "is_session_start": "True for the first event of its session",
    },
    "sessions": {
        "user_id": "User id (pseudonymised when pseudonymise.enabled)",
        "session_id": "Session id, as in session_events",
        "source": "Source name of the events",
        "session_start": "Time of the first event of the session, UTC",
        "session_end": "Time of the last event of the session, UTC",
        "duration_seconds": "session_end minus session_start, in seconds (0 for a one-event session)",
        "activity_start": "Start (UTC) of the uninterrupted activity it was "
                          "cut from; session_start unless max_duration split it",
        "n_events": "Events in the session",
        "n_view": "View events in the session",
        "n_cart": "Cart (add to cart) events in the session",
        "n_remove_from_cart": "Remove-from-cart events in the session",
        "n_fav": "Favourite (wishlist) events in the session",
        "n_purchase": "Purchase events in the session",
        "distinct_items": "Distinct item_id values in the session",
        "revenue": "Sum of the prices of the purchase events of the session (a missing price counts 0)",
        "has_purchase": "True if the session has at least one purchase event",
        "session_date": "UTC date of session_start (partition; a session crossing midnight counts on its start day)",
    },
    "sessionize_runs": {
        "run_id": "Sessionize run id",
        "source": "Source name sessionized",
        "date_from": "First UTC day sessionized",
        "date_to": "Last UTC day sessionized (inclusive)",
        "started_at": "Run start, UTC",
        "finished_at": "Run end, UTC (when this row was written)",
        "events_in": "Events of the days read from events: events_sessionized + events_capped",
        "events_sessionized": "Events written to session_events",
        "events_capped": "Events over sessionize.user_daily_cap, quarantined as user_daily_cap",
        "sessions_touched": "Session rows recomputed and upserted (MERGE) into sessions",
    },
    "vocab": {
        "source": "Source name the vocabulary was fitted on (partition)",
        "vocab_version": "Vocabulary version; each version holds the whole vocabulary (partition)",
        "feature": "Encoded feature: event_type, item_id, category_id or brand",
        "token": "Feature value, e.g. an item id",
        "index": "Integer the token encodes to, from 2 + oov_buckets on (0 pad, 1 null, 2 .. 1 + K OOV); never moves",
        "count": "Occurrences in this version fit window (0 for a kept token not seen in it)",
        "first_seen": "First day the token was seen by any fit of this source vocabulary",
    },
    "vocab_versions": {
        "source": "Source name the vocabulary was fitted on",
        "vocab_version": "Vocabulary version",
        "feature": "Encoded feature: event_type, item_id, category_id or brand",
        "fit_from": "First day of the fit window of sessionized events",
        "fit_to": "Last day of the fit window (inclusive)",
        "oov_buckets": "K hashed out-of-vocabulary buckets, indices 2 .. 1 + K (fixed for the life of the vocabulary)",
        "min_count": "Occurrences in the fit window a new token needs to enter the vocabulary",
        "max_size": "Most tokens the vocabulary may hold; later newcomers share the OOV buckets",
        "tokens": "Tokens in this version (kept and new)",
        "new_tokens": "Tokens this version added to the previous one",
        "cardinality": "Largest index in use + 1: the embedding input size a model needs",
        "created_at": "When the version was written, UTC",
    },
    "user_sequences": {
        "source": "Source name of the events (partition)",
        "user_id": "User id (pseudonymised when pseudonymise.enabled)",
        "snapshot_date": "Cutoff: inputs hold only events before 00:00 UTC of this day (partition)",
        "vocab_version": "Vocabulary version the arrays are encoded with",
        "length": "True events in the arrays (at most sequences.length); the rest, on the left, is padding 0",
        "event_type": "Encoded event types of the last events before the cutoff, in time order, left-padded with 0",
        "item": "Encoded item ids of those events (vocab indices), left-padded with 0",
        "category": "Encoded category ids of those events (vocab indices), left-padded with 0",
        "brand": "Encoded brands of those events (vocab indices), left-padded with 0",
        "price_bucket": "Price buckets of those events: 0 pad, 1 null, 2 under 1, then one per power of two",
        "gap_bucket": "Seconds since the previous event, bucketed: 0 pad, "
                      "1 none, 2 under 1 s, then one per power of two",
        "session_start": "1 where the event opens a session, 0 otherwise and on padding",
        "recency_days": "Days (fractional) from the last event to the cutoff, 00:00 UTC of snapshot_date",
        "frequency": "Purchases before the cutoff",
        "monetary": "Sum of the prices of the purchases before the cutoff",
        "n_events": "Events before the cutoff",
        "n_sessions": "Sessions started before the cutoff",
        "active_days": "Distinct UTC days with events before the cutoff",
        "carts_7d": "Cart events in the 7 days before snapshot_date",
        "purchases_7d": "Purchase events in the 7 days before snapshot_date",
        "carts_30d": "Cart events in the 30 days before snapshot_date",
        "purchases_30d": "Purchase events in the 30 days before snapshot_date",
        "label": "1 if the user purchases in [snapshot_date, snapshot_date + horizon_days), else 0; null for scoring",
        "horizon_days": "Days of the label window, starting on snapshot_date",
        "split": "train, validation or test, by a hash of source and user_id: the same at every cutoff (partition)",
    },
    "user_state": {
        "source": "Source name of the events (partition)",
        "user_id": "User id (pseudonymised when pseudonymise.enabled)",
        "first_ts": "Time of the first event of the user, UTC",
        "last_ts": "Time of the last event of the user, UTC",
        "last_event_date": "UTC date of last_ts",
        "n_events": "Events of the user",
        "n_purchases": "Purchase events",
        "monetary": "Sum of the prices of the purchase events (a missing price counts 0), exact decimal",
        "n_sessions": "Sessions started (events that open a session)",
        "active_days": "Distinct UTC days with at least one event",
        "daily": "Each active day of the 30 ending with last_event_date, "
                 "in date order: carts, purchases, sessions started",
        "session_micros": "Total session duration in microseconds: within sessions, the sum of the gaps between events",
        "hour_counts": "Events per UTC hour of ts: 24 counts, hour 0 first",
        "weekday_counts": "Events per weekday of event_date: 7 counts, Monday first",
        "category_counts": "Per category_id: event counts per type, in the "
                           "order view, cart, remove_from_cart, fav, purchase",
        "brand_counts": "Per brand (none for a null brand): event counts per type, in the order of category_counts",
        "vocab_version": "Vocabulary version the arrays are encoded with "
                         "(kept every night; changed by state --rebuild)",
        "event_type": "Encoded event types of the last sequences.length events in (ts, event_id) order, not padded",
        "item": "Encoded item ids of those events (vocab indices), not padded",
        "category": "Encoded category ids of those events (vocab indices), not padded",
        "brand": "Encoded brands of those events (vocab indices), not padded",
        "price_bucket": "Price buckets of those events: 1 null, 2 under 1, then one per power of two",
        "gap_bucket": "Seconds since the previous event, bucketed: 1 none, 2 under 1 s, then one per power of two",
        "session_start": "1 where the event opens a session, else 0",
    },
    "state_runs": {
        "run_id": "State run id",
        "source": "Source name of the state",
        "state_date": "The state holds every event up to and including this UTC day",
        "mode": "bootstrap (first run), incremental (one day folded in), rebuild (from history) or noop (day held)",
        "vocab_version": "Vocabulary version the state arrays are encoded with",
        "events_in": "Events read: the day (incremental) or all history up to state_date (bootstrap, rebuild); 0 noop",
        "users_updated": "User rows written (updated or inserted)",
        "users_total": "User rows of the source in user_state after the run",
        "started_at": "Run start, UTC",
        "finished_at": "Run end, UTC (when this row was written)",
    },
    "run_metrics": {
        "run_id": "Run that encoded the events (a sequences, state or score run)",
        "stage": "Stage that recorded the metrics: sequences, state or score (partition)",
        "source": "Source name of the events",
        "run_date": "Day of the run: the snapshot cutoff (sequences) or the day encoded (state, score)",
        "vocab_version": "Vocabulary version used to encode",
        "feature": "Vocabulary feature: event_type, item_id, category_id or brand",
        "events": "Events encoded: the day of events (state), the events in the input arrays (sequences, score)",
        "null_events": "Of them, events whose feature value is null (index 1)",
        "oov_events": "Of them, events whose value is out of the vocabulary (an OOV bucket)",
        "null_share": "null_events / events (0 without events)",
        "oov_share": "oov_events / events (0 without events); a catalogue drifting from the vocabulary shows here",
        "recorded_at": "When the metrics were written, UTC",
    },
}


# --------------------------------------------------------------------------- data contracts (issue 21)

# The schema of each table, by table name.
TABLES: dict[str, T.StructType] = {
    C.EVENTS: EVENTS, C.EVENTS_QUARANTINE: EVENTS_QUARANTINE, C.INGEST_RUNS: INGEST_RUNS,
    C.SESSIONS: SESSIONS, C.SESSION_EVENTS: SESSION_EVENTS, C.SESSIONIZE_RUNS: SESSIONIZE_RUNS,
    C.VOCAB: VOCAB, C.VOCAB_VERSIONS: VOCAB_VERSIONS, C.USER_SEQUENCES: USER_SEQUENCES,
    C.USER_STATE: USER_STATE, C.STATE_RUNS: STATE_RUNS, C.RUN_METRICS: RUN_METRICS,
    C.USER_PROPENSITY: USER_PROPENSITY, C.SCORE_RUNS: SCORE_RUNS,
    C.PROPENSITY_EVALUATION: PROPENSITY_EVALUATION, C.USER_PROFILE: USER_PROFILE,
}


def one_of(column: str, values) -> str:
    """SQL: ``column`` is one of ``values`` (strings)."""
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _all(condition: str, columns) -> str:
    """SQL: ``condition`` (a format with ``{}`` for the column) holds for every column."""
    return " AND ".join(condition.format(c) for c in columns)


def _in_0_1(*columns: str) -> str:
    return _all("{} BETWEEN 0 AND 1", columns)


def _not_negative(*columns: str) -> str:
    return _all("{} >= 0", columns)


# CHECK constraints per table: name -> SQL expression over the row (Delta refuses a row for which
# it is false or null, so a nullable column says `c IS NULL OR ...`). NOT NULL is the schemas'
# nullability above. Names are lowercase: Delta stores them so (property delta.constraints.<name>).
# Changing an expression replaces the constraint at the next registration (`tables.apply_contract`).
_EVENT_CHECKS = {
    "event_type_known": one_of(C.EVENT_TYPE, C.EVENT_TYPES),
    "price_not_negative": "price IS NULL OR price >= 0",
}
CONSTRAINTS: dict[str, dict[str, str]] = {
    C.EVENTS: dict(_EVENT_CHECKS),
    C.EVENTS_QUARANTINE: {"stage_known": one_of("stage", (C.STAGE_INGEST, C.STAGE_SESSIONIZE))},
    C.INGEST_RUNS: {
        "counts_not_negative": _not_negative("rows_read", "rows_written", "rows_quarantined",
                                             "duplicates_dropped", "rows_held_back"),
        "window_ordered": "window_end >= window_start",
        "status_known": one_of("status", ("ok", "failed")),
    },
    C.SESSION_EVENTS: {**_EVENT_CHECKS, "session_seq_positive": "session_seq >= 1"},
    C.SESSIONS: {
        "n_events_positive": "n_events >= 1",
        "counts_not_negative": _not_negative(*[f"n_{t}" for t in C.EVENT_TYPES], "distinct_items"),
        "duration_not_negative": "duration_seconds >= 0",
        "end_not_before_start": "session_end >= session_start",
        "revenue_not_negative": "revenue >= 0",
    },
    C.SESSIONIZE_RUNS: {
        "counts_not_negative": _not_negative("events_in", "events_sessionized", "events_capped", "sessions_touched"),
        "dates_ordered": "date_to >= date_from",
    },
    C.VOCAB: {
        "vocab_version_positive": "vocab_version >= 1",
        # 0 is padding and 1 null: a token's index is an OOV bucket's or above.
        "index_not_reserved": "`index` >= 2",
        "count_not_negative": "`count` >= 0",
    },
    C.VOCAB_VERSIONS: {
        "vocab_version_positive": "vocab_version >= 1",
        "counts_not_negative": _not_negative("tokens", "new_tokens", "cardinality"),
        "fit_window_ordered": "fit_to >= fit_from",
    },
    C.USER_SEQUENCES: {
        "split_known": one_of("split", ("train", "validation", "test")),
        "label_binary": "label IS NULL OR label IN (0, 1)",
        "horizon_positive": "horizon_days >= 1",
        "counts_not_negative": _not_negative(
            "length", "recency_days", "frequency", "monetary", "n_events", "n_sessions", "active_days",
            "carts_7d", "purchases_7d", "carts_30d", "purchases_30d"),
    },
    C.USER_STATE: {
        "n_events_positive": "n_events >= 1",
        "counts_not_negative": _not_negative("n_purchases", "monetary", "n_sessions", "active_days",
                                             "session_micros"),
        "ts_ordered": "last_ts >= first_ts",
        "vocab_version_positive": "vocab_version >= 1",
    },
    C.STATE_RUNS: {
        "mode_known": one_of("mode", ("bootstrap", "incremental", "rebuild", "noop")),
        "counts_not_negative": _not_negative("events_in", "users_updated", "users_total"),
    },
    C.RUN_METRICS: {
        "counts_not_negative": _not_negative("events", "null_events", "oov_events"),
        "shares_in_0_1": _in_0_1("null_share", "oov_share"),
    },
    C.USER_PROPENSITY: {
        "propensity_in_0_1": _in_0_1("propensity"),
        "rank_positive": "`rank` >= 1",
        "decile_in_1_10": "decile BETWEEN 1 AND 10",
        "horizon_positive": "horizon_days >= 1",
    },
    C.SCORE_RUNS: {
        "counts_not_negative": _not_negative("users_scored", "model_loads", "batches"),
        "propensity_stats_in_0_1": _in_0_1("propensity_mean", "propensity_p10", "propensity_p50", "propensity_p90"),
        "shares_in_0_1": _in_0_1("max_oov_share", "empty_share"),
        "psi_not_negative": "psi IS NULL OR psi >= 0",
    },
    C.PROPENSITY_EVALUATION: {
        "decile_in_1_10": "decile BETWEEN 1 AND 10",
        "counts_not_negative": "users >= 0 AND buyers BETWEEN 0 AND users",
        "rates_in_0_1": _in_0_1("mean_propensity", "purchase_rate", "base_rate", "brier"),
        "auc_in_0_1": "(auc_roc IS NULL OR auc_roc BETWEEN 0 AND 1) AND (auc_pr IS NULL OR auc_pr BETWEEN 0 AND 1)",
        "log_loss_not_negative": "log_loss >= 0",
    },
    C.USER_PROFILE: {
        "counts_not_negative": _not_negative("recency_days", "frequency", "monetary", "n_events", "n_sessions",
                                             "sessions_7d", "sessions_30d"),
        "preferred_hour_in_0_23": "preferred_hour BETWEEN 0 AND 23",
        # profiles.SEGMENTS (not imported: profiles imports this module).
        "segment_known": one_of("segment", ("new", "active", "at_risk", "lapsed")),
        "propensity_in_0_1": "propensity IS NULL OR propensity BETWEEN 0 AND 1",
        "decile_in_1_10": "decile IS NULL OR decile BETWEEN 1 AND 10",
    },
}
