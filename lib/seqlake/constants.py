"""Names shared by every stage: tables, columns, event types and quarantine reasons."""

# Tables (Delta, under lake.root/<name>, registered as <lake.database>.<name>).
EVENTS = "events"
EVENTS_QUARANTINE = "events_quarantine"
INGEST_RUNS = "ingest_runs"
SESSIONS = "sessions"
SESSION_EVENTS = "session_events"
SESSIONIZE_RUNS = "sessionize_runs"

# Columns used as keys across stages.
EVENT_ID = "event_id"
USER_ID = "user_id"
TS = "ts"
EVENT_TYPE = "event_type"
EVENT_DATE = "event_date"
SOURCE = "source"
SESSION_ID = "session_id"
SESSION_DATE = "session_date"
RUN_DATE = "run_date"

# Canonical event types, in the order later stages encode them.
EVENT_TYPES = ("view", "cart", "remove_from_cart", "fav", "purchase")

# Canonical fields a source maps its columns to; the first five are required.
REQUIRED_FIELDS = ("user_id", "ts", "event_type", "item_id", "category_id")
OPTIONAL_FIELDS = ("category_path", "brand", "price", "source_session_id")
CANONICAL_FIELDS = REQUIRED_FIELDS + OPTIONAL_FIELDS

# Quarantine reason codes, in the order they are checked: a row gets the first that applies.
MALFORMED_RECORD = "malformed_record"
BAD_ENCODING = "bad_encoding"
OVERSIZED_RECORD = "oversized_record"
OVERSIZED_FIELD = "oversized_field"
NESTED_VALUE = "nested_value"
EXCLUDED_PREFIX = "excluded_"  # + a source's exclude rule, e.g. excluded_cancellation
MISSING_PREFIX = "missing_"  # + field name, e.g. missing_user_id
BAD_TIMESTAMP = "bad_timestamp"
TS_BEFORE_WINDOW = "ts_before_window"
TS_AFTER_WINDOW = "ts_after_window"
UNKNOWN_EVENT_TYPE = "unknown_event_type"
BAD_PRICE = "bad_price"
NEGATIVE_PRICE = "negative_price"
USER_DAILY_CAP = "user_daily_cap"

STAGE_INGEST = "ingest"
STAGE_SESSIONIZE = "sessionize"
VOCAB = "vocab"
VOCAB_VERSIONS = "vocab_versions"
USER_SEQUENCES = "user_sequences"
USER_STATE = "user_state"
STATE_RUNS = "state_runs"
RUN_METRICS = "run_metrics"

SNAPSHOT_DATE = "snapshot_date"
VOCAB_VERSION = "vocab_version"
STATE_DATE = "state_date"

STAGE_SEQUENCES = "sequences"
STAGE_STATE = "state"

USER_PROPENSITY = "user_propensity"
SCORE_RUNS = "score_runs"
PROPENSITY_EVALUATION = "propensity_evaluation"
USER_PROFILE = "user_profile"
SCORE_DATE = "score_date"
PROFILE_DATE = "profile_date"
STAGE_SCORE = "score"
