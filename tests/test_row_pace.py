"""Per-row progress in a batch (`jacobi_progress="row"`, `hf_cllm.decoding.RowPace`): each row commits what it
accepted, so a batch keeps its rows' speed-up, and every row's output stays what greedy decoding gives it."""

from __future__ import annotations

import pytest
import torch
import toy
from tiny import random_prompts

from hf_cllm import jacobi_generate


PAD = 0  # the toy and tiny models' pad token


def run(model, input_ids, attention_mask=None, **kwargs):
    return model.generate(input_ids=input_ids, attention_mask=attention_mask, custom_generate=jacobi_generate,
                          return_dict_in_generate=True, **kwargs)  # fmt: skip


def left_padded(prompts: list[list[int]]):
    width = max(map(len, prompts))
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    return ids, (ids != PAD).long()


def test_a_trained_batch_keeps_its_rows_speed(consistency_toy_model, held_out_prompts):
    """Batch 8 of a consistency-trained model: with shared progress every forward moves by the slowest row; with
    per-row progress each row's tokens per forward stay at its batch-1 figure, and every row's output is its batch-1
    greedy output."""
    model, prompts = consistency_toy_model, held_out_prompts(16)
    settings = dict(max_new_tokens=32, do_sample=False, jacobi_n=toy.JACOBI_N)
    single = [run(model, torch.tensor([p]), **settings) for p in prompts]
    alone = torch.cat([out.tokens_per_forward for out in single])
    figures = {}
    for progress in ("row", "shared"):
        tpf = []
        for start in (0, 8):
            ids, mask = left_padded(prompts[start : start + 8])
            out = run(model, ids, mask, jacobi_progress=progress, **settings)
            assert (out.iterations_per_block is None) == (progress == "row")  # which path ran
            for row in range(8):
                assert torch.equal(out.sequences[row, ids.shape[1] :], single[start + row].sequences[0, -32:])
            tpf.append(out.tokens_per_forward)
        figures[progress] = torch.cat(tpf).mean() / alone.mean()
    assert alone.mean() > 2.0  # the training worked: rows do accept several tokens per forward
    assert figures["row"] >= 0.95, figures  # the target: >= 0.8
    assert figures["shared"] < figures["row"], figures


@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi", "gpt2"])
@pytest.mark.parametrize("jacobi_n", [2, 5, 16])
def test_rows_at_their_own_pace_stay_greedy(arch, jacobi_n, tiny_model):
    """Padded batches, an EOS that one row emits early, and guesses that are right for some rows only."""
    model = tiny_model(arch)
    input_ids, attention_mask = random_prompts(4, [6, 11, 3, 8], seed=41)
    reference = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=30,
                               do_sample=False, eos_token_id=None)  # fmt: skip
    eos = int(reference[1, input_ids.shape[1] + 9])  # row 1 stops after 10 tokens
    expected = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=30,
                              do_sample=False, eos_token_id=eos)  # fmt: skip
    for init in ("random", "ngram", "pad"):
        out = run(model, input_ids, attention_mask, max_new_tokens=30, do_sample=False, eos_token_id=eos,
                  jacobi_n=jacobi_n, jacobi_init=init, jacobi_progress="row")  # fmt: skip
        assert out.iterations_per_block is None, "the per-row path ran"
        assert torch.equal(out.sequences, expected), (arch, jacobi_n, init)
        new = expected[:, input_ids.shape[1] :].tolist()
        made = [row.index(eos) + 1 if eos in row else len(row) for row in new]  # up to and including EOS
        assert out.num_new_tokens.tolist() == made and made[1] <= 10


def test_where_rows_cannot_move_alone_the_batch_moves_together(tiny_model):
    """A sliding-window cache (a moved row would lose older tokens), a custom stopping criterion, a `jacobi_init`
    callable, `jacobi_progress="shared"` and the CPU default take the shared path, losslessly."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Never(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    input_ids, attention_mask = random_prompts(3, [4, 9, 6], seed=42)
    cases = [
        ("mistral", {"jacobi_progress": "row"}),
        ("llama", {"jacobi_progress": "row", "stopping_criteria": StoppingCriteriaList([Never()])}),
        ("llama", {"jacobi_progress": "row", "jacobi_init": lambda ids, k: ids[:, -1:].expand(-1, k)}),
        ("llama", {"jacobi_progress": "shared"}),
        ("llama", {}),  # the default on a CPU: shared (per-row windows cost more time here than they save)
    ]
    for arch, extra in cases:
        model = tiny_model(arch)
        expected = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=20,
                                  do_sample=False, eos_token_id=None)  # fmt: skip
        out = run(model, input_ids, attention_mask, max_new_tokens=20, do_sample=False, eos_token_id=None,
                  jacobi_n=4, **extra)  # fmt: skip
        assert out.iterations_per_block is not None, (arch, extra)
        assert torch.equal(out.sequences, expected), (arch, extra)


def test_a_bad_progress_value_names_the_choices(tiny_model):
    input_ids, _ = random_prompts(2, [3, 3], seed=1)
    with pytest.raises(ValueError, match=r"`jacobi_progress` must be one of \('row', 'shared'\)"):
        run(tiny_model("llama"), input_ids, max_new_tokens=4, jacobi_n=4, jacobi_progress="fast")


def test_continue_from_the_cache_of_rows_at_their_own_pace(tiny_model):
    """Rows that made the same number of tokens hand back a cache in `generate`'s layout; after an early EOS (rows
    of different lengths) there is none to hand back."""
    model = tiny_model("llama")
    input_ids, attention_mask = random_prompts(3, [5, 8, 2], seed=19)
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=9, eos_token_id=None)
    first_greedy = model.generate(**kwargs, return_dict_in_generate=True)
    first = run(model, **kwargs, jacobi_n=4, jacobi_progress="row", jacobi_init="ngram")
    assert first.iterations_per_block is None and torch.equal(first.sequences, first_greedy.sequences)
    assert first.cache.get_seq_length() == first.sequences.shape[1] - 1
    mask = torch.cat([attention_mask, attention_mask.new_ones(3, 9)], dim=1)
    expected = model.generate(input_ids=first_greedy.sequences, attention_mask=mask, cache=first_greedy.cache,
                              max_new_tokens=7, eos_token_id=None)  # fmt: skip
    got = model.generate(input_ids=first.sequences, attention_mask=mask, cache=first.cache, max_new_tokens=7,
                         eos_token_id=None, custom_generate=jacobi_generate, jacobi_n=4)  # fmt: skip
    assert torch.equal(got, expected)
    eos = int(first_greedy.sequences[1, input_ids.shape[1] + 2])  # row 1 stops early
    stopped = run(model, **{**kwargs, "eos_token_id": eos}, jacobi_n=4, jacobi_progress="row")
    assert stopped.cache is None and stopped.num_new_tokens.min() < stopped.num_new_tokens.max()
