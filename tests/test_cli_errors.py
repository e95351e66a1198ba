"""Bad configuration, arguments and SQL: one line naming the problem, exit 2, nothing touched."""
from __future__ import annotations

import pytest

from seqlake import cli

from conftest import REPO, TEST_SETTINGS


def _run(argv, capsys) -> tuple[int, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    return code, capsys.readouterr().err


def _args(tmp_path, *settings: str) -> list[str]:
    overrides = [*TEST_SETTINGS, f"lake.root={tmp_path / 'lake'}", f"lake.landing_root={tmp_path / 'landing'}",
                 f"ingest.sources_dir={REPO / 'conf' / 'sources'}", *settings]
    return [x for s in overrides for x in ("--set", s)]


BAD = [
    (["--set", "lake.rooot=/x"], ["ingest", "--date", "2024-01-02"], "lake.rooot: unknown setting"),
    (["--set", "sessionize.gap_minutes=0"], ["sessionize", "--date", "2024-01-02"],
     "sessionize.gap_minutes: expected an integer >= 1"),
    (["--set", "sessionize.gap_minutes=thirty"], ["sessionize", "--date", "2024-01-02"], "sessionize.gap_minutes"),
    (["--set", "sequences.horizon_days=-7"], ["sequences", "--cutoff", "2024-01-08"],
     "sequences.horizon_days: expected an integer >= 1"),
    ([], ["ingest", "--date", "02/01/2024"], "--date"),
    ([], ["ingest", "--date", "2024-02-30"], "--date"),
    ([], ["state", "--date", "2024-1-2x"], "--date"),
    ([], ["ingest", "--from", "2024-01-05", "--to", "2024-01-02"], "before"),
    ([], ["ingest", "--day", "2024-01-02"], "unrecognized arguments"),
    ([], ["ingest", "--date", "2024-01-02", "--source", "no_such_source"], "no_such_source"),
    (["--conf", "/no/such/seqlake.yaml"], ["ingest", "--date", "2024-01-02"], "/no/such/seqlake.yaml: file not found"),
    (["--set", "ingest.sources_dir=/no/such/dir"], ["ingest", "--date", "2024-01-02"], "/no/such/dir"),
    ([], ["sql", "DROP TABLE seqlake.events"], "refused: DROP"),
    ([], ["sql", "WITH x AS (SELECT 1) INSERT INTO seqlake.events SELECT * FROM x"], "refused: INSERT"),
    ([], ["sql", "delete from events"], "refused: DELETE"),
    ([], ["sql", "OPTIMIZE seqlake.events"], "refused: OPTIMIZE"),
]


@pytest.mark.parametrize("global_args,command,fragment", BAD, ids=[" ".join(b[1][:2]) + f"-{i}" for i, b in enumerate(BAD)])
def test_bad_input_gives_one_line_naming_it_before_anything_is_touched(tmp_path, capsys, global_args, command, fragment):
    code, err = _run([*_args(tmp_path), *global_args, *command], capsys)
    assert code == cli.EXIT_USAGE, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert fragment in lines[0], lines[0]
    assert not (tmp_path / "lake").exists()


def test_a_missing_input_path_is_named_not_a_spark_stack_trace(spark, tmp_path, capsys):
    code, err = _run([*_args(tmp_path), "ingest", "--date", "2024-01-02", "--input", str(tmp_path / "nothing")], capsys)
    assert code == cli.EXIT_USAGE
    assert err.strip().splitlines() == [f"seqlake ingest: error: --input {tmp_path / 'nothing'}: no such file or folder"]
    assert not (tmp_path / "lake").exists()


def test_sql_reads_and_writes_only_when_allowed(spark, tmp_path, capsys):
    from seqlake import constants as C
    from seqlake.config import load_config
    from seqlake import tables

    # A database of its own: the shared test session's catalog already names other lakes' tables.
    base = _args(tmp_path, "lake.database=sqlguard_test")
    cfg = load_config(None, base[1::2])
    spark.createDataFrame([("a", 1), ("b", 2)], "k string, v int").write.format("delta").save(cfg.table_path(C.EVENTS))
    assert _run([*base, "sql", "SELECT count(*) AS n FROM events", "--format", "csv"], capsys) == (0, "")
    code, err = _run([*base, "sql", "DELETE FROM events WHERE k = 'a'"], capsys)
    assert code == cli.EXIT_USAGE and "--allow-writes" in err
    assert tables.read(spark, cfg, C.EVENTS).count() == 2
    assert _run([*base, "sql", "DELETE FROM events WHERE k = 'a'", "--allow-writes"], capsys)[0] == 0
    assert [r.k for r in tables.read(spark, cfg, C.EVENTS).collect()] == ["b"]


@pytest.mark.parametrize("statement", [
    "SELECT * FROM events", "select replace(brand, 'a', 'b') AS b from events",
    "SELECT 'drop table events; delete from x' AS text", "SELECT `update`, `delete` FROM t",
    "-- DROP TABLE events\nSELECT 1", "/* insert */ SELECT 1", "(SELECT 1) UNION ALL (SELECT 2)",
    "WITH x AS (SELECT 1 AS a) SELECT * FROM x", "FROM events SELECT user_id", "SHOW TABLES",
    "DESCRIBE HISTORY events", "DESC events", "EXPLAIN SELECT 1", "VALUES (1), (2)", "TABLE events",
])
def test_reading_statements_pass_the_guard(statement):
    from seqlake.sqlguard import write_problem

    assert write_problem(statement) is None


@pytest.mark.parametrize("statement,word", [
    ("DROP TABLE events", "DROP"), ("  insert into events values (1)", "INSERT"),
    ("UPDATE events SET price = 0", "UPDATE"), ("MERGE INTO events USING x ON 1=1 WHEN MATCHED THEN DELETE", "MERGE"),
    ("ALTER TABLE events ADD COLUMN x int", "ALTER"), ("TRUNCATE TABLE events", "TRUNCATE"),
    ("CREATE TABLE x AS SELECT 1", "CREATE"), ("VACUUM events RETAIN 0 HOURS", "VACUUM"),
    ("RESTORE TABLE events TO VERSION AS OF 0", "RESTORE"), ("FROM events INSERT INTO t SELECT *", "INSERT"),
    ("SELECT 1; DROP TABLE events", "DROP"), ("WITH x AS (SELECT 1) INSERT OVERWRITE events SELECT * FROM x", "INSERT"),
    ("ANALYZE TABLE events COMPUTE STATISTICS", "ANALYZE"), ("CACHE TABLE events", "CACHE"), ("", "empty"),
])
def test_writing_statements_are_refused_naming_the_verb(statement, word):
    from seqlake.sqlguard import write_problem

    assert word in write_problem(statement)
