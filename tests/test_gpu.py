"""On a CUDA device: Jacobi decoding stays token-identical to greedy in fp32, batched with left padding, for every
test architecture, and "auto" measures its costs there. Skipped without a GPU (the `gpu` marker, tests/conftest.py)."""

import copy

import pytest
import torch
from tiny import ARCHITECTURES, random_prompts

from hf_cllm import jacobi_generate


pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("jacobi_n", [4, 16, "auto"])
def test_identical_to_greedy_on_cuda(arch, jacobi_n, tiny_model):
    model = copy.deepcopy(tiny_model(arch)).to("cuda")
    input_ids, attention_mask = random_prompts(3, [5, 11, 2], seed=1)
    inputs = dict(input_ids=input_ids.cuda(), attention_mask=attention_mask.cuda(), max_new_tokens=32, do_sample=False)
    expected = model.generate(**inputs)
    got = model.generate(**inputs, custom_generate=jacobi_generate, jacobi_n=jacobi_n)
    assert got.device.type == "cuda" and torch.equal(got, expected)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_static_cache_compiles_with_cuda_graphs_and_stays_identical(arch, tiny_model):
    """`cache_implementation="static"` on CUDA compiles the window forward as `generate` does (inductor, CUDA
    graphs: `mode="reduce-overhead"`), the windows padded to one width."""
    torch._dynamo.reset()
    model = copy.deepcopy(tiny_model(arch)).to("cuda")
    input_ids, attention_mask = random_prompts(2, [6, 9], seed=1)
    inputs = dict(input_ids=input_ids.cuda(), attention_mask=attention_mask.cuda(), max_new_tokens=32, do_sample=False)
    expected = model.generate(**inputs)
    for _ in range(2):  # the second call replays the graphs
        got = model.generate(**inputs, custom_generate=jacobi_generate, jacobi_n=8, cache_implementation="static")
        assert torch.equal(got, expected)
    assert hasattr(model, "_compiled_call")
    torch._dynamo.reset()
