"""Data contracts: Delta refuses a write that breaks a table's CHECK constraints or NOT NULL
columns, leaving the table as it was; a table created without them gets them on registration."""
from __future__ import annotations

import datetime as dt

import pyspark.sql.types as T
import pytest
from delta.tables import DeltaTable
from pyspark.testing import assertDataFrameEqual

from seqlake import constants as C
from seqlake import profiles, schemas, tables

from conftest import make_config

SOURCE = "shop"
DAY = dt.date(2024, 3, 1)
STARTED = dt.datetime(2024, 3, 2, 1, 0)
WHERE = f"source = '{SOURCE}' AND score_date = '{DAY}'"
PARTITIONS = [C.SOURCE, C.SCORE_DATE]
REASON = ("cart", None, 2, 3, 0.1, "carted twice in the last 3 days")


def score(user, propensity, rank, decile, reasons=()):
    return (SOURCE, DAY, user, propensity, rank, decile, 7, "model", "1", 1, "run", list(reasons))


VALID = [score("a", 0.9, 1, 1, [REASON]), score("b", 0.2, 2, 6), score("c", 0.0, 3, 10)]


def nullable(schema: T.StructType) -> T.StructType:
    """``schema`` with every top-level column nullable: a DataFrame that may hold a null key."""
    return T.StructType([T.StructField(f.name, f.dataType, True, f.metadata) for f in schema.fields])


def version(spark, cfg, table: str) -> int:
    return DeltaTable.forPath(spark, cfg.table_path(table)).history(1).first()["version"]


def score_run(users_scored: int, psi: float | None = 0.01) -> tuple:
    return ("score-1", SOURCE, DAY, "model", "1", 1, users_scored, 0.3, 0.1, 0.25, 0.6, psi, 0.02, 0.0, [],
            2, 3, "mlflow-1", STARTED, STARTED)


@pytest.mark.parametrize("table", sorted(schemas.TABLES))
def test_every_declared_constraint_is_valid_sql_over_its_tables_columns(spark, table):
    """Each expression parses and names only the table's columns (analysis only, no Delta)."""
    checks = tables.contract(table, nullable(schemas.TABLES[table]))  # with `not_null`, as for an old table
    assert set(schemas.CONSTRAINTS[table]) < set(checks) and tables.NOT_NULL in checks
    empty = spark.createDataFrame([], schemas.TABLES[table])
    for name, expression in checks.items():
        assert name == name.lower(), name
        empty.filter(expression).schema  # raises on a syntax error or an unknown column


def test_the_profile_segments_in_the_contract_are_the_profiles_segments():
    assert schemas.CONSTRAINTS[C.USER_PROFILE]["segment_known"] == schemas.one_of("segment", profiles.SEGMENTS)


def test_a_created_table_keeps_its_not_null_keys_and_carries_its_constraints(spark, cfg):
    df = spark.createDataFrame(VALID, schemas.USER_PROPENSITY)
    assert tables.replace_where(df, cfg, C.USER_PROPENSITY, WHERE, PARTITIONS) == 3
    stored = tables.read(spark, cfg, C.USER_PROPENSITY).schema
    assert [(f.name, f.nullable) for f in stored.fields] == [(f.name, f.nullable) for f in schemas.USER_PROPENSITY.fields]
    assert stored["propensity"].metadata["comment"]  # the schema's comments as before
    properties = DeltaTable.forPath(spark, cfg.table_path(C.USER_PROPENSITY)).detail().first()["properties"]
    assert {k: v for k, v in properties.items() if k.startswith("delta.constraints.")} == {
        f"delta.constraints.{name}": expression for name, expression in schemas.CONSTRAINTS[C.USER_PROPENSITY].items()
    }
    assert tables.apply_contract(spark, cfg, C.USER_PROPENSITY) == []  # nothing lacking


@pytest.mark.parametrize("row, constraint", [
    (score("x", 1.5, 4, 10), "propensity_in_0_1"),
    (score("x", float("nan"), 4, 10), "propensity_in_0_1"),
    (score("x", 0.5, 4, 0), "decile_in_1_10"),
    (score(None, 0.5, 4, 10), "user_id"),  # NOT NULL column
])
def test_a_write_breaking_the_contract_is_refused_and_changes_nothing(spark, cfg, row, constraint):
    tables.replace_where(spark.createDataFrame(VALID, schemas.USER_PROPENSITY), cfg, C.USER_PROPENSITY, WHERE,
                         PARTITIONS)
    before, rows = version(spark, cfg, C.USER_PROPENSITY), tables.read(spark, cfg, C.USER_PROPENSITY).collect()
    # One bad row among good ones: the whole write is refused (a replaceWhere and an append alike).
    bad = spark.createDataFrame([*VALID[:2], row], nullable(schemas.USER_PROPENSITY))
    with pytest.raises(tables.ContractViolation, match=f"user_propensity.*{constraint}"):
        tables.replace_where(bad, cfg, C.USER_PROPENSITY, WHERE, PARTITIONS)
    with pytest.raises(tables.ContractViolation, match=constraint):
        tables.append(bad.filter(f"user_id IS NULL OR user_id = 'x'"), cfg, C.USER_PROPENSITY, PARTITIONS)
    assert version(spark, cfg, C.USER_PROPENSITY) == before
    assertDataFrameEqual(tables.read(spark, cfg, C.USER_PROPENSITY), rows)


def test_a_merge_breaking_the_contract_is_refused_a_valid_one_passes(spark, cfg):
    tables.replace_where(spark.createDataFrame(VALID, schemas.USER_PROPENSITY), cfg, C.USER_PROPENSITY, WHERE,
                         PARTITIONS)
    target = DeltaTable.forPath(spark, cfg.table_path(C.USER_PROPENSITY))

    def merge(rows):
        source = spark.createDataFrame(rows, schemas.USER_PROPENSITY)
        (target.alias("t").merge(source.alias("s"), "t.source = s.source AND t.user_id = s.user_id")
         .whenMatchedUpdateAll().whenNotMatchedInsertAll().execute())

    before = version(spark, cfg, C.USER_PROPENSITY)
    with pytest.raises(Exception, match="decile_in_1_10"):
        merge([score("b", 0.2, 2, 11)])
    assert version(spark, cfg, C.USER_PROPENSITY) == before
    merge([score("b", 0.3, 2, 5), score("d", 0.1, 4, 10)])
    assert version(spark, cfg, C.USER_PROPENSITY) == before + 1
    assert {r.user_id: r.decile for r in tables.read(spark, cfg, C.USER_PROPENSITY).collect()} == {
        "a": 1, "b": 5, "c": 10, "d": 10}


def test_run_table_refuses_a_negative_count_and_accepts_a_null_psi(spark, cfg):
    runs = nullable(schemas.SCORE_RUNS)
    tables.append(spark.createDataFrame([score_run(3, psi=None)], runs), cfg, C.SCORE_RUNS)
    before = version(spark, cfg, C.SCORE_RUNS)
    with pytest.raises(tables.ContractViolation, match=r"score_runs.*counts_not_negative.*users_scored : -1"):
        tables.append(spark.createDataFrame([score_run(-1)], runs), cfg, C.SCORE_RUNS)
    with pytest.raises(tables.ContractViolation, match="psi_not_negative"):
        tables.append(spark.createDataFrame([score_run(3, psi=-0.5)], runs), cfg, C.SCORE_RUNS)
    assert version(spark, cfg, C.SCORE_RUNS) == before
    assert [r.users_scored for r in tables.read(spark, cfg, C.SCORE_RUNS).collect()] == [3]


def test_a_table_created_without_a_contract_gets_it_on_registration_once(spark, tmp_path):
    cfg = make_config(tmp_path, "lake.database=contracts_test")
    path = cfg.table_path(C.USER_PROPENSITY)
    # As an older version wrote it: the first write created the table, every column nullable.
    spark.createDataFrame(VALID, schemas.USER_PROPENSITY).write.format("delta").partitionBy(*PARTITIONS).save(path)
    assert all(f.nullable for f in tables.read(spark, cfg, C.USER_PROPENSITY).schema.fields)

    assert tables.register(spark, cfg, [C.USER_PROPENSITY]) == ["contracts_test.user_propensity"]
    properties = DeltaTable.forPath(spark, path).detail().first()["properties"]
    expected = tables.contract(C.USER_PROPENSITY, nullable(schemas.USER_PROPENSITY))
    assert {k[len("delta.constraints."):]: v for k, v in properties.items() if k.startswith("delta.constraints.")} \
        == expected
    assert "`user_id` IS NOT NULL" in expected[tables.NOT_NULL]
    registered = version(spark, cfg, C.USER_PROPENSITY)
    assert registered == len(expected)  # one commit per constraint

    # Twice: nothing to add, no commit.
    assert tables.register(spark, cfg, [C.USER_PROPENSITY]) == ["contracts_test.user_propensity"]
    assert tables.apply_contract(spark, cfg, C.USER_PROPENSITY) == []
    assert version(spark, cfg, C.USER_PROPENSITY) == registered

    # Enforced from now on, the keys too.
    for row, constraint in [(score(None, 0.5, 4, 10), tables.NOT_NULL), (score("x", 1.5, 4, 10), "propensity_in_0_1")]:
        with pytest.raises(tables.ContractViolation, match=constraint):
            tables.append(spark.createDataFrame([row], nullable(schemas.USER_PROPENSITY)), cfg, C.USER_PROPENSITY,
                          PARTITIONS)
    assert version(spark, cfg, C.USER_PROPENSITY) == registered
    assertDataFrameEqual(tables.read(spark, cfg, C.USER_PROPENSITY),
                         spark.createDataFrame(VALID, nullable(schemas.USER_PROPENSITY)))


def test_registration_refuses_a_constraint_existing_rows_break_naming_table_and_constraint(spark, tmp_path):
    cfg = make_config(tmp_path, "lake.database=contracts_test")
    path = cfg.table_path(C.USER_PROPENSITY)
    spark.createDataFrame([*VALID, score("z", 0.5, 4, 0)], schemas.USER_PROPENSITY).write.format("delta").save(path)
    with pytest.raises(tables.ContractViolation, match=r"table user_propensity: cannot add constraint decile_in_1_10 "
                                                       r"CHECK \(decile BETWEEN 1 AND 10\).*1 rows"):
        tables.register(spark, cfg, [C.USER_PROPENSITY])
    # The constraints before it in the contract were added; the broken one was not.
    properties = DeltaTable.forPath(spark, path).detail().first()["properties"]
    assert "delta.constraints.propensity_in_0_1" in properties
    assert "delta.constraints.decile_in_1_10" not in properties


def test_a_changed_expression_replaces_the_constraint(spark, cfg, monkeypatch):
    tables.replace_where(spark.createDataFrame(VALID, schemas.USER_PROPENSITY), cfg, C.USER_PROPENSITY, WHERE,
                         PARTITIONS)
    changed = {**schemas.CONSTRAINTS[C.USER_PROPENSITY], "horizon_positive": "horizon_days BETWEEN 1 AND 365"}
    monkeypatch.setitem(schemas.CONSTRAINTS, C.USER_PROPENSITY, changed)
    assert tables.apply_contract(spark, cfg, C.USER_PROPENSITY) == ["horizon_positive"]
    properties = DeltaTable.forPath(spark, cfg.table_path(C.USER_PROPENSITY)).detail().first()["properties"]
    assert properties["delta.constraints.horizon_positive"] == "horizon_days BETWEEN 1 AND 365"
    assert tables.apply_contract(spark, cfg, C.USER_PROPENSITY) == []


def test_a_table_without_the_declared_columns_is_left_alone(spark, cfg):
    spark.createDataFrame([("a", 1)], "k string, v int").write.format("delta").save(cfg.table_path(C.EVENTS))
    assert tables.apply_contract(spark, cfg, C.EVENTS) == []
    assert version(spark, cfg, C.EVENTS) == 0
