"""Jacobi trajectory collection into `datasets`: the training data of consistency distillation.

For every prompt the teacher Jacobi-decodes its answer in n-token blocks with the KV-cached, batched decoder, and we
keep every state each block went through on its way to the fixed point. One row per prompt (schema in
docs/trajectories.md), so the data grows linearly with the answer. Rows are written in parquet shards as they are
finished; a run that is interrupted and started again with the same output folder skips what is already written.
Under `accelerate launch` each process takes every k-th prompt and writes its own shards.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import torch

from .prompts import load_prompt_rows, tokenize_prompts
from .resume import resume_or_refuse
from .trajectories import (
    SETTINGS_FILE,
    SHARD_DIR,
    CollectionSettings,
    features,
    load_trajectories,
    mixed_seed,
    read_shard,
)  # fmt: skip


def fingerprint(prompts: list[list[int]]) -> str:
    digest = hashlib.sha256()
    for ids in prompts:
        digest.update(json.dumps(ids).encode())
    return digest.hexdigest()[:16]


def seeded_context_init(prompt_indices, prompt_lengths, width: int, jacobi_n: int, seed: int):
    """Initial guesses drawn from each row's own context with a generator seeded by (seed, prompt, block), so that a
    prompt's trajectory does not depend on which batch or process it ran in."""

    def guesses(input_ids, count):
        block = (input_ids.shape[1] - width - 1) // jacobi_n
        rows = []
        for row, (index, length) in enumerate(zip(prompt_indices, prompt_lengths)):
            generator = torch.Generator().manual_seed(mixed_seed(seed, index, block))
            context = input_ids[row, width - length :].cpu()
            rows.append(context[torch.randint(0, len(context), (count,), generator=generator)])
        return torch.stack(rows).to(input_ids.device)

    return guesses


def longest_run(tokens: list[int]) -> int:
    """Length of the longest run of one repeated token."""
    best = run = 0
    for i, token in enumerate(tokens):
        run = run + 1 if i and token == tokens[i - 1] else 1
        best = max(best, run)
    return best


def augment_states(states: torch.Tensor, fixed: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The paper's augmentation: in every state but the last, correct about half of the wrong tokens after the first
    wrong one (positions drawn with replacement), so the data covers states closer to the fixed point."""
    states = states.clone()
    for step in range(len(states) - 1):
        wrong = (states[step] != fixed).nonzero().flatten()[1:]
        if len(wrong) >= 2:
            picks = wrong[torch.randint(0, len(wrong), (len(wrong) // 2,), generator=generator)]
            states[step, picks] = fixed[picks]
    return states


def subsample(states: torch.Tensor, cap: int | None) -> torch.Tensor:
    """At most `cap` states, evenly spaced from the initial guess on."""
    if cap is None or len(states) <= cap:
        return states
    keep = torch.linspace(0, len(states) - 1, cap).round().long().unique()
    return states[keep]


def trajectory_rows(out, prompt_indices, prompt_ids, labels, width, settings: CollectionSettings, eos_ids):
    """One dataset row per prompt from a batched `generate(..., jacobi_return_states=True)` result."""
    n = settings.jacobi_n
    rows = []
    for row, index in enumerate(prompt_indices):
        answer = out.sequences[row, width:].tolist()
        for position, token in enumerate(answer):
            if token in eos_ids:
                answer = answer[: position + 1]
                break
        degenerate = longest_run(answer) >= settings.repetition_threshold
        generator = torch.Generator().manual_seed(mixed_seed(settings.seed, index, "augment"))
        states, state_block, state_step = [], [], []
        for block in range(min(math.ceil(len(answer) / n), len(out.jacobi_states))):
            block_states = out.jacobi_states[block][:, row].cpu()
            fixed = torch.tensor(answer[block * n : (block + 1) * n][: block_states.shape[-1]])
            block_states = block_states[:, : len(fixed)]  # nothing after the row's EOS
            if settings.clean and longest_run(fixed.tolist()) >= settings.repetition_threshold:
                continue
            # After the row reached its fixed point, the batch may have iterated on for other rows: drop those.
            settled = (block_states == fixed).all(-1).nonzero()
            block_states = block_states[: int(settled[0])] if len(settled) else block_states
            steps = torch.arange(len(block_states))
            if settings.augment:
                block_states = augment_states(block_states, fixed, generator)
            keep = subsample(steps, settings.max_states_per_block)
            states += block_states[keep].tolist()
            state_block += [block] * len(keep)
            state_step += keep.tolist()
        rows.append(
            {
                "prompt_index": index,
                "prompt_ids": prompt_ids[row],
                "answer_ids": answer,
                "states": states,
                "state_block": state_block,
                "state_step": state_step,
                "labels": labels[row],
                "degenerate": degenerate,
            }
        )
    return rows


class ShardWriter:
    """Parquet shards in `output_dir/shards`, each written to a temporary file and renamed into place, so a shard is
    either complete or absent."""

    def __init__(self, output_dir: Path, process_index: int = 0):
        self.directory = output_dir / SHARD_DIR
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process_index = process_index

    def done_indices(self) -> set[int]:
        done = set()
        for shard in sorted(self.directory.glob("*.parquet")):
            done.update(read_shard(shard, columns=["prompt_index"]).column("prompt_index").to_pylist())
        return done

    def write(self, rows: list[dict]) -> None:
        import datasets
        import pyarrow.parquet as pq

        name = f"part-{rows[0]['prompt_index']:08d}-p{self.process_index}.parquet"
        temporary = self.directory / f".{name}.tmp"
        pq.write_table(datasets.Dataset.from_list(rows, features=features()).data.table, temporary)
        os.replace(temporary, self.directory / name)


def collect_trajectories(
    teacher,
    tokenizer,
    prompts,
    jacobi_n: int = 16,
    max_new_tokens: int = 256,
    output_dir: str | os.PathLike = "trajectories",
    *,
    task: str = "generic",
    chat: bool | None = None,
    batch_size: int = 8,
    augment: bool = False,
    clean: bool = True,
    repetition_threshold: int = 10,
    max_states_per_block: int | None = None,
    seed: int = 0,
    shard_size: int = 64,
    split: str = "train",
    limit: int | None = None,
    progress: bool = True,
):
    """Collect Jacobi trajectories of `teacher` on `prompts` into `output_dir` and return them as a Dataset.

    Args:
        prompts: a `datasets.Dataset`, a list of strings or rows, a .jsonl/.json/.parquet file, or a Hub dataset id.
            Rows are formatted by `task` (`generic` uses the `prompt` column; `gsm8k`, `spider`, `code`, `chat`: see
            `hf_cllm.prompts`); a `messages` column is used as a conversation.
        chat: wrap prompts in the chat template; defaults to whether the tokenizer has one.
        augment: correct about half of the wrong tokens of intermediate states (the paper's augmentation).
        clean: drop the states of blocks with a run of `repetition_threshold` identical tokens (the repetitive data
            behind the reference's training collapse); such answers are flagged `degenerate`.
        max_states_per_block: keep at most this many states per block, evenly spaced.
        shard_size: prompts per parquet shard; finished shards survive an interruption.
    """
    from accelerate import PartialState
    from tqdm.auto import tqdm

    from .decoding import jacobi_generate, validate_jacobi_n
    from .modeling import eos_token_ids

    validate_jacobi_n(jacobi_n)
    if batch_size < 1 or shard_size < 1:
        raise ValueError("batch_size and shard_size must be positive integers")
    rows = load_prompt_rows(prompts, split=split, limit=limit)
    chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
    max_context = getattr(teacher.config, "max_position_embeddings", None)
    prompt_ids, labels = tokenize_prompts(rows, tokenizer, task, chat, max_context, max_new_tokens)
    settings = CollectionSettings(
        teacher=str(getattr(teacher.config, "_name_or_path", "") or type(teacher).__name__),
        jacobi_n=jacobi_n,
        max_new_tokens=max_new_tokens,
        task=task,
        chat=chat,
        augment=augment,
        clean=clean,
        repetition_threshold=repetition_threshold,
        max_states_per_block=max_states_per_block,
        seed=seed,
        prompts_fingerprint=fingerprint(prompt_ids),
        teacher_dtype=str(teacher.dtype).removeprefix("torch."),
    )

    # Without a GPU, processes started by `accelerate launch --multi_gpu --num_processes K` (or torchrun) are CPU
    # processes talking over gloo.
    state = PartialState(cpu=not torch.cuda.is_available())
    output_dir = Path(output_dir)
    resume_or_refuse(output_dir, settings.to_dict(), SETTINGS_FILE, what="trajectories", write=state.is_main_process)
    state.wait_for_everyone()
    writer = ShardWriter(output_dir, state.process_index)
    done = writer.done_indices()
    todo = [i for i in range(len(prompt_ids)) if i % state.num_processes == state.process_index and i not in done]

    eos_ids = set(eos_token_ids(teacher))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos_ids), 0)
    buffer: list[dict] = []
    bar = tqdm(
        total=len(todo),
        desc=f"collecting (process {state.process_index})" if state.num_processes > 1 else "collecting",
        unit="prompt",
        disable=not progress,
    )
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        batch_ids = [prompt_ids[i] for i in batch]
        width = max(map(len, batch_ids))
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in batch_ids], device=teacher.device)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch_ids], device=teacher.device)
        out = teacher.generate(
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            custom_generate=jacobi_generate,  # leaves the teacher's class untouched
            jacobi_n=jacobi_n,
            return_dict_in_generate=True,
            jacobi_return_states=True,
            jacobi_init=seeded_context_init(batch, [len(ids) for ids in batch_ids], width, jacobi_n, seed),
        )
        buffer += trajectory_rows(out, batch, batch_ids, [labels[i] for i in batch], width, settings, eos_ids)
        bar.update(len(batch))
        if len(buffer) >= shard_size:
            writer.write(buffer)
            buffer = []
    if buffer:
        writer.write(buffer)
    bar.close()
    state.wait_for_everyone()
    return load_trajectories(output_dir)
