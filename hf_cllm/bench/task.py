"""`BenchmarkTask`: the one type every benchmark implements, and the registry the harness and the CLI read.

Adding a benchmark is one file: a subclass of `BenchmarkTask` with a `name`, which registers itself when its module
is imported. The built-in tasks are the modules of `hf_cllm.bench.tasks`, each named after its task; they are listed
without being imported (their metrics import `evaluate`, which takes seconds) and imported when asked for.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from typing import ClassVar


BUILTIN_TASKS = "hf_cllm.bench.tasks"
_REGISTRY: dict[str, type[BenchmarkTask]] = {}


class BenchmarkTask:
    """Where a benchmark's items come from, how an item becomes a prompt, and how completions are scored.

    Class attributes:
        name (`str`): what `run_benchmark(..., name)` and `hf-cllm bench NAME` call it.
        prompt_format (`str`): the `hf_cllm.prompts` format that turns `prompt_row`'s rows into prompt texts (shared
            with trajectory collection, so a model is trained and benchmarked on the same prompts).
        max_new_tokens (`int`): the default generation length.
        columns (`tuple[str, ...]`): what every item of `load_rows` must have; data without them is refused,
            naming them.
        options (`dict[str, str]`): the task's own options, name -> help. They reach `score` as keyword arguments
            (`run_benchmark(..., options={name: value})`; on the command line `--name-with-dashes VALUE`).
        option_types (`dict[str, callable]`): converters for options that are not strings (`float`, `int`, `flag`);
            a value they refuse is reported before anything runs.
    """

    name: ClassVar[str]
    prompt_format: ClassVar[str] = "generic"
    max_new_tokens: ClassVar[int] = 256
    columns: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[dict[str, str]] = {}
    option_types: ClassVar[dict] = {}

    def check_options(self, options: dict | None) -> dict:
        """`options` without the unset ones, each converted by `option_types`; unknown names and bad values raise a
        ValueError that names the option."""
        options = {key: value for key, value in (options or {}).items() if value is not None}
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(f"{self.name} has no option {', '.join(unknown)}: its options are {sorted(self.options)}")
        for key, convert in self.option_types.items():
            if key in options:
                try:
                    options[key] = convert(options[key])
                except (TypeError, ValueError) as error:
                    raise ValueError(
                        f"{self.name} option {key}={options[key]!r}: {error} ({self.options[key]})"
                    ) from None
        return options

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            _REGISTRY[cls.name] = cls

    def load_rows(self, source: str | None = None) -> list[dict]:
        """The items: from `source` (a local file or folder, or a Hub id) or, when None, the task's default data."""
        raise NotImplementedError

    def prompt_row(self, row: dict, chat: bool = False) -> dict:
        """The row `prompt_format` turns into the item's prompt."""
        raise NotImplementedError

    def score(self, texts: list[str], rows: list[dict], **options) -> dict:
        """Scores of the completions `texts` of `rows`: the headline metric first, then any details, and `per_item`
        (one bool per item)."""
        raise NotImplementedError

    def score_samples(self, texts: list[list[str]], rows: list[dict], **options) -> dict:
        """Scores of several sampled completions per item (`texts[i]`: item i's samples). By default the headline
        metric averaged over the samples, and per item the share of its samples scored right; tasks with a pass@k
        metric override it."""
        count = len(texts[0])
        scores = [self.score([item[s] for item in texts], rows, **options) for s in range(count)]
        metric = next(iter(scores[0]))
        per_item = [sum(bool(score["per_item"][i]) for score in scores) / count for i in range(len(rows))]
        return {metric: sum(score[metric] for score in scores) / count, "per_item": per_item}


def flag(value) -> bool:
    """A yes/no option: a bool, or true/false, yes/no, 1/0 as text."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1"):
        return True
    if text in ("false", "no", "0"):
        return False
    raise ValueError("expected true or false")


def positive(kind):
    """A converter to `kind` (int, float) that refuses values <= 0."""

    def convert(value):
        number = kind(value)
        if number <= 0:
            raise ValueError("must be > 0")
        return number

    return convert


def benchmark_names() -> list[str]:
    """Every task: the built-in modules (not imported) and whatever else has registered itself."""
    spec = importlib.util.find_spec(BUILTIN_TASKS)
    builtin = [module.name for module in pkgutil.iter_modules(spec.submodule_search_locations)]
    return sorted(set(builtin) | set(_REGISTRY))


def get_benchmark(name: str) -> BenchmarkTask:
    """The task called `name`, importing its built-in module when it has not registered yet."""
    if name not in _REGISTRY and name in benchmark_names():
        importlib.import_module(f"{BUILTIN_TASKS}.{name}")
    if name not in _REGISTRY:
        raise ValueError(f"unknown benchmark {name!r}: choose one of {benchmark_names()}")
    return _REGISTRY[name]()
