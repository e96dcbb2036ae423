"""Training that scales out: one process, 2-process DDP, FSDP2 and DeepSpeed ZeRO-2/3 (CPU processes, gloo) give the
same losses, weights and eval_tpf for the same global batch; an FSDP2 run saves a full model that decodes as the
single-process one, and resumes from its checkpoint exactly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from toy import JACOBI_N


EXAMPLES = Path(__file__).parent.parent / "examples" / "accelerate"
STEPS = 4


@pytest.fixture(scope="module")
def toy_model_dir(tmp_path_factory, toy_model, toy_tokenizer):
    folder = tmp_path_factory.mktemp("distributed") / "model"
    toy_model().save_pretrained(folder)
    toy_tokenizer().save_pretrained(folder)
    return folder


LAUNCH = {  # how each kind starts: the CPU variants of examples/accelerate's configs
    "one": [],
    "ddp": ["--config_file", str(EXAMPLES / "ddp_cpu.yaml")],
    "fsdp2": ["--config_file", str(EXAMPLES / "fsdp2_cpu.yaml")],
    "zero2": ["--config_file", str(EXAMPLES / "deepspeed_zero3_cpu.yaml"), "--zero_stage", "2"],
    "zero3": ["--config_file", str(EXAMPLES / "deepspeed_zero3_cpu.yaml")],
}


def train(kind: str, output_dir: Path, model_dir: Path, trajectories, *extra: str) -> dict:
    """`hf-cllm train` as one process (`one`: batch 2 x 2 accumulation steps) or two (the others: batch 2 each),
    the same global batch of 4; returns the log history of its last checkpoint."""
    launch = [sys.executable, "-m", "hf_cllm"]
    if kind != "one":
        launch = [sys.executable, "-m", "accelerate.commands.launch", *LAUNCH[kind], "-m", "hf_cllm"]
    command = [
        *launch, "train", "--model_name_or_path", str(model_dir), "--trajectories", str(trajectories),
        "--output_dir", str(output_dir), "--jacobi_n", str(JACOBI_N), "--max_steps", str(STEPS),
        "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2" if kind == "one" else "1",
        "--learning_rate", "1e-3", "--seed", "0", "--use_cpu", "true", "--report_to", "none", "--logging_steps", "1",
        "--save_strategy", "steps", "--save_steps", "2", "--eval_fraction", "0.1", "--eval_strategy", "steps",
        "--eval_steps", str(STEPS), "--eval_on_start", "true", "--tpf_eval_prompts", "4",
        "--tpf_eval_max_new_tokens", "16", "--bf16", "false", *extra,  # float32: processes compare exactly
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("Saved the CLLM") == 1  # the main process saves, once
    state = json.loads((output_dir / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    return state["log_history"]


def losses(history: list[dict]) -> list[float]:
    return [log["loss"] for log in history if "loss" in log and "eval_loss" not in log]


def tpfs(history: list[dict]) -> list[float]:
    return [log["eval_tpf"] for log in history if "eval_tpf" in log]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, toy_model_dir, toy_trajectory_dir):
    root = tmp_path_factory.mktemp("runs")
    return {kind: (train(kind, root / kind, toy_model_dir, toy_trajectory_dir), root / kind)
            for kind in ("one", "ddp", "fsdp2")}  # fmt: skip


def assert_same_run(run, reference_run):
    """Same losses per step, same eval_tpf (at the start and the end), same saved weights."""
    (history, folder), (reference, reference_dir) = run, reference_run
    assert len(losses(reference)) == STEPS and len(tpfs(reference)) == 2
    assert losses(history) == pytest.approx(losses(reference), rel=1e-5)
    assert tpfs(history) == pytest.approx(tpfs(reference))
    expected = load_file(reference_dir / "model.safetensors")
    # Sharded runs save the full state dict, gathered on the main process.
    weights = load_file(folder / "model.safetensors")
    assert sorted(weights) == sorted(expected)
    for name in expected:  # reductions in another order: float tolerance (training moved them by ~2e-3)
        torch.testing.assert_close(weights[name], expected[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["ddp", "fsdp2"])
def test_data_parallel_and_fsdp2_equal_one_process(runs, kind):
    assert_same_run(runs[kind], runs["one"])


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_equals_one_process(runs, stage, tmp_path, toy_model_dir, toy_trajectory_dir):
    pytest.importorskip("deepspeed")
    kind = f"zero{stage}"
    assert_same_run((train(kind, tmp_path / kind, toy_model_dir, toy_trajectory_dir), tmp_path / kind), runs["one"])


def test_the_fsdp2_model_decodes_like_the_single_process_one(runs):
    from hf_cllm import AutoCLLMForCausalLM

    prompt = torch.tensor([[5, 9, 10, 11, 12, 13, 20, 21]])
    outputs = []
    for kind in ("one", "fsdp2"):
        model = AutoCLLMForCausalLM.from_pretrained(runs[kind][1]).eval()
        assert model.generation_config.jacobi_n == JACOBI_N
        outputs.append(model.generate(prompt, max_new_tokens=24, return_dict_in_generate=True))
    assert torch.equal(outputs[0].sequences, outputs[1].sequences)
    assert torch.equal(outputs[0].num_forward_passes, outputs[1].num_forward_passes)  # Jacobi, both


def test_fsdp2_resumes_from_its_checkpoint_exactly(runs, tmp_path, toy_model_dir, toy_trajectory_dir):
    history, folder = runs["fsdp2"]
    resumed_dir = tmp_path / "resumed"
    # The resumed run starts from the uninterrupted run's step-2 checkpoint, in a folder of its own.
    shutil.copytree(folder / "checkpoint-2", resumed_dir / "checkpoint-2")
    resumed = train("fsdp2", resumed_dir, toy_model_dir, toy_trajectory_dir, "--resume_from_checkpoint",
                    str(resumed_dir / "checkpoint-2"))  # fmt: skip
    assert losses(resumed)[2:] == pytest.approx(losses(history)[2:], rel=1e-5)
    final, expected = load_file(resumed_dir / "model.safetensors"), load_file(folder / "model.safetensors")
    for name in expected:
        torch.testing.assert_close(final[name], expected[name], rtol=1e-5, atol=1e-6)
