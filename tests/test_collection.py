"""Jacobi trajectory collection: the rows are real Jacobi trajectories of the teacher, and long runs resume exactly."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from hf_cllm import collection, hub, trajectories
from hf_cllm.collection import collect_trajectories


PROMPTS = [
    "the quick brown fox",
    "jumps over the lazy dog",
    "stop here.",
    "Jacobi decoding guesses a block",
    "of tokens",
    "the lazy",
    "quick",
    "brown fox jumps over",
]
N = 4


@pytest.fixture(scope="module")
def teacher(tiny_config):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(tiny_config("llama")).eval()


@pytest.fixture(scope="session")
def collect(tiny_tokenizer):
    """`collect(teacher, output_dir, **options)`: this file's prompts and small settings, any overridden."""

    def collect(teacher, output_dir, **kwargs):
        options = dict(jacobi_n=N, max_new_tokens=18, batch_size=3, shard_size=2, progress=False)
        return collect_trajectories(
            teacher, tiny_tokenizer(), kwargs.pop("prompts", PROMPTS), output_dir=output_dir, **{**options, **kwargs}
        )

    return collect


def jacobi_step(model, context, state):
    """One Jacobi update of `state` after `context`, by a plain full forward (no cache): position 0 stays, position i
    takes the argmax predicted after position i-1."""
    ids = torch.tensor([context + state])
    logits = model(input_ids=ids).logits[0, len(context) - 1 + 0 : len(context) - 1 + len(state)]
    predicted = logits.argmax(-1).tolist()
    return [state[0]] + predicted[1:]


def test_rows_are_the_teachers_jacobi_trajectories(teacher, tmp_path, collect):
    rows = collect(teacher, tmp_path, clean=False)
    assert rows["prompt_index"] == list(range(len(PROMPTS)))
    for row in rows:
        prompt, answer = row["prompt_ids"], row["answer_ids"]
        # The fixed points together are the teacher's greedy answer.
        greedy = teacher.generate(torch.tensor([prompt]), max_new_tokens=18, do_sample=False)[0, len(prompt) :]
        assert answer == greedy.tolist()
        assert len(row["states"]) == len(row["state_block"]) == len(row["state_step"]) > 0
        for block in sorted(set(row["state_block"])):
            states = [s for s, b in zip(row["states"], row["state_block"]) if b == block]
            steps = [t for t, b in zip(row["state_step"], row["state_block"]) if b == block]
            fixed = answer[block * N : (block + 1) * N]
            context = prompt + answer[: block * N]
            assert steps == list(range(len(states)))
            assert all(len(state) == len(fixed) and state[0] == fixed[0] and state != fixed for state in states)
            # Each state follows from the previous one by the model's argmax; the last one leads to the fixed point.
            for state, following in zip(states, states[1:] + [fixed]):
                assert jacobi_step(teacher, context, state) == following


def test_storage_grows_linearly_with_the_answer(teacher, tmp_path, collect):
    for row in collect(teacher, tmp_path, clean=False):
        blocks = -(-len(row["answer_ids"]) // N)
        # At most n states of at most n tokens per block, and no copy of the prompt or earlier blocks in them.
        assert sum(map(len, row["states"])) <= blocks * N * N


def test_interrupted_run_resumes_to_exactly_the_uninterrupted_rows(teacher, tmp_path, monkeypatch, collect):
    expected = collect(teacher, tmp_path / "whole").to_dict()
    original_write, calls = collection.ShardWriter.write, []

    def write_then_die(self, rows):
        calls.append(len(rows))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the second shard is lost with the process
        original_write(self, rows)

    monkeypatch.setattr(collection.ShardWriter, "write", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        collect(teacher, tmp_path / "resumed")
    monkeypatch.setattr(collection.ShardWriter, "write", original_write)
    written = trajectories.load_trajectories(tmp_path / "resumed")
    assert 0 < len(written) < len(PROMPTS)
    assert not list((tmp_path / "resumed" / "shards").glob(".*tmp"))  # nothing half-written left behind
    resumed = collect(teacher, tmp_path / "resumed")
    assert resumed.to_dict() == expected


def test_batch_size_does_not_change_the_rows(teacher, tmp_path, collect):
    one = collect(teacher, tmp_path / "one", batch_size=1).to_dict()
    assert collect(teacher, tmp_path / "five", batch_size=5).to_dict() == one


def test_other_settings_are_refused_not_overwritten(teacher, tmp_path, collect):
    collect(teacher, tmp_path)
    before = sorted(p.name for p in (tmp_path / "shards").iterdir())
    with pytest.raises(ValueError, match="other settings.*jacobi_n"):
        collect(teacher, tmp_path, jacobi_n=8)
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == before


def wrong_tokens(rows):
    """How many state tokens differ from their fixed point."""
    return sum(
        token != fixed
        for row in rows
        for state, block in zip(row["states"], row["state_block"])
        for token, fixed in zip(state, row["answer_ids"][block * N :])
    )


def test_augmentation_and_state_cap(teacher, tmp_path, collect):
    plain = collect(teacher, tmp_path / "plain", clean=False)
    augmented = collect(teacher, tmp_path / "augmented", clean=False, augment=True)
    capped = collect(teacher, tmp_path / "capped", clean=False, max_states_per_block=2)
    assert augmented["answer_ids"] == plain["answer_ids"]
    assert wrong_tokens(augmented) < wrong_tokens(plain)
    for row in capped:
        assert max(row["state_block"].count(b) for b in set(row["state_block"])) <= 2
        assert 0 in row["state_step"]  # the initial guess is always kept


def test_cleaning_drops_repetitive_blocks_and_flags_the_answer(teacher, tmp_path, collect):
    plain = collect(teacher, tmp_path / "plain", clean=False)
    runs = {
        (row["prompt_index"], b): collection.longest_run(row["answer_ids"][b * N : (b + 1) * N])
        for row in plain
        for b in set(row["state_block"])
    }
    threshold = max(runs.values())  # the most repetitive blocks of this model are the ones to drop
    cleaned = collect(teacher, tmp_path / "cleaned", repetition_threshold=threshold)
    assert cleaned["answer_ids"] == plain["answer_ids"]  # answers are kept whole
    for row in cleaned:
        kept = set(row["state_block"])
        for (index, block), run in runs.items():
            if index == row["prompt_index"]:
                assert (block in kept) == (run < threshold)
        assert row["degenerate"] == (collection.longest_run(row["answer_ids"]) >= threshold)


@pytest.mark.parametrize(
    "prompts, kwargs, message",
    [
        (["fine", "   "], {}, "prompt 1 is empty"),
        ([{"question": "x"}], {"task": "generic"}, r"prompt 0: .*needs the column\(s\) \['prompt'\]"),
        (["fox " * 300], {}, "prompt 0 has .* tokens.*exceeds the model's context"),
        (["fox"], {"chat": True}, "no chat template"),
        (["fox"], {"task": "poetry"}, "unknown task"),
        ([], {}, "no prompts given: give at least one"),
        ([{"prompt": None}], {}, r"prompt 0: column\(s\) \['prompt'\] are null"),
    ],
)
def test_bad_input_is_refused_before_any_work(teacher, tmp_path, prompts, kwargs, message, collect):
    with pytest.raises(ValueError, match=message):
        collect(teacher, tmp_path, prompts=prompts, **kwargs)
    assert not (tmp_path / "shards").exists()


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("empty.jsonl", "", "empty.jsonl holds no prompts: give at least one"),
        ("nulls.jsonl", '{"prompt": null}\n', r"prompt 0: column\(s\) \['prompt'\] are null"),
        ("broken.jsonl", '{"prompt": "a"}\n\n{"prompt": "b"\n', r"broken.jsonl, line 3: not valid JSON"),
        ("list.jsonl", "[1, 2]\n", r"list.jsonl, line 1: expected a JSON object"),
        ("broken.parquet", "not parquet", "broken.parquet: not a readable parquet file"),
        ("missing.jsonl", None, "missing.jsonl: no such file"),
    ],
)
def test_bad_prompt_files_are_named_with_the_fix(teacher, tmp_path, collect, name, text, message):
    if text is not None:
        (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=message):
        collect(teacher, tmp_path / "out", prompts=str(tmp_path / name))


def test_damaged_folders_are_named_with_the_fix(teacher, tmp_path, collect):
    with pytest.raises(ValueError, match="holds no collected trajectories"):
        trajectories.load_trajectories(tmp_path / "missing")
    collect(teacher, tmp_path / "t", prompts=PROMPTS[:2])
    (tmp_path / "t" / "collection.json").write_text("{damaged")
    with pytest.raises(ValueError, match=r"t/collection.json is damaged .*restore it, or use a new output dir"):
        collect(teacher, tmp_path / "t", prompts=PROMPTS[:2])
    collect(teacher, tmp_path / "u", prompts=PROMPTS[:2])
    shard = next((tmp_path / "u" / "shards").iterdir())
    shard.write_text("garbage")
    with pytest.raises(ValueError, match=f"{shard.name} is not a readable parquet file.*delete it"):
        trajectories.load_trajectories(tmp_path / "u")
    with pytest.raises(ValueError, match="not a readable parquet file"):
        collect(teacher, tmp_path / "u", prompts=PROMPTS[:2])  # resuming reads the shards too


def test_loaded_rows_carry_the_recorded_block_size(teacher, tmp_path, collect):
    """Answers cut at 3 tokens with n=4: the states alone are shorter than n; the record says 4, through filter and
    map, so training with jacobi_n=4 is accepted."""
    rows = collect(teacher, tmp_path, max_new_tokens=3)
    assert trajectories.collected_block_size(rows) == N
    assert trajectories.collected_block_size(rows.filter(lambda r: True).map(lambda r: r)) == N
    assert trajectories.validate_trajectories(rows, "rows", jacobi_n=N, need_labels=False, skip_degenerate=True)
    unrecorded = type(rows).from_list(rows.to_list())
    assert trajectories.collected_block_size(unrecorded) < N  # the rows alone mislead: why the record comes first


def test_collections_joined_with_concatenate_datasets_keep_what_they_share(teacher, tmp_path, collect):
    """Two seeds of one collection joined (`datasets.concatenate_datasets`): the block size they share is still
    known; rows of two block sizes are refused by name."""
    from datasets import concatenate_datasets

    joined = concatenate_datasets([collect(teacher, tmp_path / f"seed{seed}", max_new_tokens=3, seed=seed)
                                   for seed in (0, 1)])  # fmt: skip
    assert trajectories.collected_block_size(joined) == N
    assert trajectories.validate_trajectories(joined, "rows", jacobi_n=N, need_labels=False, skip_degenerate=True)
    other = collect(teacher, tmp_path / "n2", max_new_tokens=3, jacobi_n=2)
    with pytest.raises(ValueError, match="different jacobi_n"):
        trajectories.collected_block_size(concatenate_datasets([joined, other]))
    # `hf-cllm train --trajectories seed0,seed1` (or a YAML list) loads the same join
    named = trajectories.load_trajectory_source(f"{tmp_path / 'seed0'}, {tmp_path / 'seed1'}")
    assert named.num_rows == joined.num_rows and named["states"] == joined["states"]
    assert trajectories.collected_block_size(named) == N
    listed = trajectories.load_trajectory_source([str(tmp_path / "seed0"), str(tmp_path / "seed1")])
    assert listed["prompt_index"] == joined["prompt_index"]
    with pytest.raises(ValueError, match="empty trajectory source"):
        trajectories.load_trajectory_source(f"{tmp_path / 'seed0'},")
    with pytest.raises(ValueError, match="empty trajectory source"):
        trajectories.load_trajectory_source([])


def test_gsm8k_jsonl_with_gold_labels(teacher, tmp_path, tiny_tokenizer, collect):
    data = tmp_path / "gsm8k.jsonl"
    data.write_text(
        "\n".join(
            json.dumps({"question": f"How many {w}?", "answer": f"{i} {w}\n#### {i}"})
            for i, w in enumerate(["foxes", "dogs", "blocks"])
        )
    )
    rows = collect(teacher, tmp_path / "out", prompts=str(data), task="gsm8k")
    tokenizer = tiny_tokenizer()
    assert tokenizer.decode(rows[0]["prompt_ids"]).startswith("Question:\nHow many foxes?\nAnswer:")
    assert rows[2]["labels"] == tokenizer("2 blocks\n#### 2", add_special_tokens=False)["input_ids"]


def test_two_processes_under_accelerate_give_the_same_rows(teacher, tmp_path, tiny_tokenizer):
    model_dir = tmp_path / "teacher"
    teacher.save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    script = tmp_path / "collect.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys
        from accelerate import PartialState
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from hf_cllm.collection import collect_trajectories
        model = AutoModelForCausalLM.from_pretrained({str(model_dir)!r}).eval()
        tokenizer = AutoTokenizer.from_pretrained({str(model_dir)!r})
        collect_trajectories(model, tokenizer, {PROMPTS!r}, jacobi_n={N}, max_new_tokens=18, output_dir=sys.argv[1],
                             batch_size=3, shard_size=2, progress=False)
        PartialState().wait_for_everyone()  # as docs/trajectories.md asks of a launched script
        PartialState().destroy_process_group()
    """)
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for processes in (1, 2):
        command = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu" if processes > 1 else "--cpu",
            "--num_processes",
            str(processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            str(script),
            str(tmp_path / f"p{processes}"),
        ]
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    shards = sorted(p.name for p in (tmp_path / "p2" / "shards").iterdir())
    assert any(name.endswith("-p1.parquet") for name in shards)  # the second process wrote its own shards
    one, two = (trajectories.load_trajectories(tmp_path / f"p{k}").to_dict() for k in (1, 2))
    assert one == two and len(one["prompt_index"]) == len(PROMPTS)


def test_hub_dataset_offline_is_a_clear_error(teacher, tmp_path, collect):
    with pytest.raises(ValueError, match="Offline, pass a local .jsonl"):
        collect(teacher, tmp_path, prompts="openai/gsm8k")
    assert not Path(tmp_path / "shards").exists()


def test_collect_command_and_push_with_a_mocked_hub(teacher, tmp_path, monkeypatch, capsys, tiny_tokenizer):
    import huggingface_hub
    from huggingface_hub import HfApi

    from hf_cllm.cli import main

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # "online", every call captured below
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_fake")
    model_dir = tmp_path / "teacher"
    teacher.save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    data = tmp_path / "prompts.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": p}) for p in PROMPTS[:3]))
    uploads = {}

    def create_repo(self, repo_id, **kwargs):
        uploads["repo"] = (repo_id, kwargs["repo_type"])
        return f"https://huggingface.co/datasets/{repo_id}"

    def upload_folder(self, folder_path, repo_id, allow_patterns, **kwargs):
        uploads["files"] = sorted(
            str(p.relative_to(folder_path))
            for p in Path(folder_path).rglob("*")
            if p.is_file()
            and any(p.match(pattern) or str(p.relative_to(folder_path)) == pattern for pattern in allow_patterns)
        )

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    out = tmp_path / "traj"
    code = main(
        [
            "collect",
            "--model",
            str(model_dir),
            "--dataset",
            str(data),
            "--output-dir",
            str(out),
            "--jacobi-n",
            "4",
            "--max-new-tokens",
            "8",
            "--push-to-hub",
            "someone/tiny-trajectories",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert "3 prompts" in capsys.readouterr().out
    assert uploads["repo"] == ("someone/tiny-trajectories", "dataset")
    assert "README.md" in uploads["files"] and "collection.json" in uploads["files"]
    assert any(name.startswith("shards/") and name.endswith(".parquet") for name in uploads["files"])
    card = (out / "README.md").read_text()
    assert "jacobi-decoding" in card and "n=4" in card and "| `states` |" in card


def test_push_errors(teacher, tmp_path, collect):
    with pytest.raises(ValueError, match="no collected trajectories"):
        hub.push_trajectories(tmp_path, "someone/x")
    collect(teacher, tmp_path / "t", prompts=PROMPTS[:2])
    with pytest.raises(ValueError, match="is malformed"):
        hub.push_trajectories(tmp_path / "t", "not a repo id")
    with pytest.raises(ValueError, match="offline"):
        hub.push_trajectories(tmp_path / "t", "someone/x")


def test_one_schema_for_the_rows_the_docs_and_the_card(teacher, tmp_path, collect):
    """The written rows, docs/trajectories.md and the Hub dataset card all come from `trajectories.SCHEMA`."""
    rows = collect(teacher, tmp_path / "t", prompts=PROMPTS[:2])
    assert rows.column_names == list(trajectories.SCHEMA)
    assert rows.features == trajectories.features()
    docs = Path(__file__).parent.parent / "docs" / "trajectories.md"
    assert trajectories.schema_table() in docs.read_text()
    assert trajectories.schema_table() in hub.dataset_card(tmp_path / "t")
