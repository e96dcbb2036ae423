"""Identity with greedy on the real SmolLM2-135M-Instruct (the embedded model; skipped when it is not installed)."""

import pytest
import torch

from hf_cllm.assets import EmbeddedModelMissing, embedded_gguf_path


pytestmark = pytest.mark.slow

QUESTIONS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "What is the capital of France?",
    "Write a Python function that returns the square of a number.",
]


@pytest.fixture(scope="module")
def smollm2():
    try:
        embedded_gguf_path()
    except EmbeddedModelMissing as missing:
        pytest.skip(str(missing))
    from transformers import AutoTokenizer

    from hf_cllm import AutoCLLMForCausalLM
    from hf_cllm.assets import embedded_model_dir

    folder = embedded_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    return AutoCLLMForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), tokenizer


def test_smollm2_batch_identical_to_greedy(smollm2):
    model, tokenizer = smollm2
    messages = [[{"role": "user", "content": q}] for q in QUESTIONS]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True
    )
    expected = model.generate(**inputs, max_new_tokens=40, do_sample=False)
    for jacobi_n in (8, 16):
        out = model.generate(**inputs, max_new_tokens=40, jacobi_n=jacobi_n, return_dict_in_generate=True)
        assert torch.equal(out.sequences, expected)
        assert (out.tokens_per_forward >= 1.0).all()
    answer = tokenizer.decode(expected[1, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


CONVERT_ON_RANK_1 = """
import os, sys
import torch.distributed as dist
from hf_cllm.assets import embedded_model_dir
dist.init_process_group("gloo")
rank = dist.get_rank()
if rank == 0:
    dist.barrier()  # rank 1 takes the lock and converts first
folder = embedded_model_dir()
if rank == 1:
    dist.barrier()
print(rank, sorted(os.listdir(folder)))
dist.destroy_process_group()
"""


def test_embedded_model_converted_by_another_rank_than_0(tmp_path):
    """`accelerate launch` on a fresh machine: whichever rank takes the lock converts, and in a torch.distributed
    group `save_pretrained` writes only on rank 0 — the folder must still get the weights and config."""
    try:
        embedded_gguf_path()
    except EmbeddedModelMissing as missing:
        pytest.skip(str(missing))
    import os
    import subprocess
    import sys

    script = tmp_path / "convert.py"
    script.write_text(CONVERT_ON_RANK_1)
    env = {**os.environ, "HF_CLLM_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    for rank in "01":
        line = next(line for line in result.stdout.splitlines() if line.startswith(rank + " "))
        assert "'config.json'" in line and "'model.safetensors'" in line, line
