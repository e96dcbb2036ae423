"""Spider's official exact-set match and difficulty, reimplemented so that scores equal the official ones item by item.

The official evaluator (Yu et al. 2018: `process_sql.py` and `evaluation.py` of the Spider release, as kept in
test-suite-sql-eval) tokenizes a query with NLTK, parses it into its own structure (`parse_sql` below builds the same
one), blanks the values, drops DISTINCT, maps columns linked by a foreign key to one column, and compares components:
SELECT (with and without aggregates), WHERE (with and without operators), GROUP BY, GROUP BY + HAVING, ORDER BY (+
whether both have a LIMIT), AND/OR, INTERSECT/UNION/EXCEPT (matched recursively), the keyword set, and the FROM tables.
A prediction it cannot parse is scored as an empty query.

Its quirks are kept on purpose, because they decide scores: a query it cannot tokenize or parse (`<>`, `>=` written
without spaces around the value, a column alias, `FROM a, b`) scores as empty; values inside a FROM subquery are not
blanked (they must match, case included); a nested WHERE subquery keeps its DISTINCT and its own column names; GROUP
BY compares column names without their table; every LIMIT counts as `limit 1`. The difficulty rules count a
condition's NOT and HAVING's AND/OR as aggregations and do not count a FROM subquery as nesting. `keep_distinct=True`
is the one stricter option: DISTINCT must agree, in aggregates (the official `DISABLE_DISTINCT = False`) and in the
select list (which the official code never compares).
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field


CLAUSE_KEYWORDS = ("select", "from", "where", "group", "order", "limit", "intersect", "union", "except")
JOIN_KEYWORDS = ("join", "on", "as")
WHERE_OPS = ("not", "between", "=", ">", "<", ">=", "<=", "!=", "in", "like", "is", "exists")
UNIT_OPS = ("none", "-", "+", "*", "/")
AGG_OPS = ("none", "max", "min", "count", "sum", "avg")
SET_OPS = ("intersect", "union", "except")
ORDER_OPS = ("desc", "asc")


class SpiderParseError(ValueError):
    """The official parser would fail on this query."""


def empty_sql() -> dict:
    """What a prediction that does not parse is scored as."""
    return {"select": (False, []), "from": {"table_units": [], "conds": []}, "where": [], "groupBy": [], "having": [],
            "orderBy": [], "limit": None, "intersect": None, "union": None, "except": None}  # fmt: skip


@dataclass
class Schema:
    """One database of tables.json: lower-cased table -> columns, the official ids (`*` -> `__all__`, `t` ->
    `__t__`, `t.c` -> `__t.c__`) and the foreign-key map (every column of a linked set -> the set's first column)."""

    tables: dict[str, list[str]]
    foreign_keys: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        self.ids = {"*": "__all__"} | {f"{t}.{c}": f"__{t}.{c}__" for t, cs in self.tables.items() for c in cs}
        self.ids |= {t: f"__{t}__" for t in self.tables}

    @classmethod
    def from_json(cls, entry: dict) -> Schema:
        names = [name.lower() for name in entry["table_names_original"]]
        tables = {name: [] for name in names}
        ids = []
        for table, column in entry["column_names_original"]:
            if table >= 0:
                tables[names[table]].append(column.lower())
            ids.append(f"__{names[table]}.{column.lower()}__" if table >= 0 else "__all__")
        linked: list[set[int]] = []
        for pair in entry.get("foreign_keys", []):
            group = next((g for g in linked if pair[0] in g or pair[1] in g), None)
            if group is None:
                linked.append(group := set())
            group.update(pair)
        return cls(tables, {ids[i]: ids[min(group)] for group in linked for i in group})

    def id_of(self, key: str) -> str:
        if key not in self.ids:
            raise SpiderParseError(f"unknown table or column {key!r}")
        return self.ids[key]


# --- tokens --------------------------------------------------------------------------------------------------------


def tokenize(query: str) -> list[str]:
    """The official tokens: quoted values kept whole (single quotes read as double), NLTK's word tokenizer for the
    rest, lower-cased, and `! =` / `> =` / `< =` joined."""
    from nltk.tokenize import word_tokenize

    text = str(query).replace("'", '"')
    quotes = [i for i, char in enumerate(text) if char == '"']
    if len(quotes) % 2:
        raise SpiderParseError("unbalanced quotes")
    values = {}
    for end in range(len(quotes) - 1, 0, -2):
        first, last = quotes[end - 1], quotes[end]
        key = f"__val_{first}_{last}__"
        values[key] = text[first : last + 1]
        text = text[:first] + key + text[last + 1 :]
    # preserve_line: one "sentence" (the official call also runs NLTK's sentence splitter, whose Punkt data is a
    # separate download; it does not split SQL, whose string values are already replaced)
    tokens = [values.get(word.lower(), word.lower()) for word in word_tokenize(text, preserve_line=True)]
    for i in reversed([i for i, token in enumerate(tokens) if token == "="]):
        before = tokens[i - 1]  # the official code reads tokens[-1] for a leading "=": kept
        if before in ("!", ">", "<"):
            tokens = tokens[: i - 1] + [before + "="] + tokens[i + 1 :]
    return tokens


# --- the parser (the official grammar and its shortcuts) -----------------------------------------------------------


class _Parser:
    def __init__(self, tokens: list[str], schema: Schema, aliases: dict | None = None):
        self.tokens, self.schema = tokens, schema
        if aliases is not None:  # a parser over a slice of the query, sharing its aliases
            self.aliases = aliases
            return
        aliases = {}
        for i, token in enumerate(tokens):
            if token == "as":
                aliases[self.at(i + 1)] = tokens[i - 1]
        for table in schema.tables:
            if table in aliases:
                raise SpiderParseError(f"alias {table!r} is also a table name")
            aliases[table] = table
        self.aliases = aliases

    def at(self, i: int) -> str:
        if not 0 <= i < len(self.tokens):
            raise SpiderParseError("the query ends too early")
        return self.tokens[i]

    def expect(self, i: int, token: str) -> int:
        if self.at(i) != token:
            raise SpiderParseError(f"expected {token!r} at token {i}, found {self.at(i)!r}")
        return i + 1

    def table_of(self, alias: str) -> str:
        if alias not in self.aliases:
            raise SpiderParseError(f"unknown table or alias {alias!r}")
        return self.aliases[alias]

    def column(self, i: int, tables: list[str] | None) -> tuple[int, str]:
        token = self.at(i)
        if token == "*":
            return i + 1, "__all__"
        if "." in token:
            parts = token.split(".")
            if len(parts) != 2:
                raise SpiderParseError(f"column {token!r}")
            return i + 1, self.schema.id_of(self.table_of(parts[0]) + "." + parts[1])
        if not tables:
            raise SpiderParseError(f"column {token!r} outside a query with tables")
        for alias in tables:
            table = self.table_of(alias)
            if token in self.schema.tables[table]:
                return i + 1, self.schema.id_of(f"{table}.{token}")
        raise SpiderParseError(f"unknown column {token!r}")

    def col_unit(self, i: int, tables) -> tuple[int, tuple]:
        """(aggregate id, column id, distinct); an aggregate's parentheses are its own (a bracket opened before
        an aggregate is left open, as officially)."""
        block = self.at(i) == "("
        i += block
        if self.at(i) in AGG_OPS:
            aggregate = AGG_OPS.index(self.at(i))
            i = self.expect(i + 1, "(")
            distinct = self.at(i) == "distinct"
            i, column = self.column(i + distinct, tables)
            return self.expect(i, ")"), (aggregate, column, distinct)
        distinct = self.at(i) == "distinct"
        i, column = self.column(i + distinct, tables)
        if block:
            i = self.expect(i, ")")
        return i, (0, column, distinct)

    def val_unit(self, i: int, tables) -> tuple[int, tuple]:
        """(arithmetic operator id, column unit, second column unit or None)."""
        block = self.at(i) == "("
        i, first = self.col_unit(i + block, tables)
        operator, second = 0, None
        if i < len(self.tokens) and self.tokens[i] in UNIT_OPS:
            operator = UNIT_OPS.index(self.tokens[i])
            i, second = self.col_unit(i + 1, tables)
        if block:
            i = self.expect(i, ")")
        return i, (operator, first, second)

    def value(self, i: int, tables):
        """A nested query (dict), a quoted string, a number, or else a column unit."""
        start = i
        block = self.at(i) == "("
        i += block
        token = self.at(i)
        if token == "select":
            i, value = self.query(i)
        elif '"' in token:
            i, value = i + 1, token
        else:
            try:
                i, value = i + 1, float(token)
            except ValueError:
                end = i
                while (
                    end < len(self.tokens)
                    and self.tokens[end] not in (",", ")", "and") + CLAUSE_KEYWORDS + JOIN_KEYWORDS
                ):
                    end += 1
                # officially parsed from `start` (an opening bracket included), within the tokens before `end`
                _, value = _Parser(self.tokens[start:end], self.schema, self.aliases).col_unit(0, tables)
                i = end
        if block:
            i = self.expect(i, ")")
        return i, value

    def condition(self, i: int, tables) -> tuple[int, list]:
        """[cond_unit, "and"/"or", cond_unit, ...]; cond_unit = (not, operator id, val_unit, value, value2)."""
        conditions = []
        while i < len(self.tokens):
            i, unit = self.val_unit(i, tables)
            negated = self.at(i) == "not"
            i += negated
            if self.at(i) not in WHERE_OPS:
                raise SpiderParseError(f"no condition operator at {self.at(i)!r}")
            operator = WHERE_OPS.index(self.at(i))
            i, first = self.value(i + 1, tables)
            second = None
            if WHERE_OPS[operator] == "between":
                i, second = self.value(self.expect(i, "and"), tables)
            conditions.append((negated, operator, unit, first, second))
            if i < len(self.tokens) and self.tokens[i] in CLAUSE_KEYWORDS + (")", ";") + JOIN_KEYWORDS:
                break
            if i < len(self.tokens) and self.tokens[i] in ("and", "or"):
                conditions.append(self.tokens[i])
                i += 1
        return i, conditions

    def select(self, i: int, tables) -> tuple:
        i = self.expect(i, "select")
        distinct = i < len(self.tokens) and self.tokens[i] == "distinct"
        i += distinct
        units = []
        while i < len(self.tokens) and self.tokens[i] not in CLAUSE_KEYWORDS:
            aggregate = AGG_OPS.index(self.tokens[i]) if self.tokens[i] in AGG_OPS else 0
            i, unit = self.val_unit(i + (self.tokens[i] in AGG_OPS), tables)
            units.append((aggregate, unit))
            if i < len(self.tokens) and self.tokens[i] == ",":
                i += 1
        return distinct, units

    def from_(self, start: int) -> tuple[int, list, list, list]:
        if "from" not in self.tokens[start:]:
            raise SpiderParseError("no FROM")
        i = self.tokens.index("from", start) + 1
        tables, units, conditions = [], [], []
        while i < len(self.tokens):
            block = self.at(i) == "("
            i += block
            if self.at(i) == "select":
                i, nested = self.query(i)
                units.append(("sql", nested))
            else:
                i += self.at(i) == "join"
                name = self.table_of(self.at(i))
                i += 3 if i + 1 < len(self.tokens) and self.tokens[i + 1] == "as" else 1
                units.append(("table_unit", self.schema.id_of(name)))
                tables.append(name)
            if i < len(self.tokens) and self.tokens[i] == "on":
                i, more = self.condition(i + 1, tables)
                conditions += (["and"] if conditions else []) + more
            if block:
                i = self.expect(i, ")")
            if i < len(self.tokens) and self.tokens[i] in CLAUSE_KEYWORDS + (")", ";"):
                break
        return i, units, conditions, tables

    def _list(self, i: int, word: str, item) -> tuple[int, list]:
        """`word BY item, item, ...` (GROUP BY / ORDER BY), with ORDER BY's direction read after any item."""
        i = self.expect(i + 1, "by")
        items, direction = [], "asc"
        while i < len(self.tokens) and self.tokens[i] not in CLAUSE_KEYWORDS + (")", ";"):
            i, unit = item(i)
            items.append(unit)
            if word == "order" and i < len(self.tokens) and self.tokens[i] in ORDER_OPS:
                direction, i = self.tokens[i], i + 1
            if i < len(self.tokens) and self.tokens[i] == ",":
                i += 1
            else:
                break
        return i, (direction, items) if word == "order" else items

    def query(self, start: int) -> tuple[int, dict]:
        i = start
        block = self.at(i) == "("
        i += block
        end, units, conditions, tables = self.from_(start)
        sql = {"from": {"table_units": units, "conds": conditions}, "select": self.select(i, tables)}
        i = end
        sql["where"], sql["groupBy"], sql["having"], sql["orderBy"] = [], [], [], []
        if i < len(self.tokens) and self.tokens[i] == "where":
            i, sql["where"] = self.condition(i + 1, tables)
        if i < len(self.tokens) and self.tokens[i] == "group":
            i, sql["groupBy"] = self._list(i, "group", lambda j: self.col_unit(j, tables))
        if i < len(self.tokens) and self.tokens[i] == "having":
            i, sql["having"] = self.condition(i + 1, tables)
        if i < len(self.tokens) and self.tokens[i] == "order":
            i, sql["orderBy"] = self._list(i, "order", lambda j: self.val_unit(j, tables))
        sql["limit"] = None
        if i < len(self.tokens) and self.tokens[i] == "limit":
            self.at(i + 1)  # officially the value must be there, and is read as 1 whatever it is
            i, sql["limit"] = i + 2, 1
        while i < len(self.tokens) and self.tokens[i] == ";":
            i += 1
        if block:
            i = self.expect(i, ")")
        while i < len(self.tokens) and self.tokens[i] == ";":
            i += 1
        for op in SET_OPS:
            sql[op] = None
        if i < len(self.tokens) and self.tokens[i] in SET_OPS:
            op = self.tokens[i]
            i, sql[op] = self.query(i + 1)
        return i, sql


def parse_sql(query: str, schema: Schema) -> dict:
    """The official structure of `query` (anything after the parsed part is ignored, as officially); raises
    `SpiderParseError` where the official parser fails."""
    try:
        return _Parser(tokenize(query), schema).query(0)[1]
    except SpiderParseError:
        raise
    except (IndexError, KeyError, ValueError, RecursionError) as error:  # defensive: never crash on a prediction
        raise SpiderParseError(str(error)) from None


# --- difficulty ------------------------------------------------------------------------------------------------------


def _conditions(sql: dict) -> tuple[list, list]:
    """(condition units, connectors) of FROM's ON, WHERE and HAVING together."""
    parts = sql["from"]["conds"], sql["where"], sql["having"]
    return [u for p in parts for u in p[::2]], [c for p in parts for c in p[1::2]]


def _nested(sql: dict) -> list:
    units, _ = _conditions(sql)
    return [v for unit in units for v in unit[3:5] if isinstance(v, dict)] + [
        sql[op] for op in ("intersect", "except", "union") if sql[op] is not None
    ]


def hardness(sql: dict) -> str:
    """easy / medium / hard / extra by the official counts (on the parsed gold query)."""
    units, connectors = _conditions(sql)
    component1 = sum(bool(sql[k]) for k in ("where", "groupBy", "orderBy")) + (sql["limit"] is not None)
    component1 += max(len(sql["from"]["table_units"]) - 1, 0) + connectors.count("or")
    component1 += sum(unit[1] == WHERE_OPS.index("like") for unit in units)
    component2 = len(_nested(sql))
    # Officially "aggregations" counts whatever has a non-zero first field: aggregated columns, but also a WHERE
    # condition's NOT and every element of HAVING (its conditions' NOT and its AND/OR words).
    order_columns = [c for unit in (sql["orderBy"][1] if sql["orderBy"] else []) for c in unit[1:] if c]
    firsts = [u[0] for u in sql["select"][1]] + [u[0] for u in sql["where"][::2]] + [u[0] for u in sql["groupBy"]]
    firsts += [c[0] for c in order_columns] + [u[0] for u in sql["having"]]
    others = sum([sum(f != 0 for f in firsts) > 1, len(sql["select"][1]) > 1, len(sql["where"]) > 1,
                  len(sql["groupBy"]) > 1])  # fmt: skip
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


# --- normalisation: values blanked, DISTINCT dropped, foreign keys merged --------------------------------------------


def _blank_values(sql: dict | None) -> dict | None:
    """Values of ON/WHERE/HAVING conditions become None, nested queries are blanked in turn (FROM subqueries are
    not: officially their values stay)."""
    if sql is None:
        return None

    def blank(condition):
        return [c if k % 2 else (*c[:3], *(_blank_values(v) if isinstance(v, dict) else None for v in c[3:5]))
                for k, c in enumerate(condition)]  # fmt: skip

    sql["from"]["conds"] = blank(sql["from"]["conds"])
    sql["where"], sql["having"] = blank(sql["where"]), blank(sql["having"])
    for op in SET_OPS:
        sql[op] = _blank_values(sql[op])
    return sql


def _merge_columns(sql: dict | None, schema: Schema, valid: set[str], keep_distinct: bool) -> dict | None:
    """Column ids of the FROM tables that a foreign key links become the linked set's first column; DISTINCT is
    dropped (unless `keep_distinct`). Officially this reaches SELECT, ON/WHERE/HAVING left sides, GROUP BY, ORDER BY
    and the INTERSECT/UNION/EXCEPT parts, not nested conditions' queries."""
    if sql is None:
        return None

    def col(unit):
        if unit is None:
            return None
        aggregate, column, distinct = unit
        if column in schema.foreign_keys and column in valid:
            column = schema.foreign_keys[column]
        return aggregate, column, distinct if keep_distinct else None

    def val(unit):
        return unit[0], col(unit[1]), col(unit[2])

    def conditions(items):
        return [c if k % 2 else (c[0], c[1], val(c[2]), c[3], c[4]) for k, c in enumerate(items)]

    distinct, units = sql["select"]
    sql["select"] = (distinct if keep_distinct else None, [(a, val(u)) for a, u in units])
    sql["from"]["conds"] = conditions(sql["from"]["conds"])
    sql["where"], sql["having"] = conditions(sql["where"]), conditions(sql["having"])
    sql["groupBy"] = [col(u) for u in sql["groupBy"]]
    if sql["orderBy"]:
        sql["orderBy"] = (sql["orderBy"][0], [val(u) for u in sql["orderBy"][1]])
    for op in SET_OPS:
        sql[op] = _merge_columns(sql[op], schema, valid, keep_distinct)
    return sql


def normalise(sql: dict, schema: Schema, keep_distinct: bool = False) -> dict:
    """The form the official matcher compares: values blanked, DISTINCT dropped, foreign-key-linked columns of the
    query's FROM tables merged."""
    sql = copy.deepcopy(sql)
    prefixes = {unit[1][:-2] for unit in sql["from"]["table_units"] if unit[0] == "table_unit"}
    valid = {f"__{t}.{c}__" for t, columns in schema.tables.items() for c in columns if f"__{t}" in prefixes}
    return _merge_columns(_blank_values(sql), schema, valid, keep_distinct)


# --- matching --------------------------------------------------------------------------------------------------------


def _same_multiset(predicted: list, gold: list) -> bool:
    return Counter(map(repr, predicted)) == Counter(map(repr, gold))


def _keywords(sql: dict) -> set[str]:
    units, connectors = _conditions(sql)
    words = {word for word, present in (("where", sql["where"]), ("group", sql["groupBy"]),
                                        ("having", sql["having"]), ("order", sql["orderBy"]),
                                        ("limit", sql["limit"] is not None), ("or", "or" in connectors),
                                        ("not", any(u[0] for u in units)),
                                        ("in", any(u[1] == WHERE_OPS.index("in") for u in units)),
                                        ("like", any(u[1] == WHERE_OPS.index("like") for u in units)))
             if present}  # fmt: skip
    words |= {op for op in SET_OPS if sql[op] is not None}
    return words | ({sql["orderBy"][0]} if sql["orderBy"] else set())


def partial_match(predicted: dict, gold: dict) -> dict[str, bool]:
    """Each official component: does the (normalised) prediction match the (normalised) gold query?"""

    def group_names(sql):
        return [u[1].split(".")[1] if "." in u[1] else u[1] for u in sql["groupBy"]]

    def limits_agree():
        return (predicted["limit"] is None) == (gold["limit"] is None)

    nested = all(
        (predicted[op] is None) == (gold[op] is None)
        and (gold[op] is None or exact_match_parsed(predicted[op], gold[op]))
        for op in SET_OPS
    )  # fmt: skip
    return {
        # the DISTINCT flags are None unless normalised with keep_distinct (officially never compared)
        "select": predicted["select"][0] == gold["select"][0]
        and _same_multiset(predicted["select"][1], gold["select"][1]),
        "select(no AGG)": _same_multiset([u[1] for u in predicted["select"][1]], [u[1] for u in gold["select"][1]]),
        "where": _same_multiset(predicted["where"][::2], gold["where"][::2]),
        "where(no OP)": _same_multiset([u[2] for u in predicted["where"][::2]], [u[2] for u in gold["where"][::2]]),
        "group(no Having)": _same_multiset(group_names(predicted), group_names(gold)),
        "group": bool(predicted["groupBy"]) == bool(gold["groupBy"])
        and (
            not gold["groupBy"]
            or (
                [u[1] for u in predicted["groupBy"]] == [u[1] for u in gold["groupBy"]]
                and predicted["having"] == gold["having"]
            )
        ),  # fmt: skip
        "order": bool(predicted["orderBy"]) == bool(gold["orderBy"])
        and (not gold["orderBy"] or (predicted["orderBy"] == gold["orderBy"] and limits_agree())),
        "and/or": set(predicted["where"][1::2]) == set(gold["where"][1::2]),
        "IUEN": nested,
        "keywords": _keywords(predicted) == _keywords(gold),
    }


def exact_match_parsed(predicted: dict, gold: dict, parts: dict[str, bool] | None = None) -> bool:
    """Official exact match of two normalised queries: every component (`parts`, when already computed), then the
    FROM tables as a multiset."""
    if not all((parts or partial_match(predicted, gold)).values()):
        return False
    return not gold["from"]["table_units"] or _same_multiset(
        predicted["from"]["table_units"], gold["from"]["table_units"]
    )


def evaluate_item(predicted: str, gold: str, schema: Schema, keep_distinct: bool = False) -> dict:
    """One Spider item as the official evaluator scores it: {"exact": bool, "hardness": level, "parts": {component:
    bool}, "parsed": whether the prediction parsed}. The gold query must parse."""
    gold_sql = parse_sql(gold, schema)
    level = hardness(gold_sql)
    try:
        predicted_sql, parsed = parse_sql(predicted.replace("value", "1"), schema), True  # officially "value" -> 1
    except SpiderParseError:
        predicted_sql, parsed = empty_sql(), False
    p, g = normalise(predicted_sql, schema, keep_distinct), normalise(gold_sql, schema, keep_distinct)
    parts = partial_match(p, g)
    exact = exact_match_parsed(p, g, parts)
    return {"exact": exact, "hardness": level, "parts": parts, "parsed": parsed}
