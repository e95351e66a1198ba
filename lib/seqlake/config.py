"""One typed, validated configuration object built from YAML plus ``--set`` overrides.

Every setting lives in a frozen dataclass below; ``load_config`` is the only way in. Errors
name the dotted key and what was expected, and are raised before any Spark session starts.
No module reads the environment behind the caller's back: the only environment lookup is the
pseudonymisation key, whose variable *name* is configuration (``Config.pseudonym_key``).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


# Categorical features with a vocabulary (canonical column names).
VOCAB_FEATURES = ("event_type", "item_id", "category_id", "brand")


# Lake tables that housekeeping may compact and vacuum (the audit tables are tiny).
HOUSEKEPT_TABLES = (
    "events", "events_quarantine", "session_events", "sessions", "vocab", "user_sequences", "user_state",
    "run_metrics", "user_propensity", "propensity_evaluation", "user_profile",
)


class ConfigError(ValueError):
    """A configuration file, override or argument is invalid; the message names the key."""


@dataclass(frozen=True)
class SparkConfig:
    master: str = "local[*]"
    app_name: str = "seqlake"
    shuffle_partitions: int = 8
    driver_memory: str = "2g"
    # Resolved from Maven Central at session start (cached in ~/.ivy2 afterwards).
    delta_package: str = "io.delta:delta-spark_2.13:4.0.1"
    # Fallback when Spark's resolver cannot reach Maven: local jar paths, then
    # delta_package is not resolved.
    jars: tuple[str, ...] = ()
    # Further Maven packages the jobs need besides Delta (e.g. hadoop-aws for s3a://, a JDBC
    # driver for a metastore database), and groupId:artifactId patterns left out of their
    # resolution (what Spark already ships, or a dependency replaced by smaller ones). Fetched
    # once like delta_package (`python -m seqlake.spark CONF`), else resolved at session start.
    packages: tuple[str, ...] = ()
    packages_exclude: tuple[str, ...] = ()
    log_level: str = "WARN"
    conf: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LakeConfig:
    root: str = "./lake"
    # Raw landing area; files for a day live in <landing_root>/raw/<source>/dt=YYYY-MM-DD/.
    landing_root: str = "./lake"
    database: str = "seqlake"
    # "hive": a persistent metastore (embedded Derby under <root>/_catalog by default, or
    # whatever spark.hadoop.javax.jdo.* / hive.metastore.uris say), so spark-sql sees the
    # tables too. "in_memory": tables are registered per session (tests, ad-hoc runs).
    catalog: str = "hive"


@dataclass(frozen=True)
class IngestConfig:
    sources_dir: str = "conf/sources"
    # Share of quarantined rows (of rows read) above which the run fails, after the
    # quarantine has been written.
    quarantine_threshold: float = 0.05
    # Any single field longer than this is quarantined as oversized_field.
    max_field_chars: int = 1024
    # A raw record (line) longer than this is quarantined as oversized_record.
    max_record_chars: int = 16384
    # Files written per day into the events table (small-file control).
    files_per_day: int = 4
    # A file that must be in a day's landing folder before `landed` (the nightly DAG's sensor)
    # counts the day as arrived, e.g. _SUCCESS; empty: any data file will do.
    landing_marker: str = ""


@dataclass(frozen=True)
class PseudonymiseConfig:
    enabled: bool = False
    # Name of the environment variable holding the HMAC key (never the key itself).
    key_env: str = "SEQLAKE_PSEUDONYM_KEY"


@dataclass(frozen=True)
class SessionizeConfig:
    gap_minutes: int = 30
    max_duration_minutes: int = 240
    # Events of one user on one day beyond this are quarantined (reason user_daily_cap).
    user_daily_cap: int = 5000


@dataclass(frozen=True)
class GeneratorConfig:
    users: int = 2000
    days: int = 28
    start_date: dt.date = dt.date(2024, 1, 1)
    seed: int = 7
    items: int = 5000
    categories: int = 120
    brands: int = 400
    # The ground truth is the purchase probability in the last label_window_days days.
    label_window_days: int = 7
    # Share of extra dirty records injected (0 disables).
    dirty_rate: float = 0.0
    # Parallel writer processes; the output does not depend on this.
    workers: int = 2
    # Output files per day per worker.
    files_per_day: int = 1
    # Optional cap on total events; users are generated until it is reached (0 = no cap).
    max_events: int = 0


@dataclass(frozen=True)
class VocabFeatureConfig:
    # Hashed out-of-vocabulary buckets (indices 2 .. 1 + oov_buckets). Fixed for the life of a
    # vocabulary: changing it would move every token's index, so a refit refuses it.
    oov_buckets: int = 8
    # A token enters the vocabulary when seen at least this often in the fit window.
    min_count: int = 1
    # Most tokens the vocabulary holds (OOV and reserved indices not counted); once full, new
    # tokens go to the OOV buckets.
    max_size: int = 10000


@dataclass(frozen=True)
class VocabConfig:
    # `vocab fit --date D` fits on the fit_days days ending with D.
    fit_days: int = 28
    item_id: VocabFeatureConfig = field(default_factory=lambda: VocabFeatureConfig(64, 2, 100000))
    category_id: VocabFeatureConfig = field(default_factory=lambda: VocabFeatureConfig(8, 1, 10000))
    brand: VocabFeatureConfig = field(default_factory=lambda: VocabFeatureConfig(8, 1, 20000))
    event_type: VocabFeatureConfig = field(default_factory=lambda: VocabFeatureConfig(1, 1, 16))

    def feature(self, name: str) -> VocabFeatureConfig:
        return getattr(self, name)


@dataclass(frozen=True)
class SequencesConfig:
    # Events per user sequence (the last `length` before the cutoff; also kept in user_state).
    length: int = 50
    # Label: 1 if the user purchases in [cutoff, cutoff + horizon_days).
    horizon_days: int = 7
    # Training cutoffs used when `sequences` gets no --cutoff/--from: ISO dates.
    cutoffs: tuple[str, ...] = ()
    # With --from/--to: one cutoff every this many days.
    cutoff_every_days: int = 7
    # Stable split by a hash of user_id: shares of validation and test users.
    validation_share: float = 0.1
    test_share: float = 0.1
    # Parquet files per snapshot (>= the training workers that shard it) and row group size.
    files_per_snapshot: int = 4
    row_group_mb: int = 16
    # `sequences` / `train --labelled-until D`: this many cutoffs, cutoff_every_days apart,
    # the last one the latest whose label horizon ends by D (the weekly retraining window).
    retrain_cutoffs: int = 4


@dataclass(frozen=True)
class ModelConfig:
    # lstm: embeddings -> LSTM stack; transformer: embeddings + positions -> self-attention.
    type: str = "lstm"
    # Embedding width of item ids, and of every other sequence feature.
    item_embedding_dim: int = 8
    embedding_dim: int = 4
    lstm_units: tuple[int, ...] = (32,)
    dropout: float = 0.2
    dense_units: tuple[int, ...] = (16,)
    transformer_dim: int = 32
    transformer_heads: int = 2
    transformer_layers: int = 1


@dataclass(frozen=True)
class TrainingConfig:
    # Training snapshots (ISO cutoffs); empty: every labelled snapshot of the source that is
    # encoded with the latest vocab version. Validation and test use the latest of them.
    cutoffs: tuple[str, ...] = ()
    # Global batch: split evenly over the workers.
    batch_size: int = 256
    epochs: int = 20
    # Early stopping: epochs without a better validation AUC-PR.
    patience: int = 3
    learning_rate: float = 0.002
    # class_weight (balanced weights, output bias corrected afterwards so propensities stay
    # probabilities), focal (focal loss), or none.
    imbalance: str = "class_weight"
    focal_gamma: float = 2.0
    seed: int = 42
    # TensorFlow workers; more than 1 runs them as a Spark barrier stage (MultiWorkerMirrored).
    workers: int = 1
    # Petastorm reader pool: dummy (in the calling thread: deterministic order), thread, process.
    reader_pool: str = "dummy"
    reader_workers: int = 2
    # Spark ML gradient-boosted trees baseline.
    gbt_max_iter: int = 50
    gbt_max_depth: int = 5


@dataclass(frozen=True)
class MlflowConfig:
    # Empty: sqlite under <lake.root>/_mlflow (local lakes only); a server URI on a cluster.
    tracking_uri: str = ""
    # Empty: <lake.root>/_mlflow/artifacts.
    artifact_root: str = ""
    experiment: str = "seqlake_propensity"
    registered_model: str = "seqlake_propensity"
    # The alias `champion` moves to a new version only if its test metric beats the
    # champion's on the same test split by more than the margin.
    promotion_metric: str = "auc_pr"
    promotion_margin: float = 0.0
    # Scoring and realised-performance runs (`score`, `evaluate`) log here.
    scoring_experiment: str = "seqlake_scoring"


@dataclass(frozen=True)
class ScoringConfig:
    # Users whose last event falls in the lookback_days days ending with the score date.
    lookback_days: int = 30
    # Rows per Arrow batch handed to the model (one forward pass each, times the occlusions).
    batch_rows: int = 1024
    # Partitions the scoring inputs are cut into (0: spark.shuffle_partitions).
    partitions: int = 0
    # TensorFlow threads per Python worker (0: TensorFlow's default, every core). Spark runs one
    # worker per task slot, so 1 keeps them from competing for the same cores.
    tf_threads: int = 1
    # Top reasons by occlusion: each (event type, category) group among the user's events is
    # removed in turn and the drop in propensity is its impact. The newest max_groups groups
    # are tried (cost: max_groups extra rows per user); impacts below min_impact are no reason.
    explain: bool = True
    explain_max_groups: int = 12
    explain_min_impact: float = 0.005
    # Monitoring: above these a warning goes to the run log and the run's tags.
    warn_psi: float = 0.2
    warn_oov_share: float = 0.2
    warn_empty_share: float = 0.05
    # Fewer users scored than this fails the run (exit 3): a broken input, not a quiet day.
    min_users: int = 1


@dataclass(frozen=True)
class ActivityWeights:
    view: float = 1.0
    cart: float = 3.0
    remove_from_cart: float = 0.0
    fav: float = 2.0
    purchase: float = 5.0


@dataclass(frozen=True)
class ProfileConfig:
    # Weighted activity (top categories and brands) = sum over event types of weight x count.
    activity_weights: ActivityWeights = field(default_factory=ActivityWeights)
    # Lifecycle segment as of the profile date D, first rule that applies:
    # new: first event within new_days days of D; active: last event within active_days;
    # at_risk: last event within at_risk_days; lapsed: otherwise.
    new_days: int = 14
    active_days: int = 7
    at_risk_days: int = 30


@dataclass(frozen=True)
class HousekeepingConfig:
    # Tables `seqlake housekeeping` compacts (OPTIMIZE) and vacuums; see housekeeping.py.
    tables: tuple[str, ...] = (
        "events", "events_quarantine", "session_events", "sessions", "user_sequences", "user_state",
        "run_metrics", "user_propensity", "user_profile",
    )
    # Tables read by user (per-user stages, analysts' `WHERE user_id = ...`): Z-ordered by
    # user_id when compacted, which costs a shuffle on top of the compaction.
    zorder_tables: tuple[str, ...] = ("events", "session_events", "user_state", "user_propensity", "user_profile")
    # OPTIMIZE only the partitions of the last N days of date-partitioned tables (a nightly or
    # weekly run's cost then follows the data of those days); 0: whole tables.
    recent_days: int = 7
    # VACUUM keeps files a version younger than this still needs (time travel, running readers).
    vacuum_retention_hours: int = 168


@dataclass(frozen=True)
class Config:
    spark: SparkConfig = field(default_factory=SparkConfig)
    lake: LakeConfig = field(default_factory=LakeConfig)
    # The source the pipeline stages (sessionize and later) work on by default.
    source: str = "generator"
    ingest: IngestConfig = field(default_factory=IngestConfig)
    pseudonymise: PseudonymiseConfig = field(default_factory=PseudonymiseConfig)
    sessionize: SessionizeConfig = field(default_factory=SessionizeConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    sequences: SequencesConfig = field(default_factory=SequencesConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    housekeeping: HousekeepingConfig = field(default_factory=HousekeepingConfig)

    def __post_init__(self) -> None:
        _validate(self)

    def table_path(self, table: str) -> str:
        return join_path(self.lake.root, table)

    def mlflow_tracking_uri(self) -> str:
        if self.mlflow.tracking_uri:
            return self.mlflow.tracking_uri
        if _URI.match(self.lake.root):
            raise ConfigError("mlflow.tracking_uri: required when lake.root is not a local path")
        return f"sqlite:///{join_path(self.lake.root, '_mlflow', 'mlflow.db')}"

    def mlflow_artifact_root(self) -> str:
        return self.mlflow.artifact_root or join_path(self.lake.root, "_mlflow", "artifacts")

    def landing_path(self, source: str, date: dt.date) -> str:
        return join_path(self.lake.landing_root, "raw", source, f"dt={date.isoformat()}")

    def pseudonym_key(self) -> bytes | None:
        """The HMAC key from the configured environment variable, or None when disabled."""
        if not self.pseudonymise.enabled:
            return None
        value = os.environ.get(self.pseudonymise.key_env)
        if not value:
            raise ConfigError(
                f"pseudonymise.enabled is true but environment variable "
                f"{self.pseudonymise.key_env} (pseudonymise.key_env) is unset or empty"
            )
        return value.encode("utf-8")


_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def join_path(base: str, *parts: str) -> str:
    """Join path parts for local paths and Hadoop URIs (s3a://, hdfs://, abfss://) alike."""
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def _absolute(path: str, base: Path) -> str:
    if _URI.match(path) or path.startswith("/"):
        return path
    return str((base / path).resolve())


def _validate(cfg: Config) -> None:
    checks: list[tuple[bool, str]] = [
        (cfg.spark.shuffle_partitions >= 1, "spark.shuffle_partitions: expected an integer >= 1"),
        (cfg.lake.catalog in ("hive", "in_memory"), "lake.catalog: expected 'hive' or 'in_memory'"),
        (re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", cfg.lake.database) is not None,
         "lake.database: expected an identifier (letters, digits, underscore)"),
        (re.fullmatch(r"[a-z0-9_]+", cfg.source) is not None,
         "source: expected a source name of lower-case letters, digits and underscores"),
        (0.0 <= cfg.ingest.quarantine_threshold <= 1.0,
         "ingest.quarantine_threshold: expected a share between 0 and 1"),
        (cfg.ingest.max_field_chars >= 16, "ingest.max_field_chars: expected an integer >= 16"),
        (cfg.ingest.max_record_chars >= cfg.ingest.max_field_chars,
         "ingest.max_record_chars: expected an integer >= ingest.max_field_chars"),
        (cfg.ingest.files_per_day >= 1, "ingest.files_per_day: expected an integer >= 1"),
        (cfg.sessionize.gap_minutes >= 1, "sessionize.gap_minutes: expected an integer >= 1"),
        (cfg.sessionize.max_duration_minutes > cfg.sessionize.gap_minutes,
         "sessionize.max_duration_minutes: expected more minutes than sessionize.gap_minutes"),
        (cfg.sessionize.max_duration_minutes <= 7 * 24 * 60,
         "sessionize.max_duration_minutes: expected at most 10080 (7 days)"),
        (cfg.sessionize.user_daily_cap >= 1, "sessionize.user_daily_cap: expected an integer >= 1"),
        (cfg.generator.users >= 1, "generator.users: expected an integer >= 1"),
        (cfg.generator.seed >= 0, "generator.seed: expected an integer >= 0"),
        (cfg.generator.max_events >= 0, "generator.max_events: expected an integer >= 0 (0 = no cap)"),
        (cfg.generator.days > cfg.generator.label_window_days,
         "generator.days: expected more days than generator.label_window_days"),
        (cfg.generator.label_window_days >= 1, "generator.label_window_days: expected an integer >= 1"),
        (0.0 <= cfg.generator.dirty_rate < 0.5, "generator.dirty_rate: expected a share in [0, 0.5)"),
        (cfg.generator.workers >= 1, "generator.workers: expected an integer >= 1"),
        (cfg.generator.files_per_day >= 1, "generator.files_per_day: expected an integer >= 1"),
        (cfg.generator.items >= 10 and cfg.generator.categories >= 2 and cfg.generator.brands >= 2,
         "generator.items/categories/brands: expected at least 10 items, 2 categories, 2 brands"),
        (cfg.vocab.fit_days >= 1, "vocab.fit_days: expected an integer >= 1"),
        *[
            check
            for name in VOCAB_FEATURES
            for check in (
                (cfg.vocab.feature(name).oov_buckets >= 1, f"vocab.{name}.oov_buckets: expected an integer >= 1"),
                (cfg.vocab.feature(name).min_count >= 1, f"vocab.{name}.min_count: expected an integer >= 1"),
                (cfg.vocab.feature(name).max_size >= 1, f"vocab.{name}.max_size: expected an integer >= 1"),
            )
        ],
        (1 <= cfg.sequences.length <= 10000, "sequences.length: expected an integer in 1..10000"),
        (cfg.sequences.horizon_days >= 1, "sequences.horizon_days: expected an integer >= 1"),
        (cfg.sequences.cutoff_every_days >= 1, "sequences.cutoff_every_days: expected an integer >= 1"),
        (cfg.sequences.retrain_cutoffs >= 1, "sequences.retrain_cutoffs: expected an integer >= 1"),
        (cfg.sequences.validation_share >= 0 and cfg.sequences.test_share >= 0
         and cfg.sequences.validation_share + cfg.sequences.test_share < 1,
         "sequences.validation_share/test_share: expected non-negative shares summing to less than 1"),
        (cfg.sequences.files_per_snapshot >= 1, "sequences.files_per_snapshot: expected an integer >= 1"),
        (cfg.sequences.row_group_mb >= 1, "sequences.row_group_mb: expected an integer >= 1"),
        (cfg.model.type in ("lstm", "transformer"), "model.type: expected 'lstm' or 'transformer'"),
        (cfg.model.item_embedding_dim >= 1 and cfg.model.embedding_dim >= 1,
         "model.item_embedding_dim/embedding_dim: expected integers >= 1"),
        (len(cfg.model.lstm_units) >= 1 and all(u >= 1 for u in cfg.model.lstm_units),
         "model.lstm_units: expected a non-empty list of integers >= 1"),
        (all(u >= 1 for u in cfg.model.dense_units), "model.dense_units: expected a list of integers >= 1"),
        (0.0 <= cfg.model.dropout < 1.0, "model.dropout: expected a share in [0, 1)"),
        (cfg.model.transformer_dim >= 1 and cfg.model.transformer_heads >= 1 and cfg.model.transformer_layers >= 1,
         "model.transformer_dim/heads/layers: expected integers >= 1"),
        (cfg.training.batch_size >= 1, "training.batch_size: expected an integer >= 1"),
        (cfg.training.epochs >= 1, "training.epochs: expected an integer >= 1"),
        (cfg.training.patience >= 1, "training.patience: expected an integer >= 1"),
        (cfg.training.learning_rate > 0, "training.learning_rate: expected a number > 0"),
        (cfg.training.imbalance in ("class_weight", "focal", "none"),
         "training.imbalance: expected 'class_weight', 'focal' or 'none'"),
        (cfg.training.workers >= 1, "training.workers: expected an integer >= 1"),
        (cfg.training.batch_size % cfg.training.workers == 0,
         "training.batch_size: expected a multiple of training.workers (the batch is split evenly)"),
        (cfg.training.reader_pool in ("dummy", "thread", "process"),
         "training.reader_pool: expected 'dummy', 'thread' or 'process'"),
        (cfg.training.reader_workers >= 1, "training.reader_workers: expected an integer >= 1"),
        (cfg.training.gbt_max_iter >= 1 and cfg.training.gbt_max_depth >= 1,
         "training.gbt_max_iter/gbt_max_depth: expected integers >= 1"),
        (cfg.mlflow.promotion_metric in ("auc_pr", "auc_roc", "lift_top_decile"),
         "mlflow.promotion_metric: expected 'auc_pr', 'auc_roc' or 'lift_top_decile'"),
        (cfg.mlflow.promotion_margin >= 0, "mlflow.promotion_margin: expected a number >= 0"),
        (cfg.scoring.lookback_days >= 1, "scoring.lookback_days: expected an integer >= 1"),
        (cfg.scoring.batch_rows >= 1, "scoring.batch_rows: expected an integer >= 1"),
        (cfg.scoring.partitions >= 0, "scoring.partitions: expected an integer >= 0 (0 = spark.shuffle_partitions)"),
        (cfg.scoring.tf_threads >= 0, "scoring.tf_threads: expected an integer >= 0 (0 = TensorFlow's default)"),
        (cfg.scoring.explain_max_groups >= 1, "scoring.explain_max_groups: expected an integer >= 1"),
        (cfg.scoring.explain_min_impact >= 0, "scoring.explain_min_impact: expected a number >= 0"),
        (cfg.scoring.warn_psi >= 0 and 0 <= cfg.scoring.warn_oov_share <= 1 and 0 <= cfg.scoring.warn_empty_share <= 1,
         "scoring.warn_psi/warn_oov_share/warn_empty_share: expected a number >= 0 and shares in [0, 1]"),
        (cfg.scoring.min_users >= 0, "scoring.min_users: expected an integer >= 0"),
        (all(getattr(cfg.profile.activity_weights, f.name) >= 0
             for f in dataclasses.fields(cfg.profile.activity_weights)),
         "profile.activity_weights: expected numbers >= 0"),
        (1 <= cfg.profile.active_days <= cfg.profile.at_risk_days and cfg.profile.new_days >= 1,
         "profile.new_days/active_days/at_risk_days: expected integers >= 1 with active_days <= at_risk_days"),
        (set(cfg.housekeeping.tables) <= set(HOUSEKEPT_TABLES),
         f"housekeeping.tables: expected names among {', '.join(HOUSEKEPT_TABLES)}"),
        (set(cfg.housekeeping.zorder_tables) <= set(HOUSEKEPT_TABLES),
         f"housekeeping.zorder_tables: expected names among {', '.join(HOUSEKEPT_TABLES)}"),
        (cfg.housekeeping.recent_days >= 0, "housekeeping.recent_days: expected an integer >= 0"),
        # Delta's own safety floor: a shorter retention can delete files a running reader needs.
        (cfg.housekeeping.vacuum_retention_hours >= 168,
         "housekeeping.vacuum_retention_hours: expected an integer >= 168 (7 days, Delta's safety floor)"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    for i, value in enumerate(cfg.sequences.cutoffs):
        parse_date(value, f"sequences.cutoffs[{i}]")
    for i, value in enumerate(cfg.training.cutoffs):
        parse_date(value, f"training.cutoffs[{i}]")


# --------------------------------------------------------------------------- loading


def load_config(path: str | os.PathLike | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Read YAML ``path`` (or only defaults when None), apply ``key=value`` overrides, validate.

    Relative paths in the file are resolved against the current working directory, so the
    same file works from the repository root and from ``spark-submit``.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"--conf {path}: file not found")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (yaml.YAMLError, ValueError) as exc:
            raise ConfigError(f"--conf {path}: not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"--conf {path}: expected a mapping at the top level")
        raw = loaded
    for item in overrides:
        _apply_override(raw, item)
    cfg = _build(Config, raw, "")
    cwd = Path.cwd()
    lake = dataclasses.replace(
        cfg.lake, root=_absolute(cfg.lake.root, cwd), landing_root=_absolute(cfg.lake.landing_root, cwd)
    )
    ingest = dataclasses.replace(cfg.ingest, sources_dir=_absolute(cfg.ingest.sources_dir, cwd))
    return dataclasses.replace(cfg, lake=lake, ingest=ingest)


def _apply_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, for example lake.root=/tmp/lake")
    key, value = item.split("=", 1)
    key = key.strip()
    if not re.fullmatch(r"[A-Za-z_][\w]*(\.[\w.\-]+)*", key):
        raise ConfigError(f"--set {item!r}: {key!r} is not a dotted setting name")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except (yaml.YAMLError, ValueError):  # ValueError: YAML's date resolver on 2024-13-01
        parsed = value
    parts = key.split(".")
    node = raw
    # spark.conf keys contain dots themselves: everything after "spark.conf." is one key.
    if parts[:2] == ["spark", "conf"] and len(parts) > 2:
        parts = ["spark", "conf", ".".join(parts[2:])]
        parsed = value
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {item!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = parsed


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _build(cls: type, data: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of settings, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(
            f"{prefix}{unknown[0]}: unknown setting (known in {where}: {', '.join(sorted(fields))})"
        )
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        if dataclasses.is_dataclass(hints[f.name]) and isinstance(value, dict) and f.default_factory is not dataclasses.MISSING:
            # A partial section keeps this field's own defaults for the keys it does not set
            # (vocab.item_id and vocab.brand share a class but not their defaults).
            default = f.default_factory()
            base = {g.name: getattr(default, g.name) for g in dataclasses.fields(default)
                    if not dataclasses.is_dataclass(getattr(default, g.name))}
            value = {**_plain(base), **value}
        kwargs[f.name] = _coerce(hints[f.name], value, f"{prefix}{f.name}")
    return cls(**kwargs)


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """Dataclass field values back in their YAML form (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, dt.date):  # YAML reads an unquoted 2024-01-08 as a date
            return value.isoformat()
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if tp is dt.date:
        return parse_date(value, key)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        element = typing.get_args(tp)[0]
        return tuple(_coerce(element, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{key}: unsupported optional type")  # not used; keeps types simple
    raise ConfigError(f"{key}: unsupported setting type {_type_name(tp)}")


def parse_date(value: Any, key: str) -> dt.date:
    """Parse an ISO date (YYYY-MM-DD); the error names ``key``."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value.strip()):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise ConfigError(f"{key}: expected a date as YYYY-MM-DD, got {value!r}")
