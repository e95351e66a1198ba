"""Is a SQL statement read-only? The guard of ``seqlake sql``, decided by Spark's own parser.

Every node of the statement's unresolved plan (from the session's parser, Delta's included) is
checked, down to CTE definitions and subqueries. Refused: commands (DDL, DML, SET, USE, CACHE ...)
other than ``READ_COMMANDS``, INSERT and the other ``ACTING_NODES``, calls of ``reflect`` and its
aliases (they call Java methods), ``IDENTIFIER(...)`` names (the analyzer decides what they
are), and anything that does not parse as one statement. EXPLAIN only plans, so it passes whole.
"""
from __future__ import annotations

import re
from typing import Iterator

from py4j.java_gateway import JavaObject
from py4j.protocol import Py4JJavaError
from pyspark.errors import PySparkException
from pyspark.sql import SparkSession

_LOGICAL = "org.apache.spark.sql.catalyst.plans.logical."

# Node class names (``TreeNode.nodeName``) of commands that only read.
READ_COMMANDS = frozenset({
    "ShowTables", "ShowTablesExtended", "ShowTablePartition", "ShowViews", "ShowColumns",
    "ShowPartitions", "ShowTableProperties", "ShowCreateTable", "ShowFunctions", "ShowNamespaces",
    "ShowCatalogsCommand", "ShowCurrentNamespaceCommand", "DescribeRelation", "DescribeColumn",
    "DescribeFunction", "DescribeNamespace", "DescribeQueryCommand", "DescribeDeltaHistory",
    "DescribeDeltaDetailCommand", "ExplainCommand",
})
# Nodes that write or run something without being a ``Command``: what they are, what they do.
ACTING_NODES = {
    "InsertIntoStatement": ("INSERT", "would change a table"),
    "RestoreTableStatement": ("RESTORE", "would change a table"),
    "CloneTableStatement": ("CLONE", "would create a table"),
    "InsertIntoDir": ("INSERT OVERWRITE DIRECTORY", "would write files"),
    "ScriptTransformation": ("TRANSFORM ... USING", "runs an external program"),
    "Call": ("CALL", "runs a procedure"),
    "ExecuteImmediateQuery": ("EXECUTE IMMEDIATE", "runs a statement given as a string"),
}
NAMED_LATER = frozenset({"PlanWithUnresolvedIdentifier", "ExpressionWithUnresolvedIdentifier"})
JAVA_CALLING_FUNCTIONS = frozenset({"reflect", "java_method", "try_reflect"})


def write_problem(spark: SparkSession, statement: str) -> str | None:
    """None when ``statement`` only reads; otherwise why it is refused (one line)."""
    jvm = spark._jvm
    try:
        plan = spark._jsparkSession.sessionState().sqlParser().parsePlan(statement)
    except (PySparkException, Py4JJavaError) as exc:
        text = exc.java_exception.getMessage() if isinstance(exc, Py4JJavaError) else str(exc)
        first = next((line for line in text.splitlines() if line.strip()), "no message")
        return f"Spark does not parse it as one statement: {first.strip()}"

    kind = jvm.java.lang.Class.forName
    plan_class, command_class = kind(_LOGICAL + "LogicalPlan"), kind(_LOGICAL + "Command")
    parsed_class = kind(_LOGICAL + "ParsedStatement")  # a write the analyzer turns into a command
    expression_class = kind("org.apache.spark.sql.catalyst.expressions.Expression")
    iterable_class, product_class = kind("scala.collection.Iterable"), kind("scala.Product")

    pending = [plan]
    while pending:
        node = pending.pop()
        if not isinstance(node, JavaObject):
            continue  # a string, number or flag
        if plan_class.isInstance(node):
            name = node.nodeName().rstrip("$")
            if name == "ExplainCommand":
                continue  # its statement is only planned
            if name in NAMED_LATER:
                return f"IDENTIFIER(...) ({name}) leaves what it names to the analyzer; write the name itself"
            if name in ACTING_NODES:
                words, effect = ACTING_NODES[name]
                return f"{words} ({name}) {effect}"
            if name not in READ_COMMANDS and (command_class.isInstance(node) or parsed_class.isInstance(node)):
                return f"{_plain_words(name)} ({name}) is not a query, SHOW, DESCRIBE or EXPLAIN"
        elif expression_class.isInstance(node):
            name = node.nodeName().rstrip("$")
            if name in NAMED_LATER:
                return f"IDENTIFIER(...) ({name}) leaves what it names to the analyzer; write the name itself"
            if name == "UnresolvedFunction" and node.nameParts().last().lower() in JAVA_CALLING_FUNCTIONS:
                return f"{node.nameParts().last()}() ({name}) calls Java methods"
        elif iterable_class.isInstance(node):  # Seq, Map (of tuples)
            pending.extend(_items(node.iterator()))
            continue
        elif not (product_class.isInstance(node) and node.getClass().getName().startswith("scala.")):
            continue  # a type, an options map ...: no plans or expressions inside
        # A plan's children, CTE definitions and expressions, an expression's arguments and
        # subquery plans, a tuple's or an option's elements are all fields of the product.
        pending.extend(_items(node.productIterator()))
    return None


def _items(iterator) -> Iterator:
    while iterator.hasNext():
        yield iterator.next()


def _plain_words(name: str) -> str:
    """``DropTable`` -> ``DROP TABLE``, ``OptimizeTableCommand`` -> ``OPTIMIZE TABLE``."""
    stem = re.sub(r"(Command|Statement|Query)$", "", name)
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", stem).upper()
