"""Jacobi decoding is token-identical to greedy `generate(do_sample=False)`: architectures, batches, padding, EOS."""

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny import ARCHITECTURES, EOS, random_prompts

from hf_cllm import JacobiGenerateOutput, enable_jacobi, jacobi_generate


def greedy(model, input_ids, attention_mask=None, **kwargs):
    return model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False, **kwargs)


def jacobi(model, input_ids, attention_mask=None, **kwargs):
    return model.generate(
        input_ids=input_ids, attention_mask=attention_mask, do_sample=False, custom_generate=jacobi_generate, **kwargs
    )


def eos_from_reference(model, input_ids, attention_mask, position, max_new_tokens):
    """A token that greedy decoding of row 0 emits at `position`, to use as EOS (random models rarely emit EOS)."""
    reference = greedy(model, input_ids, attention_mask, max_new_tokens=max_new_tokens, eos_token_id=None)
    return int(reference[0, input_ids.shape[1] + position])


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("jacobi_n", [1, 3, 16])
def test_identical_to_greedy_across_architectures(arch, jacobi_n, tiny_model):
    model = tiny_model(arch)
    input_ids, attention_mask = random_prompts(3, [5, 11, 2], seed=1)
    expected = greedy(model, input_ids, attention_mask, max_new_tokens=24)
    got = jacobi(model, input_ids, attention_mask, max_new_tokens=24, jacobi_n=jacobi_n)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_identical_with_eos_inside_a_block(arch, tiny_model):
    model = tiny_model(arch)
    input_ids, attention_mask = random_prompts(2, [6, 9], seed=2)
    eos = eos_from_reference(model, input_ids, attention_mask, position=5, max_new_tokens=20)
    expected = greedy(model, input_ids, attention_mask, max_new_tokens=20, eos_token_id=eos)
    got = jacobi(model, input_ids, attention_mask, max_new_tokens=20, jacobi_n=4, eos_token_id=eos)
    assert torch.equal(got, expected)
    assert (got[0, input_ids.shape[1] :] == eos).any()


@pytest.mark.parametrize("arch", ["mistral", "gemma2", "gemma3"])
def test_sliding_window_layers_past_the_window(arch, tiny_model):
    """Prompt and output far longer than the 8-token window: the cache must roll back across it."""
    model = tiny_model(arch)
    input_ids, attention_mask = random_prompts(2, [20, 13], seed=3)
    expected = greedy(model, input_ids, attention_mask, max_new_tokens=40)
    for jacobi_n in (4, 16):
        assert torch.equal(jacobi(model, input_ids, attention_mask, max_new_tokens=40, jacobi_n=jacobi_n), expected)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    arch=st.sampled_from(["llama", "gpt2", "mistral"]),
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=4),
    jacobi_n=st.integers(1, 20),
    max_new_tokens=st.integers(1, 40),
    eos_position=st.one_of(st.none(), st.integers(0, 39)),
    with_mask=st.booleans(),
    progress=st.sampled_from(["row", "shared"]),
    seed=st.integers(0, 1000),
)
def test_identical_property(arch, lengths, jacobi_n, max_new_tokens, eos_position, with_mask, progress, seed,
                            tiny_model):  # fmt: skip
    model = tiny_model(arch)
    input_ids, attention_mask = random_prompts(len(lengths), lengths, seed=seed)
    if not with_mask:  # no mask at all: every row is unpadded
        input_ids, attention_mask = input_ids[:, -min(lengths) :], None
    eos = EOS
    if eos_position is not None and eos_position < max_new_tokens:
        eos = eos_from_reference(model, input_ids, attention_mask, eos_position, max_new_tokens)
    kwargs = dict(max_new_tokens=max_new_tokens, eos_token_id=eos)
    expected = greedy(model, input_ids, attention_mask, **kwargs)
    got = jacobi(model, input_ids, attention_mask, jacobi_n=jacobi_n, jacobi_progress=progress, **kwargs)
    assert torch.equal(got, expected)


def test_left_padded_row_equals_its_unpadded_run(tiny_model):
    model = tiny_model("llama")
    input_ids, attention_mask = random_prompts(3, [4, 10, 7], seed=4)
    batched = jacobi(model, input_ids, attention_mask, max_new_tokens=15, jacobi_n=5)
    for row in range(3):
        alone = input_ids[row : row + 1, attention_mask[row].bool()]
        single = jacobi(model, alone, max_new_tokens=15, jacobi_n=5)
        assert torch.equal(batched[row, -15:], single[0, -15:])


def test_rows_finish_independently_and_are_padded(tiny_model):
    model = tiny_model("llama")
    input_ids, attention_mask = random_prompts(2, [6, 6], seed=5)
    eos = eos_from_reference(model, input_ids, attention_mask, position=3, max_new_tokens=20)
    out = jacobi(
        model, input_ids, attention_mask, max_new_tokens=20, jacobi_n=4, eos_token_id=eos, return_dict_in_generate=True
    )
    expected = greedy(model, input_ids, attention_mask, max_new_tokens=20, eos_token_id=eos)
    assert torch.equal(out.sequences, expected)
    row0 = out.sequences[0, input_ids.shape[1] :]
    first_eos = int((row0 == eos).nonzero()[0])
    assert first_eos <= 3
    assert (row0[first_eos + 1 :] == model.generation_config.pad_token_id).all()
    assert int(out.num_new_tokens[0]) == first_eos + 1


def test_mixin_and_callable_give_the_same_result(tiny_model):
    model = tiny_model("qwen2")
    input_ids, attention_mask = random_prompts(2, [3, 8], seed=6)
    via_callable = jacobi(model, input_ids, attention_mask, max_new_tokens=12, jacobi_n=4)
    enabled = enable_jacobi(tiny_model("qwen2", seed=0))
    try:
        via_mixin = enabled.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=12, jacobi_n=4)
        out = enabled.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=12,
            jacobi_n=4,
            return_dict_in_generate=True,
        )
    finally:
        enabled.__class__ = enabled.__class__.__mro__[2]  # the cached tiny model is shared: undo the mixin
    assert torch.equal(via_mixin, via_callable)
    assert isinstance(out, JacobiGenerateOutput)


# --- lower precision: divergences only at ties --------------------------------------------------------------------


def untied_divergences(model, input_ids, attention_mask, greedy_ids, jacobi_ids):
    """(rows where Jacobi leaves greedy, those where it does so at a position whose greedy logits for the two tokens
    differ by more than 2 units in the last place of the dtype at the logits' scale)."""
    eps = torch.finfo(model.dtype).eps
    diverging, untied = 0, []
    for row in range(greedy_ids.shape[0]):
        differ = (greedy_ids[row] != jacobi_ids[row]).nonzero()
        if not len(differ):
            continue
        diverging += 1
        position = int(differ[0])
        prefix = greedy_ids[row : row + 1, :position]
        mask = torch.cat([attention_mask[row : row + 1], torch.ones(1, position - attention_mask.shape[1])], 1)
        with torch.no_grad():
            logits = model(input_ids=prefix, attention_mask=mask.long()).logits[0, -1].float()
        gap = (logits[greedy_ids[row, position]] - logits[jacobi_ids[row, position]]).abs()
        ulp = eps * 2 ** torch.floor(torch.log2(logits.abs().max()))
        if gap > 2 * ulp:
            untied.append((row, position, float(gap), float(ulp)))
    return diverging, untied


def bf16_outputs(model, jacobi_n):
    input_ids, attention_mask = random_prompts(16, [3 + (i * 5) % 11 for i in range(16)], seed=5)
    settings = dict(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=24, do_sample=False)
    greedy_ids = model.generate(**settings, eos_token_id=None)
    jacobi_ids = model.generate(**settings, eos_token_id=None, custom_generate=jacobi_generate, jacobi_n=jacobi_n)
    return input_ids, attention_mask, greedy_ids, jacobi_ids


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_bf16_divergences_from_greedy_start_only_at_ties(arch, tiny_model):
    model = copy.deepcopy(tiny_model(arch)).to(torch.bfloat16)
    for jacobi_n in (4, 16):
        _, untied = untied_divergences(model, *bf16_outputs(model, jacobi_n))
        assert untied == [], f"{arch}, n={jacobi_n}: (row, position, gap, ulp) {untied}"


def test_the_tie_check_catches_a_wrong_acceptance(tiny_model, monkeypatch):
    """Accepting one guess more than the rule allows is a real bug: the check above must flag it."""
    from hf_cllm.verify import GreedyAcceptance

    right = GreedyAcceptance.accepted_guesses
    monkeypatch.setattr(
        GreedyAcceptance, "accepted_guesses",
        lambda self, window, prediction: (right(self, window, prediction) + 1).clamp(max=window.shape[1] - 1),
    )  # fmt: skip
    model = copy.deepcopy(tiny_model("llama")).to(torch.bfloat16)
    diverging, untied = untied_divergences(model, *bf16_outputs(model, 4))
    assert diverging >= 8 and len(untied) >= 8
