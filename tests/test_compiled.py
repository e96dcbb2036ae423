"""A static cache compiles the window forward the way `generate` compiles its decoding step: windows padded to one
width, so one graph serves every step, and the output stays token-identical to greedy decoding.

The compiler backend here only counts the graphs dynamo hands it and runs them as they are (compiling with inductor
takes ~30 s per graph on this CPU; benchmarks/gpu_speed.py measures that path)."""

import copy

import pytest
import torch
from tiny import EOS, random_prompts
from transformers import CompileConfig

from hf_cllm import enable_jacobi


def counting_backend():
    """A `torch.compile` backend that runs every graph dynamo gives it uncompiled, and the list of those graphs (a
    closure: `CompileConfig` deep-copies its backend, and a function is copied as itself)."""
    graphs = []

    def backend(graph_module, example_inputs, **options):
        graphs.append(graph_module)
        return graph_module.forward

    return backend, graphs


def compiling(backend) -> CompileConfig:
    config = CompileConfig(backend=backend, mode="default")
    config._compile_all_devices = True  # transformers' own switch to compile on a CPU
    return config


@pytest.fixture
def fresh_model(tiny_model):
    """A copy of a test model (compiling stores the compiled call on the model) with a clean dynamo state."""

    def build(arch):
        torch._dynamo.reset()
        return enable_jacobi(copy.deepcopy(tiny_model(arch)))

    yield build
    torch._dynamo.reset()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi", "gpt2"])
@pytest.mark.parametrize(("jacobi_n", "jacobi_blocks"), [(1, 1), (5, 1), (5, 2)])
def test_compiled_windows_are_one_graph_and_identical_to_greedy(arch, jacobi_n, jacobi_blocks, fresh_model):
    model, (backend, graphs) = fresh_model(arch), counting_backend()
    for seed in (1, 2):  # a second call with the same shapes compiles nothing new
        input_ids, attention_mask = random_prompts(3, [6, 9, 2], seed=seed)
        common = dict(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=30, do_sample=False)
        expected = model.generate(**common)
        got = model.generate(**common, jacobi_n=jacobi_n, jacobi_blocks=jacobi_blocks, cache_implementation="static",
                             compile_config=compiling(backend), return_dict_in_generate=True)  # fmt: skip
        assert torch.equal(got.sequences, expected)
        assert len(graphs) == 1  # windows shrink inside a block: unpadded, each width would be a graph
        assert got.tokens_per_forward.min() >= 1


def test_compiled_windows_stop_at_eos_like_greedy(fresh_model):
    model = fresh_model("llama")
    input_ids, attention_mask = random_prompts(2, [6, 9], seed=2)
    common = dict(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=20, do_sample=False)
    eos = int(model.generate(**common, eos_token_id=None)[0, input_ids.shape[1] + 5])
    expected = model.generate(**common, eos_token_id=[eos, EOS])
    got = model.generate(**common, eos_token_id=[eos, EOS], jacobi_n=4, cache_implementation="static",
                         compile_config=compiling(counting_backend()[0]))  # fmt: skip
    assert torch.equal(got, expected)
    assert (got[0, input_ids.shape[1] :] == eos).any()


def test_no_compilation_without_a_static_cache_or_with_disable_compile(fresh_model):
    model, (backend, graphs) = fresh_model("llama"), counting_backend()
    input_ids, attention_mask = random_prompts(2, [6, 9], seed=1)
    common = dict(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=12, do_sample=False, jacobi_n=4)
    model.generate(**common, compile_config=compiling(backend))  # dynamic cache: `generate` would not compile
    model.generate(**common, cache_implementation="static", compile_config=compiling(backend), disable_compile=True)
    assert graphs == []


def test_a_static_cache_over_sliding_windows_is_refused_with_the_fix(fresh_model):
    model = fresh_model("mistral")
    input_ids, attention_mask = random_prompts(1, [20], seed=3)
    with pytest.raises(ValueError, match='sliding-window layers.*Drop `cache_implementation="static"`'):
        model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=20, jacobi_n=4,
                       cache_implementation="static")  # fmt: skip
