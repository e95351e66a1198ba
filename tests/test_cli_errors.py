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
    ([], ["sql", "DROP TABLE seqlake.events"], "refused: DROP TABLE (DropTable)"),
    ([], ["sql", "WITH x AS (SELECT 1) INSERT INTO seqlake.events SELECT * FROM x"], "refused: INSERT (InsertIntoStatement)"),
    ([], ["sql", "delete from events"], "refused: DELETE FROM TABLE (DeleteFromTable)"),
    ([], ["sql", "OPTIMIZE seqlake.events"], "refused: OPTIMIZE TABLE (OptimizeTableCommand)"),
]


@pytest.mark.parametrize("global_args,command,fragment", BAD, ids=[" ".join(b[1][:2]) + f"-{i}" for i, b in enumerate(BAD)])
def test_bad_input_gives_one_line_naming_it_before_anything_is_touched(request, tmp_path, capsys, global_args, command,
                                                                       fragment):
    if command[0] == "sql":
        request.getfixturevalue("spark")  # the guard asks the session's parser (the shared session)
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


RAW_STRING_BYPASS = r"WITH x AS (SELECT r'\' AS a) INSERT INTO seqlake.events SELECT * FROM seqlake.events --'"


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
    # The raw string r'\' once hid this INSERT from a regex guard; the parser sees it.
    bypass = RAW_STRING_BYPASS.replace("seqlake.events", "sqlguard_test.events")
    code, err = _run([*base, "sql", bypass], capsys)
    assert code == cli.EXIT_USAGE and err.strip().splitlines() == [
        "seqlake sql: error: refused: INSERT (InsertIntoStatement) would change a table; "
        "`seqlake sql` only reads unless --allow-writes is given"]
    assert tables.read(spark, cfg, C.EVENTS).count() == 2
    assert _run([*base, "sql", bypass, "--allow-writes"], capsys)[0] == 0  # it does write when allowed
    assert tables.read(spark, cfg, C.EVENTS).count() == 4
    assert _run([*base, "sql", "DELETE FROM events WHERE k = 'a'", "--allow-writes"], capsys)[0] == 0
    assert [r.k for r in tables.read(spark, cfg, C.EVENTS).collect()] == ["b", "b"]


@pytest.mark.parametrize("statement", [
    "SELECT * FROM events", "select replace(brand, 'a', 'b') AS b from events",
    "SELECT 'drop table events; delete from x' AS text", "SELECT `update`, `delete` FROM t", "SELECT 1 AS update",
    "-- DROP TABLE events\nSELECT 1", "/* insert */ SELECT 1", "(SELECT 1) UNION ALL (SELECT 2)",
    "WITH x AS (SELECT 1 AS a) SELECT * FROM x", "FROM events SELECT user_id", "SHOW TABLES",
    "DESCRIBE HISTORY events", "DESCRIBE DETAIL events", "DESC events", "SHOW COLUMNS IN events",
    "EXPLAIN SELECT 1", "EXPLAIN INSERT INTO events SELECT * FROM events", "VALUES (1), (2)", "TABLE events",
    "SELECT r'\\' AS backslash, 'update' AS word", "SELECT * FROM events WHERE user_id IN (SELECT user_id FROM t)",
])
def test_reading_statements_pass_the_guard(spark, statement):
    from seqlake.sqlguard import write_problem

    assert write_problem(spark, statement) is None


@pytest.mark.parametrize("statement,words", [
    ("DROP TABLE events", "DROP TABLE (DropTable)"), ("  insert into events values (1)", "INSERT (InsertIntoStatement)"),
    ("UPDATE events SET price = 0", "UPDATE TABLE (UpdateTable)"),
    ("MERGE INTO events USING x ON 1=1 WHEN MATCHED THEN DELETE", "MERGE INTO TABLE (MergeIntoTable)"),
    ("ALTER TABLE events ADD COLUMN x int", "ADD COLUMNS (AddColumns)"),
    ("TRUNCATE TABLE events", "TRUNCATE TABLE (TruncateTable)"),
    ("CREATE TABLE x AS SELECT 1", "CREATE TABLE AS SELECT (CreateTableAsSelect)"),
    ("VACUUM events RETAIN 0 HOURS", "VACUUM TABLE (VacuumTableCommand)"),
    ("RESTORE TABLE events TO VERSION AS OF 0", "RESTORE (RestoreTableStatement)"),
    ("FROM events INSERT INTO t SELECT *", "INSERT (InsertIntoStatement)"),
    ("WITH x AS (SELECT 1) INSERT OVERWRITE events SELECT * FROM x", "INSERT (InsertIntoStatement)"),
    (RAW_STRING_BYPASS, "INSERT (InsertIntoStatement)"),
    ("WITH x AS (INSERT INTO events SELECT 1) SELECT * FROM x", "does not parse"),
    ("SELECT 1; DROP TABLE events", "does not parse"), ("", "PARSE_EMPTY_STATEMENT"),
    ("ANALYZE TABLE events COMPUTE STATISTICS", "ANALYZE TABLE (AnalyzeTable)"),
    ("CACHE TABLE events", "CACHE TABLE (CacheTable)"), ("SET spark.sql.ansi.enabled = false", "SET (SetCommand)"),
    ("USE other", "(SetCatalogAndNamespace)"), ("DELETE FROM events", "DELETE FROM TABLE (DeleteFromTable)"),
    ("SELECT reflect('java.lang.System', 'exit', 0)", "reflect() (UnresolvedFunction) calls Java methods"),
    ("SELECT * FROM events WHERE 1 = (SELECT java_method('java.lang.System', 'exit', 0))", "java_method()"),
    ("SELECT count(*) OVER w FROM events WINDOW w AS (PARTITION BY TRY_REFLECT('java.util.UUID', 'randomUUID'))",
     "TRY_REFLECT()"),
    ("SELECT TRANSFORM(user_id) USING 'cat' FROM events", "TRANSFORM ... USING (ScriptTransformation) runs"),
    ("EXECUTE IMMEDIATE 'DROP TABLE events'", "EXECUTE IMMEDIATE (ExecuteImmediateQuery)"),
    ("SELECT * FROM IDENTIFIER('events')", "(PlanWithUnresolvedIdentifier)"),
    ("SELECT IDENTIFIER('reflect')('java.lang.System', 'exit', 0)", "(ExpressionWithUnresolvedIdentifier)"),
])
def test_writing_statements_are_refused_naming_the_node(spark, statement, words):
    from seqlake.sqlguard import write_problem

    problem = write_problem(spark, statement)
    assert problem is not None and words in problem, problem
