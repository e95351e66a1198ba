"""Column comments: `schemas.COMMENTS` matches the schemas and is safe to put in SQL (no Spark)."""
import pytest

from seqlake import constants as C
from seqlake import schemas
from seqlake.cli import ALL_TABLES

# The tables whose schemas carry no comments of their own, by schema name.
OLDER_TABLES = (
    "EVENTS", "EVENTS_QUARANTINE", "INGEST_RUNS", "SESSION_EVENTS", "SESSIONS", "SESSIONIZE_RUNS",
    "VOCAB", "VOCAB_VERSIONS", "USER_SEQUENCES", "USER_STATE", "STATE_RUNS", "RUN_METRICS",
)


def _schema_of(table: str):
    """The schema of a table: the `schemas` variable named like the `constants` one that names it."""
    names = [name for name in dir(C) if name.isupper() and getattr(C, name) == table]
    found = [getattr(schemas, name) for name in names if hasattr(schemas, name)]
    assert len(found) == 1, f"no single schema for table {table!r} (constants {names})"
    return found[0]


def test_older_tables_all_have_comments():
    assert set(schemas.COMMENTS) == {getattr(C, name) for name in OLDER_TABLES}


@pytest.mark.parametrize("table", sorted(schemas.COMMENTS))
def test_comments_cover_exactly_the_schema_columns(table):
    comments = schemas.COMMENTS[table]
    assert set(comments) == set(_schema_of(table).fieldNames())
    for column, comment in comments.items():
        assert comment.strip(), f"{table}.{column}: empty comment"
        assert "'" not in comment, f"{table}.{column}: single quote"
        assert len(comment) <= 120, f"{table}.{column}: {len(comment)} characters"
        assert "\n" not in comment, f"{table}.{column}: not one line"


@pytest.mark.parametrize("table", ALL_TABLES)
def test_every_registered_column_has_a_comment(table):
    commented = schemas.COMMENTS.get(table, {})
    missing = [
        f.name for f in _schema_of(table).fields
        if not (f.metadata.get("comment") or commented.get(f.name))
    ]
    assert not missing, f"{table}: columns without a comment: {missing}"
