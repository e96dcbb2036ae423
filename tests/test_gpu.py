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
