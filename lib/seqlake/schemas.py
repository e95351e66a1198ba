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
