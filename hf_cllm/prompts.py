"""Prompts: where they come from, how a dataset row becomes one (a format per task), and their token ids.

Shared by trajectory collection and the benchmarks. The templates are the CLLM paper's (its trajectory data and
evaluation use them). A row of a dataset becomes one prompt text; with `chat=True` that text is the user turn of the
tokenizer's chat template. A `messages` column (chat data) is used as it is: the conversation up to its last user
turn is the prompt, a final assistant turn the label.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PromptFormat:
    """How a dataset row becomes a prompt (`template`, `str.format` over the row) and where its gold answer is."""

    name: str
    template: str
    label_column: str | None = None

    def columns(self) -> list[str]:
        import string

        return [field for _, field, _, _ in string.Formatter().parse(self.template) if field]

    def prompt(self, row: dict) -> str:
        missing = [column for column in self.columns() if column not in row]
        if missing:
            raise KeyError(
                f"the {self.name!r} prompt format needs the column(s) {missing}, and the row has {sorted(row)}; "
                "rename the columns or choose another --task (generic uses 'prompt')"
            )
        empty = [column for column in self.columns() if row[column] is None]
        if empty:
            raise KeyError(f"column(s) {empty} are null: fill them or remove the row")
        return self.template.format(**row)


_SQL_INSTRUCTION = (
    "Could you translate the following question into SQL. Please only generate SQL, don't include explanation in the "
    "answer. "
)

PROMPT_FORMATS = {
    "generic": PromptFormat("generic", "{prompt}", None),
    "gsm8k": PromptFormat("gsm8k", "Question:\n{question}\nAnswer:\nLet's think step by step.\n", "answer"),
    "spider": PromptFormat(
        "spider", "### Instruction:\n" + _SQL_INSTRUCTION + "{schema}Question: {question}\n### Response:\n", "query"
    ),
    "code": PromptFormat(
        "code", "### Instruction:\nPlease generate code based on the following doc:\n{prompt}\n### Response:\n", None
    ),
    "chat": PromptFormat("chat", "{prompt}", None),
}


def get_prompt_format(task: str) -> PromptFormat:
    if task not in PROMPT_FORMATS:
        raise ValueError(f"unknown task {task!r}: choose one of {sorted(PROMPT_FORMATS)}")
    return PROMPT_FORMATS[task]


def read_rows(path: Path) -> list[dict]:
    """Rows of a .jsonl / .jsonl.gz / .json(.gz) file (a list, or an object with a "data" list); a line that is not
    a JSON object is named with its line number."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        if path.name.endswith((".jsonl", ".jsonl.gz")):
            rows = [(number, line) for number, line in enumerate(f, 1) if line.strip()]
        else:
            try:
                data = json.load(f)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {error.lineno}: not valid JSON ({error.msg})") from None
            if isinstance(data, dict):
                data = data.get("data", [])
            if not isinstance(data, list):
                raise ValueError(f"{path}: expected a list of rows (or an object with a 'data' list)")
            return data
    parsed = []
    for number, line in rows:
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: not valid JSON ({error.msg}); fix or remove the line") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}, line {number}: expected a JSON object (one row), got {type(row).__name__}")
        parsed.append(row)
    return parsed


def load_prompt_rows(source, split: str = "train", limit: int | None = None):
    """A `datasets.Dataset`, a list of prompts, a local .jsonl/.json/.parquet file, or a Hub dataset id -> a Dataset
    with at least one row."""
    import datasets

    if isinstance(source, datasets.Dataset):
        rows = source
    elif isinstance(source, (list, tuple)):
        rows = datasets.Dataset.from_list([{"prompt": p} if isinstance(p, str) else dict(p) for p in source])
    else:
        path = str(source)
        if path.endswith((".jsonl", ".json", ".parquet")):
            if not os.path.isfile(path):
                raise ValueError(f"dataset {path}: no such file")
            rows = _load_local_file(path)
        elif os.path.exists(path):
            raise ValueError(f"dataset {path}: use a .jsonl, .json or .parquet file, or a Hub dataset id")
        else:
            try:
                rows = datasets.load_dataset(path, split=split)
            except (ConnectionError, FileNotFoundError, ValueError) as error:
                raise ValueError(
                    f"dataset {path!r} could not be loaded ({str(error).splitlines()[0]}). Offline, pass a local "
                    ".jsonl/.parquet file instead of a Hub id."
                ) from None
    if len(rows) == 0:
        what = f"dataset {source} holds no prompts" if isinstance(source, (str, os.PathLike)) else "no prompts given"
        raise ValueError(f"{what}: give at least one")
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    return rows


def _load_local_file(path: str):
    import datasets

    if path.endswith(".parquet"):
        import pyarrow.parquet as pq
        from datasets.table import InMemoryTable

        try:
            return datasets.Dataset(InMemoryTable(pq.read_table(path)))
        except Exception as error:  # pyarrow raises several kinds for a damaged file
            raise ValueError(f"dataset {path}: not a readable parquet file ({str(error).splitlines()[0]})") from None
    if not read_rows(Path(path)):  # every line parses (else: which one does not), and there is a row
        return datasets.Dataset.from_list([])
    return datasets.load_dataset("json", data_files=path, split="train")


def tokenize_prompts(rows, tokenizer, task: str, chat: bool, max_context: int | None, max_new_tokens: int):
    """Token ids of every prompt (and of its gold answer when the task has one), checked before any work starts."""
    spec = get_prompt_format(task)
    if chat and not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "chat=True, but the tokenizer has no chat template: pass chat=False (--no-chat) or a chat model"
        )
    prompts, labels = [], []
    for index, row in enumerate(rows):
        if "messages" in row and row["messages"]:
            messages = [m for m in row["messages"]]
            label = messages.pop()["content"] if messages[-1]["role"] == "assistant" else None
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        else:
            try:
                text = spec.prompt(row)
            except KeyError as missing:
                raise ValueError(f"prompt {index}: {missing.args[0]}") from None
            if not text.strip():
                raise ValueError(f"prompt {index} is empty: remove it from the dataset")
            label = row.get(spec.label_column) if spec.label_column else None
            if chat:
                messages = [{"role": "user", "content": text}]
                ids = tokenizer.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=True, return_dict=False
                )
            else:
                ids = tokenizer(text)["input_ids"]
        ids = list(ids)
        if max_context is not None and len(ids) + max_new_tokens > max_context:
            raise ValueError(
                f"prompt {index} has {len(ids)} tokens, and with max_new_tokens={max_new_tokens} it exceeds the "
                f"model's context of {max_context}: shorten or drop it, or lower max_new_tokens"
            )
        prompts.append(ids)
        labels.append(tokenizer(label, add_special_tokens=False)["input_ids"] if label else None)
    return prompts, labels
