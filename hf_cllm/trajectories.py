"""The trajectory row: the one contract between collection (its writer) and training (its reader).

A row holds one prompt's Jacobi trajectory: the prompt, the teacher's greedy answer (all blocks' fixed points, stored
once) and the intermediate states of every block. This module owns what a row is (`SCHEMA`, `features`), the
settings file that says how a folder's rows were made (`CollectionSettings`), where rows live on disk (`SHARD_DIR`),
how to read them back (`load_trajectories`, `load_trajectory_source`), how to check them before training
(`validate_trajectories`) and the process-independent seeds both sides draw with (`mixed_seed`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path


logger = logging.getLogger(__name__)

SETTINGS_FILE = "collection.json"
SHARD_DIR = "shards"

# column -> (type, meaning); docs/trajectories.md and the Hub dataset card show this table (`schema_table`).
SCHEMA = {
    "prompt_index": ("int64", "position of the prompt in the input; resume and merging go by it"),
    "prompt_ids": ("list[int64]", "the prompt's token ids (chat template applied when used)"),
    "answer_ids": (
        "list[int64]",
        "the teacher's greedy answer up to and including its EOS: all blocks' fixed points",
    ),
    "states": (
        "list[list[int64]]",
        "intermediate states; a state of block b is as long as `answer_ids[b*n:(b+1)*n]`",
    ),
    "state_block": ("list[int64]", "the block b of each state"),
    "state_step": ("list[int64]", "the Jacobi iteration each state came from (0: the initial guess)"),
    "labels": ("list[int64] or null", "the gold answer's token ids, when the data has one"),
    "degenerate": ("bool", "the answer has a run of `repetition_threshold` identical tokens"),
}
# What training cannot do without; the other columns are optional there.
REQUIRED_COLUMNS = ("prompt_ids", "answer_ids", "states", "state_block")


def features():
    """`SCHEMA` as `datasets.Features`."""
    import datasets

    ids = datasets.List(datasets.Value("int64"))
    kinds = {"int64": datasets.Value("int64"), "bool": datasets.Value("bool"), "list[list[int64]]": datasets.List(ids)}
    return datasets.Features({name: kinds.get(kind, ids) for name, (kind, _) in SCHEMA.items()})


def schema_table() -> str:
    """`SCHEMA` as a Markdown table."""
    rows = [f"| `{name}` | {kind} | {meaning} |" for name, (kind, meaning) in SCHEMA.items()]
    return "\n".join(["| column | type | meaning |", "|---|---|---|", *rows]) + "\n"


@dataclass(frozen=True)
class CollectionSettings:
    """Everything the rows depend on, recorded in `SETTINGS_FILE`; a folder only ever holds rows made with one."""

    teacher: str
    jacobi_n: int
    max_new_tokens: int
    task: str
    chat: bool
    augment: bool
    clean: bool
    repetition_threshold: int
    max_states_per_block: int | None
    seed: int
    prompts_fingerprint: str
    teacher_dtype: str = "float32"  # rows are the teacher's Jacobi fixed points in this dtype

    def to_dict(self) -> dict:
        settings = asdict(self)
        if self.teacher_dtype == "float32":  # recorded only when not float32: folders from before it still resume
            del settings["teacher_dtype"]
        return settings


def read_settings(folder) -> dict:
    """The recorded settings of a collected folder."""
    path = Path(folder) / SETTINGS_FILE
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} is damaged ({error.msg}, line {error.lineno}); it records how the folder's rows were made: "
            "restore it, or collect into a new folder"
        ) from None


# The settings travel with a loaded dataset in its `DatasetInfo.description` (kept by filter, select, split, map).
_SETTINGS_MARKER = "hf_cllm collection settings: "


def recorded_settings(dataset) -> dict | None:
    """The collection settings a dataset was loaded with (`load_trajectories`), or None when they are unknown. Rows
    of several collections joined with `datasets.concatenate_datasets` (whose descriptions it joins with a blank
    line) give the settings they all share: a key on which they differ is left out."""
    description = getattr(getattr(dataset, "info", None), "description", None) or ""
    recorded = [json.loads(chunk[len(_SETTINGS_MARKER) :]) for chunk in description.split("\n\n")
                if chunk.startswith(_SETTINGS_MARKER)]  # fmt: skip
    if not recorded:
        return None
    return {key: value for key, value in recorded[0].items() if all(other.get(key) == value for other in recorded)}


def mixed_seed(*parts) -> int:
    """A seed from several values, the same in every process (Python's `hash` of strings is not)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")


def read_shard(path: Path, columns: list[str] | None = None):
    """One parquet file of rows as a pyarrow table; a damaged one is named, with what to do."""
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=columns)
    except Exception as error:  # pyarrow raises several kinds for a damaged file
        raise ValueError(
            f"{path} is not a readable parquet file ({str(error).splitlines()[0]}); a collection shard: delete it "
            "and run the collection again with the same settings, which redoes only its prompts"
        ) from None


def load_trajectories(output_dir):
    """The collected rows of `output_dir`, sorted by prompt, as a `datasets.Dataset` that carries the folder's
    collection settings (`recorded_settings`)."""
    import datasets
    import pyarrow as pa
    from datasets.table import InMemoryTable

    shards = sorted((Path(output_dir) / SHARD_DIR).glob("*.parquet"))
    if not shards:
        raise ValueError(
            f"{output_dir} holds no collected trajectories (no {SHARD_DIR}/*.parquet): collect some with "
            "`hf_cllm.collect_trajectories` / `hf-cllm collect --output-dir` first"
        )
    table = pa.concat_tables([read_shard(shard) for shard in shards]).sort_by("prompt_index")
    if table.num_rows == 0:
        raise ValueError(f"{output_dir}: its shards hold no rows; collect again into a new folder")
    settings = read_settings(output_dir) if (Path(output_dir) / SETTINGS_FILE).is_file() else None
    info = datasets.DatasetInfo(description=_SETTINGS_MARKER + json.dumps(settings)) if settings else None
    return datasets.Dataset(InMemoryTable(table), info=info)


def load_trajectory_source(source):
    """A collected folder, a parquet/jsonl/json file, or a Hub dataset id -> a Dataset of trajectory rows. Several
    sources (a list, or one string with commas: the same prompts collected with different `--seed`s, say) are joined
    with `datasets.concatenate_datasets`; their recorded settings must agree on the block size."""
    import datasets

    sources = [part.strip() for part in source.split(",")] if isinstance(source, str) else list(source)
    if not sources or not all(sources):
        raise ValueError(f"{source!r}: an empty trajectory source; give folders, files or Hub ids separated by commas")
    if len(sources) > 1:
        return datasets.concatenate_datasets([load_trajectory_source(part) for part in sources])
    source = sources[0]
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / SETTINGS_FILE).is_file():
            raise ValueError(f"{source}: this folder was not written by `hf-cllm collect` ({SETTINGS_FILE} missing)")
        return load_trajectories(path)
    if path.is_file():
        kind = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}.get(path.suffix)
        if kind is None:
            raise ValueError(f"{source}: expected a .parquet, .jsonl or .json file")
        if kind == "parquet":
            from datasets.table import InMemoryTable

            return datasets.Dataset(InMemoryTable(read_shard(path)))
        try:
            return datasets.load_dataset(kind, data_files=str(path), split="train")
        except Exception as error:  # a damaged file: pyarrow and datasets raise several kinds
            message = str(error.__cause__ or error).splitlines()[0]
            raise ValueError(f"{source}: not a readable {kind} file of trajectory rows ({message})") from None
    try:
        return datasets.load_dataset(source, split="train")
    except Exception as error:  # offline, unknown repo, ...
        raise ValueError(f"{source}: neither a local folder/file nor a loadable Hub dataset ({error})") from None


def collected_block_size(dataset) -> int | None:
    """The n the rows were collected with: as recorded, else inferred from the rows (a state is n tokens long unless
    its block is the answer's last), else None when the rows cannot tell (no states, or only short last blocks)."""
    longest_state, longest_answer = 0, 0
    for states, answer in zip(dataset["states"], dataset["answer_ids"]):
        longest_state = max([longest_state, *map(len, states)])
        longest_answer = max(longest_answer, len(answer))
    recorded = recorded_settings(dataset)
    if recorded is not None and "jacobi_n" not in recorded:
        raise ValueError("the rows were collected with different jacobi_n (several collections joined): train on rows "
                         "of one block size")  # fmt: skip
    if recorded is not None:
        if longest_state > recorded["jacobi_n"]:
            raise ValueError(
                f"the rows hold states of {longest_state} tokens, longer than the jacobi_n={recorded['jacobi_n']} "
                f"their {SETTINGS_FILE} records: the rows and the record disagree; collect them again"
            )
        return recorded["jacobi_n"]
    if longest_state == 0 or longest_state == longest_answer:
        return None  # no states, or every state could be a whole short answer
    return longest_state


def validate_trajectories(dataset, name: str, *, jacobi_n: int, need_labels: bool, skip_degenerate: bool):
    """Check rows before any training (schema, block size, labels) and leave out degenerate ones when asked;
    `name` says which argument the rows came from in the errors."""
    if dataset is None:
        return None
    columns = getattr(dataset, "column_names", None)
    if columns is None:
        raise TypeError(
            f"{name} must be a datasets.Dataset of trajectory rows (collect_trajectories), got {dataset!r}"
        )
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ValueError(
            f"{name} is not a trajectory dataset: columns {missing} are missing (it has {columns}). Collect one with "
            "`hf_cllm.collect_trajectories` / `hf-cllm collect` and load it with `load_trajectories(dir)`"
        )
    if len(dataset) == 0:
        raise ValueError(f"{name} is empty")
    if skip_degenerate and "degenerate" in columns:
        kept = dataset.filter(lambda flags: [not f for f in flags], input_columns="degenerate", batched=True)
        if len(kept) < len(dataset):
            logger.warning("%s: left out %d of %d degenerate rows", name, len(dataset) - len(kept), len(dataset))
        if len(kept) == 0:
            raise ValueError(f"every row of {name} is flagged degenerate; set skip_degenerate=False to train on them")
        dataset = kept
    collected_n = collected_block_size(dataset)
    if collected_n is not None and collected_n != jacobi_n:
        raise ValueError(
            f"{name} was collected with jacobi_n={collected_n} but CLLMConfig.jacobi_n={jacobi_n}; set jacobi_n to "
            f"the block size the trajectories were collected with ({SETTINGS_FILE} records it)"
        )
    if need_labels and ("labels" not in columns or any(not labels for labels in dataset["labels"])):
        raise ValueError(
            f"ar_target='labels' needs a gold answer in the 'labels' column of every row of {name}; collect with "
            "a task that keeps them (e.g. task='gsm8k') or use ar_target='teacher'"
        )
    return dataset
