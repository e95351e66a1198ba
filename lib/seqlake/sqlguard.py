"""Is a SQL statement read-only? The guard of ``seqlake sql`` (no Spark needed).

``seqlake sql`` is for reading the lake. A statement runs only if it starts with a reading verb
(SELECT, WITH, FROM, VALUES, TABLE, SHOW, DESCRIBE, EXPLAIN) and names no writing verb outside
string literals, quoted identifiers and comments (``WITH ... INSERT`` and ``FROM t INSERT ...``
are writes too). A word followed by ``(`` is a function call (``replace(s, 'a', 'b')``), not a
verb. A column really named like a verb must be back-quoted. This guards against mistakes, not
against an adversary: the lake's storage permissions are the access control.
"""
from __future__ import annotations

import re

READ_VERBS = frozenset({"SELECT", "WITH", "FROM", "VALUES", "TABLE", "SHOW", "DESCRIBE", "DESC", "EXPLAIN"})
WRITE_VERBS = frozenset({
    "INSERT", "DELETE", "UPDATE", "MERGE", "DROP", "ALTER", "TRUNCATE", "CREATE", "REPLACE",
    "OPTIMIZE", "VACUUM", "RESTORE", "MSCK", "LOAD", "CONVERT", "CLONE", "REORG", "GRANT",
    "REVOKE", "ANALYZE",
})

# Comments, then literals and quoted identifiers (their contents are data, not verbs).
_HIDDEN = re.compile(
    r"--[^\n]*|/\*.*?\*/|'(?:\\.|[^'\\])*'|\"(?:\\.|[^\"\\])*\"|`(?:``|[^`])*`",
    re.DOTALL,
)
_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\S")


def write_problem(statement: str) -> str | None:
    """None when ``statement`` only reads; otherwise why it is refused (one line)."""
    tokens = _TOKEN.findall(_HIDDEN.sub(" ", statement))
    words = [t.upper() for t in tokens]
    first = next((w for w in words if w != "("), None)
    if first is None:
        return "empty statement"
    if first not in READ_VERBS:
        return f"{first} is not a reading statement"
    if first == "EXPLAIN":  # shows a plan, runs nothing
        return None
    for i, word in enumerate(words):
        if word in WRITE_VERBS and (i + 1 == len(words) or words[i + 1] != "("):
            return f"{word} would change a table"
    return None
