"""Multi-block decoding (`jacobi_blocks=K`, Jacobi Forcing's decoder) is token-identical to greedy decoding:
architectures, padded batches, EOS, stopping criteria, processors, streamers, sampling and the Hub copy."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_generate_features import Recorder
from test_hub import run_without_hf_cllm
from tiny import ARCHITECTURES, random_prompts
from transformers import StoppingCriteria, StoppingCriteriaList

from hf_cllm import hub, jacobi_generate
from hf_cllm.windows import MultiBlocks


def greedy(model, input_ids, attention_mask=None, **kwargs):
    return model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False, **kwargs)


def mostly_right_init(reference, seed=0):
    """A `jacobi_init` that guesses the known greedy answer except for a random tail of 0-3 wrong tokens: the front
    block is often 85 % accepted with positions still open, which is when a second block joins the window."""
    generator = torch.Generator().manual_seed(seed)

    def guesses(input_ids, count):
        start = input_ids.shape[1]
        known = reference[:, start : start + count]
        guess = torch.cat([known, torch.full((known.shape[0], count - known.shape[1]), 5)], dim=1)
        wrong = int(torch.randint(0, 4, (1,), generator=generator))
        if wrong:
            guess[:, -wrong:] = 7
        return guess

    return guesses


class WindowSizes:
    """The number of tokens of every forward pass of a model (prefill included)."""

    def __init__(self, model):
        self.sizes = []
        self.handle = model.register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.sizes.append(ids.shape[1])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def multiblock(model, input_ids, attention_mask, reference, jacobi_n, blocks, seed=0, **kwargs):
    return model.generate(
        input_ids=input_ids, attention_mask=attention_mask, do_sample=False, custom_generate=jacobi_generate,
        jacobi_n=jacobi_n, jacobi_blocks=blocks, jacobi_init=mostly_right_init(reference, seed), **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("blocks", [2, 3])
def test_identical_to_greedy_across_architectures(arch, blocks, tiny_model):
    model = tiny_model(arch)
    input_ids, attention_mask = random_prompts(3, [5, 11, 2], seed=1)
    expected = greedy(model, input_ids, attention_mask, max_new_tokens=40, eos_token_id=None)
    reference = greedy(model, input_ids, attention_mask, max_new_tokens=80, eos_token_id=None)
    with WindowSizes(model) as windows:
        got = multiblock(model, input_ids, attention_mask, reference, 8, blocks, max_new_tokens=40, eos_token_id=None)
    assert torch.equal(got, expected)
    assert max(windows.sizes[1:]) > 8  # a second block was in flight at least once


def test_blocks_open_only_when_the_front_block_is_mostly_accepted():
    """The planner itself: the next block (the window's last prediction + n-1 fresh guesses) joins once the front
    block has at most 15 % of its positions open, and never more than `max_blocks` are in flight."""
    fresh = lambda ids, mask, k: torch.full((ids.shape[0], k), 9)  # noqa: E731
    planner = MultiBlocks(8, 2, fresh)
    ids = torch.zeros(1, 5, dtype=torch.long)
    first = planner.next_guesses(ids, None, ids[:, -1:], ids[:, -1:], keep=1)  # the prefill: open a block
    assert first.shape[1] == 7 and planner.blocks == [0] * 7
    window, pred = torch.arange(8)[None], torch.arange(100, 108)[None]
    assert planner.next_guesses(ids, None, window, pred, keep=5).shape[1] == 2  # 2 of 7 open: 71 % accepted
    planner.blocks = [0] * 7
    grown = planner.next_guesses(ids, None, window, pred, keep=6)  # 1 of 7 open: 86 % accepted
    assert grown.tolist() == [[106, 107] + [9] * 7] and planner.blocks == [0] + [1] * 8
    window, pred = torch.arange(10)[None], torch.arange(200, 210)[None]
    kept = planner.next_guesses(ids, None, window, pred, keep=1)  # block 1 alone now, and barely started
    assert kept.shape[1] == 8 and planner.blocks == [1] * 8


@pytest.mark.parametrize("arch", ["mistral", "gemma3"])
def test_sliding_window_layers_past_the_window(arch, tiny_model):
    model = tiny_model(arch)
    input_ids, attention_mask = random_prompts(2, [20, 13], seed=3)
    expected = greedy(model, input_ids, attention_mask, max_new_tokens=40, eos_token_id=None)
    reference = greedy(model, input_ids, attention_mask, max_new_tokens=80, eos_token_id=None)
    got = multiblock(model, input_ids, attention_mask, reference, 8, 2, max_new_tokens=40, eos_token_id=None)
    assert torch.equal(got, expected)


def test_eos_processors_stopping_criteria_and_streamer(tiny_model):
    model = tiny_model("llama")
    input_ids, attention_mask = random_prompts(2, [6, 9], seed=2)
    plain = greedy(model, input_ids, attention_mask, max_new_tokens=30, eos_token_id=None)
    eos = int(plain[0, input_ids.shape[1] + 17])  # row 0 stops inside a later block

    class StopAtLength(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), input_ids.shape[1] >= 35, dtype=torch.bool)

    common = dict(
        max_new_tokens=30, eos_token_id=eos, pad_token_id=0, repetition_penalty=1.3, no_repeat_ngram_size=3,
        stopping_criteria=StoppingCriteriaList([StopAtLength()]),
    )  # fmt: skip
    reference = greedy(model, input_ids, attention_mask, **common)
    streams = [Recorder(), Recorder()]
    expected = greedy(model, input_ids, attention_mask, streamer=streams[0], **common)
    got = multiblock(model, input_ids, attention_mask, reference, 6, 2, streamer=streams[1], **common)
    assert torch.equal(got, expected)
    assert streams[1].ended == 1 and len(streams[0].values) == len(streams[1].values)
    assert all(torch.equal(a, b) for a, b in zip(streams[0].values, streams[1].values))


def test_statistics(tiny_model):
    model = tiny_model("llama")
    input_ids, _ = random_prompts(1, [6], seed=4)
    reference = greedy(model, input_ids, max_new_tokens=80, eos_token_id=None)
    out = multiblock(model, input_ids, None, reference, 8, 2, max_new_tokens=40, eos_token_id=None,
                     return_dict_in_generate=True)  # fmt: skip
    assert out.num_new_tokens.item() == 40 and out.iterations_per_block is None  # blocks overlap in time
    assert out.tokens_per_forward.item() == pytest.approx(40 / out.num_forward_passes.item())


def test_sampling_with_several_blocks_runs_and_is_seeded(tiny_model):
    model = tiny_model("llama")
    input_ids, attention_mask = random_prompts(2, [6, 3], seed=5)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append(model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=True,
                                   temperature=0.7, max_new_tokens=20, custom_generate=jacobi_generate, jacobi_n=4,
                                   jacobi_blocks=2))  # fmt: skip
    assert torch.equal(runs[0], runs[1]) and runs[0].shape == (2, 26)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    arch=st.sampled_from(["llama", "gpt2", "mistral"]),
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=4),
    jacobi_n=st.integers(2, 12),
    blocks=st.integers(1, 4),
    max_new_tokens=st.integers(1, 40),
    eos_position=st.one_of(st.none(), st.integers(0, 39)),
    init=st.sampled_from(["mostly_right", "random", "ngram"]),
    seed=st.integers(0, 1000),
)
def test_identical_property(arch, lengths, jacobi_n, blocks, max_new_tokens, eos_position, init, seed, tiny_model):
    model = tiny_model(arch)
    input_ids, attention_mask = random_prompts(len(lengths), lengths, seed=seed)
    reference = greedy(model, input_ids, attention_mask, max_new_tokens=max_new_tokens + 20, eos_token_id=None)
    eos = None
    if eos_position is not None and eos_position < max_new_tokens:
        eos = int(reference[0, input_ids.shape[1] + eos_position])
    kwargs = dict(max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=0)
    expected = greedy(model, input_ids, attention_mask, **kwargs)
    jacobi_init = mostly_right_init(reference, seed) if init == "mostly_right" else init
    got = model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False,
                         custom_generate=jacobi_generate, jacobi_n=jacobi_n, jacobi_blocks=blocks,
                         jacobi_init=jacobi_init, **kwargs)  # fmt: skip
    assert torch.equal(got, expected)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(jacobi_n=8, jacobi_blocks=0), "`jacobi_blocks` must be a positive integer"),
        (dict(jacobi_n=8, jacobi_blocks=2.5), "`jacobi_blocks` must be a positive integer"),
        (dict(jacobi_n="auto", jacobi_blocks=2), 'not "auto"'),
        (dict(jacobi_n=8, jacobi_blocks=2, jacobi_return_states=True), "cannot record `jacobi_return_states`"),
    ],
)
def test_bad_arguments_are_named(kwargs, message, tiny_model):
    model = tiny_model("llama")
    input_ids, _ = random_prompts(1, [4], seed=6)
    with pytest.raises(ValueError, match=message):
        model.generate(input_ids=input_ids, max_new_tokens=4, custom_generate=jacobi_generate, **kwargs)


def test_the_hub_copy_decodes_several_blocks(tmp_path, tiny_model):
    decoder = hub.save_decoder(tmp_path / "decoder")
    model_dir = tmp_path / "plain"
    tiny_model("qwen2").save_pretrained(model_dir)
    result = run_without_hf_cllm(f"""
        import json, torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(model_dir)!r}).eval()
        ids = torch.tensor([[5, 17, 33, 8, 90, 41], [1, 1, 7, 7, 12, 60]]); mask = (ids != 1).long()
        common = dict(attention_mask=mask, pad_token_id=0, max_new_tokens=30, eos_token_id=None)
        greedy = model.generate(ids, do_sample=False, **common)
        reference = model.generate(ids, do_sample=False, **dict(common, max_new_tokens=60))
        def init(input_ids, count):
            start = input_ids.shape[1]
            known = reference[:, start : start + count]
            guess = torch.cat([known, torch.full((2, count - known.shape[1]), 5)], dim=1)
            guess[:, -2:] = 7
            return guess
        out = model.generate(ids, custom_generate={str(decoder)!r}, trust_remote_code=True, jacobi_n=8,
                             jacobi_blocks=2, jacobi_init=init, return_dict_in_generate=True, **common)
        print(json.dumps({{"identical": torch.equal(out.sequences, greedy),
                           "forwards": out.num_forward_passes.tolist()}}))
    """)
    assert result["identical"] and result["forwards"][0] < 30
