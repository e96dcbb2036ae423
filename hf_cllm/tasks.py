"""Prompt formats, one definition per task, shared by trajectory collection and the benchmarks.

The templates are the CLLM paper's (its trajectory data and evaluation use them). A row of a dataset becomes one
prompt text; with `chat=True` that text is the user turn of the tokenizer's chat template. A `messages` column (chat
data) is used as it is: the conversation up to its last user turn is the prompt, a final assistant turn the label.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
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
        return self.template.format(**row)


_SQL_INSTRUCTION = (
    "Could you translate the following question into SQL. Please only generate SQL, don't include explanation in the "
    "answer. "
)

TASKS = {
    "generic": Task("generic", "{prompt}", None),
    "gsm8k": Task("gsm8k", "Question:\n{question}\nAnswer:\nLet's think step by step.\n", "answer"),
    "spider": Task(
        "spider", "### Instruction:\n" + _SQL_INSTRUCTION + "{schema}Question: {question}\n### Response:\n", "query"
    ),
    "code": Task(
        "code", "### Instruction:\nPlease generate code based on the following doc:\n{prompt}\n### Response:\n", None
    ),
    "chat": Task("chat", "{prompt}", None),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: choose one of {sorted(TASKS)}")
    return TASKS[name]
