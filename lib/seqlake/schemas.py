"""Explicit schemas of every table seqlake writes. Transformations end with a select in this order."""
import pyspark.sql.types as T

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
])

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
    # Days with carts or purchases among the 30 days ending with last_event_date, in date order.
    T.StructField("daily", T.ArrayType(DAILY_COUNTS, False), False),
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
