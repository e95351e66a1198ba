"""Configuration errors name the key and what was expected, before Spark starts."""
import datetime as dt
import subprocess
import sys

import pytest

from seqlake.config import ConfigError, load_config
from seqlake.sources import load_source, parse_source

from conftest import REPO


def test_defaults_and_overrides_are_typed(tmp_path):
    cfg = load_config(
        REPO / "conf" / "local.yaml",
        ["lake.root=/tmp/x", "sessionize.gap_minutes=45", "generator.start_date=2024-02-03",
         "spark.conf.spark.sql.shuffle.partitions=3", "pseudonymise.enabled=true"],
    )
    assert cfg.lake.root == "/tmp/x"
    assert cfg.sessionize.gap_minutes == 45
    assert cfg.generator.start_date == dt.date(2024, 2, 3)
    assert cfg.spark.conf["spark.sql.shuffle.partitions"] == "3"
    assert cfg.pseudonymise.enabled is True
    assert cfg.table_path("events") == "/tmp/x/events"


def test_training_settings_and_mlflow_defaults():
    cfg = load_config(REPO / "conf" / "local.yaml", ["lake.root=/tmp/x", "model.lstm_units=[64, 32]",
                                                     "training.cutoffs=[2024-01-08]"])
    assert cfg.model.lstm_units == (64, 32)
    assert cfg.training.cutoffs == ("2024-01-08",)  # YAML's date comes back as the ISO string
    assert cfg.mlflow_tracking_uri() == "sqlite:////tmp/x/_mlflow/mlflow.db"
    assert cfg.mlflow_artifact_root() == "/tmp/x/_mlflow/artifacts"
    with pytest.raises(ConfigError, match="mlflow.tracking_uri: required"):
        load_config(None, ["lake.root=s3a://bucket/lake"]).mlflow_tracking_uri()
    remote = load_config(None, ["lake.root=s3a://b/lake", "mlflow.tracking_uri=http://mlflow:5000"])
    assert remote.mlflow_tracking_uri() == "http://mlflow:5000"
    assert remote.mlflow_artifact_root() == "s3a://b/lake/_mlflow/artifacts"


def test_uri_lake_root_is_kept_verbatim():
    cfg = load_config(None, ["lake.root=s3a://bucket/lake/", "lake.landing_root=s3a://bucket/landing"])
    assert cfg.table_path("events") == "s3a://bucket/lake/events"
    assert cfg.landing_path("generator", dt.date(2024, 1, 2)) == "s3a://bucket/landing/raw/generator/dt=2024-01-02"


@pytest.mark.parametrize(
    "override, message",
    [
        ("lake.roots=/x", "lake.roots: unknown setting"),
        ("nonsense=1", "nonsense: unknown setting"),
        ("sessionize.gap_minutes=abc", "sessionize.gap_minutes: expected an integer, got 'abc'"),
        ("sessionize.gap_minutes=0", "sessionize.gap_minutes: expected an integer >= 1"),
        ("sessionize.max_duration_minutes=10", "sessionize.max_duration_minutes: expected more minutes"),
        ("generator.start_date=2024-13-01", "generator.start_date: expected a date as YYYY-MM-DD, got '2024-13-01'"),
        ("generator.start_date=yesterday", "generator.start_date: expected a date as YYYY-MM-DD"),
        ("pseudonymise.enabled=maybe", "pseudonymise.enabled: expected true or false"),
        ("ingest.quarantine_threshold=2", "ingest.quarantine_threshold: expected a share between 0 and 1"),
        ("lake.catalog=glue", "lake.catalog: expected 'hive' or 'in_memory'"),
        ("spark=3", "spark: expected a mapping of settings, got int"),
        ("novalue", "expected key=value"),
        ("vocab.item_id.oov_buckets=0", "vocab.item_id.oov_buckets: expected an integer >= 1"),
        ("vocab.brand.colour=1", "vocab.brand.colour: unknown setting"),
        ("sequences.length=0", "sequences.length: expected an integer in 1..10000"),
        ("sequences.cutoffs=[2024-01-08, soon]", "sequences.cutoffs[1]: expected a date as YYYY-MM-DD, got 'soon'"),
        ("sequences.test_share=0.95", "sequences.validation_share/test_share"),
        ("model.type=gru", "model.type: expected 'lstm' or 'transformer'"),
        ("model.lstm_units=[64, many]", "model.lstm_units[1]: expected an integer, got 'many'"),
        ("model.lstm_units=[]", "model.lstm_units: expected a non-empty list"),
        ("training.imbalance=smote", "training.imbalance: expected 'class_weight', 'focal' or 'none'"),
        ("training.workers=3", "training.batch_size: expected a multiple of training.workers"),
        ("training.cutoffs=[soon]", "training.cutoffs[0]: expected a date as YYYY-MM-DD, got 'soon'"),
        ("mlflow.promotion_metric=accuracy", "mlflow.promotion_metric: expected 'auc_pr', 'auc_roc'"),
    ],
)
def test_bad_settings_name_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(REPO / "conf" / "local.yaml", [override])
    assert message in str(info.value)


def test_bad_yaml_file_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("spark: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")
    nested = tmp_path / "nested.yaml"
    nested.write_text("ingest:\n  quarantine_treshold: 0.1\n")
    with pytest.raises(ConfigError, match=r"ingest.quarantine_treshold: unknown setting"):
        load_config(nested)


def test_pseudonym_key_must_be_set(monkeypatch):
    cfg = load_config(None, ["pseudonymise.enabled=true", "pseudonymise.key_env=SEQLAKE_TEST_KEY"])
    monkeypatch.delenv("SEQLAKE_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match="SEQLAKE_TEST_KEY"):
        cfg.pseudonym_key()
    monkeypatch.setenv("SEQLAKE_TEST_KEY", "k")
    assert cfg.pseudonym_key() == b"k"


def test_shipped_sources_load():
    sources_dir = REPO / "conf" / "sources"
    assert load_source(str(sources_dir), "rees46").header_line.startswith("event_time,event_type,product_id")
    assert load_source(str(sources_dir), "taobao").event_types["buy"] == "purchase"
    assert load_source(str(sources_dir), "generator").format == "json"
    uci = load_source(str(sources_dir), "uci_online_retail")
    assert (uci.constants, uci.integer_fields) == ({"event_type": "purchase"}, ("user_id",))
    assert [r.name for r in uci.exclude] == ["cancellation", "adjustment", "not_a_product"]
    with pytest.raises(ConfigError, match="known sources: .*rees46"):
        load_source(str(sources_dir), "nosuch")


def test_source_errors_name_the_key():
    base = {"format": "csv", "columns": ["a", "b", "c", "d", "e"], "timestamp": {"format": "unix_seconds"},
            "fields": {"user_id": "a", "ts": "b", "event_type": "c", "item_id": "d", "category_id": "e"},
            "event_types": {"pv": "view"}}
    parse_source(base, where="x.yaml", name="x")
    with pytest.raises(ConfigError, match=r"x.yaml: event_types.pv: 'look' is not a canonical event type"):
        parse_source({**base, "event_types": {"pv": "look"}}, where="x.yaml", name="x")
    with pytest.raises(ConfigError, match=r"fields.item_id: required canonical field is not mapped"):
        parse_source({**base, "fields": {k: v for k, v in base["fields"].items() if k != "item_id"}},
                     where="x.yaml", name="x")
    with pytest.raises(ConfigError, match=r"raw column 'zz' is not in columns"):
        parse_source({**base, "fields": {**base["fields"], "brand": "zz"}}, where="x.yaml", name="x")
    # A constant stands in for a required field's column, never beside it.
    no_type = {k: v for k, v in base["fields"].items() if k != "event_type"}
    assert parse_source({**base, "fields": no_type, "constants": {"event_type": "pv"}},
                        where="x.yaml", name="x").constants == {"event_type": "pv"}
    with pytest.raises(ConfigError, match=r"fields.event_type: required canonical field is not mapped"):
        parse_source({**base, "fields": no_type}, where="x.yaml", name="x")
    with pytest.raises(ConfigError, match=r"constants.event_type: also mapped in fields"):
        parse_source({**base, "constants": {"event_type": "pv"}}, where="x.yaml", name="x")
    with pytest.raises(ConfigError, match=r"constants.colour: not a canonical field"):
        parse_source({**base, "constants": {"colour": "red"}}, where="x.yaml", name="x")
    with pytest.raises(ConfigError, match=r"integer_fields: expected a list of canonical fields mapped in fields"):
        parse_source({**base, "integer_fields": ["price"]}, where="x.yaml", name="x")
    for rule, message in [
        ({"field": "zz", "starts_with": "C"}, r"exclude.r.field: raw column 'zz' is not in columns"),
        ({"field": "a", "starts_with": "C", "in": ["x"]}, r"exclude.r: give exactly one of starts_with and in"),
        ({"field": "a", "in": []}, r"exclude.r.in: expected a non-empty list"),
        ({"field": "a", "matches": "C"}, r"exclude.r: expected \{field"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_source({**base, "exclude": {"r": rule}}, where="x.yaml", name="x")
    with pytest.raises(ConfigError, match=r"exclude.Bad Name: a rule name is lower-case"):
        parse_source({**base, "exclude": {"Bad Name": {"field": "a", "starts_with": "C"}}}, where="x.yaml", name="x")


def test_cli_rejects_bad_input_before_spark(tmp_path):
    """Exit 2 with a one-line error naming the problem; no lake is created."""
    def run(*args):
        return subprocess.run([sys.executable, "-m", "seqlake.cli", "--set", f"lake.root={tmp_path}/lake", *args],
                              capture_output=True, text=True, cwd=REPO, timeout=60)

    cases = [
        (["ingest", "--date", "2024-02-30"], "--date: expected a date as YYYY-MM-DD, got '2024-02-30'"),
        (["ingest", "--from", "2024-02-03", "--to", "2024-02-01"], "--to 2024-02-01 is before --from 2024-02-03"),
        (["ingest"], "a date is required"),
        (["--set", "sessionize.gap_minutes=-5", "sessionize", "--date", "2024-01-01"], "sessionize.gap_minutes"),
        (["ingest", "--source", "nosuch", "--date", "2024-01-01"], "source 'nosuch': no file"),
        (["sequences"], "a cutoff is required"),
        (["sequences", "--cutoff", "2024-01-08", "--from", "2024-01-01", "--to", "2024-01-09"], "give one of --cutoff, --from/--to or --labelled-until"),
        (["sequences", "--labelled-until", "2024-13-01"], "--labelled-until: expected a date as YYYY-MM-DD"),
        (["check", "--date", "2024-01-08", "--only", "ingest,nosuch"], "--only ingest,nosuch: unknown ['nosuch']"),
        (["landed", "--date", "20240108"], "--date: expected a date as YYYY-MM-DD"),
        (["state", "--date", "2024-1-8"], "--date: expected a date as YYYY-MM-DD"),
        (["vocab", "fit", "--from", "2024-01-09", "--to", "2024-01-01"], "--to 2024-01-01 is before --from"),
    ]
    for args, message in cases:
        proc = run(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "lake").exists()


def test_job_entry_points_accept_global_options_anywhere(monkeypatch):
    import seqlake.cli as cli

    seen = []
    monkeypatch.setattr(cli, "main", lambda argv: seen.append(argv) or 0)
    assert cli.run_job("ingest", ["--date", "2024-01-02", "--conf", "c.yaml", "-v", "--set", "a.b=1"]) == 0
    assert seen == [["--conf", "c.yaml", "-v", "--set", "a.b=1", "ingest", "--date", "2024-01-02"]]


def test_partial_section_keeps_that_fields_own_defaults():
    """vocab.item_id and vocab.brand share a class, not defaults: overriding one key of
    item_id must keep item_id's other defaults, not the class's."""
    cfg = load_config(REPO / "conf" / "local.yaml", ["vocab.item_id.min_count=5"])
    default = load_config(REPO / "conf" / "local.yaml")
    assert cfg.vocab.item_id.min_count == 5
    assert cfg.vocab.item_id.oov_buckets == default.vocab.item_id.oov_buckets == 64
    assert cfg.vocab.item_id.max_size == default.vocab.item_id.max_size


def test_labelled_cutoffs_end_where_the_label_horizon_meets_the_last_day():
    from seqlake.sequences import labelled_cutoffs

    # Horizon 7 from 2024-01-15 covers 01-15..01-21: the latest cutoff labelled by 01-21.
    assert labelled_cutoffs(dt.date(2024, 1, 21), 7, 7, 3) == [dt.date(2024, 1, 1), dt.date(2024, 1, 8),
                                                               dt.date(2024, 1, 15)]
    assert labelled_cutoffs(dt.date(2024, 1, 21), 3, 1, 2) == [dt.date(2024, 1, 18), dt.date(2024, 1, 19)]


def test_landed_needs_data_files_and_the_marker_when_one_is_configured(tmp_path):
    from seqlake.checks import landed

    cfg = load_config(None, [f"lake.landing_root={tmp_path}"])
    day = dt.date(2024, 1, 8)
    folder = tmp_path / "raw" / "generator" / "dt=2024-01-08"
    assert landed(cfg, "generator", day) == (False, f"{folder} does not exist yet")
    folder.mkdir(parents=True)
    (folder / "_started").write_text("")
    assert landed(cfg, "generator", day) == (False, f"{folder} has no data files yet")
    (folder / "part-0.jsonl").write_text("{}\n")
    assert landed(cfg, "generator", day)[0]
    marked = load_config(None, [f"lake.landing_root={tmp_path}", "ingest.landing_marker=_SUCCESS"])
    assert landed(marked, "generator", day) == (False, f"{folder} has 1 data files but no _SUCCESS yet")
    (folder / "_SUCCESS").write_text("")
    assert landed(marked, "generator", day) == (True, f"{folder}: 1 data files and _SUCCESS")


def test_cluster_example_config_loads_and_moves_only_settings():
    """conf/cluster.example.yaml is valid, and a cluster differs from local by settings alone."""
    cluster = load_config(REPO / "conf" / "cluster.example.yaml", [])
    assert cluster.spark.master == "yarn" and cluster.lake.root.startswith("s3a://")
    assert cluster.mlflow_tracking_uri() == "http://mlflow:5000"
    assert cluster.table_path("events") == "s3a://my-bucket/seqlake/lake/events"
