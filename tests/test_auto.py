"""`jacobi_n="auto"` and n-gram guesses: still identical to greedy, bounded memory, and the policy's choices."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny import ARCHITECTURES, random_prompts

from hf_cllm import jacobi_generate
from hf_cllm.windows import FullWindows, NgramGuesses, measure_costs


# Relative cost of a forward over 1 … 16 new tokens: measured on a 2-core CPU (steep) and a GPU-like flat one.
CPU_COSTS = [1.0, 1.4, 1.6, 1.75, 1.78, 1.8, 1.82, 1.83, 1.87, 1.91, 1.95, 1.99, 2.03, 2.07, 2.11, 2.15]
FLAT_COSTS = [1.0] * 16


def greedy(model, input_ids, attention_mask=None, **kwargs):
    return model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False, **kwargs)


def jacobi(model, input_ids, attention_mask=None, **kwargs):
    return model.generate(
        input_ids=input_ids, attention_mask=attention_mask, do_sample=False, custom_generate=jacobi_generate, **kwargs
    )


def windows_of(model, input_ids, attention_mask=None, **kwargs):
    """(output, the length of every window forward after the prefill)."""
    lengths = []
    handle = model.register_forward_pre_hook(lambda m, a, k: lengths.append(k["input_ids"].shape[1]), with_kwargs=True)
    try:
        out = jacobi(model, input_ids, attention_mask, return_dict_in_generate=True, **kwargs)
    finally:
        handle.remove()
    return out, lengths[1:]


def cost(lengths, costs):
    return sum(costs[length - 1] for length in lengths)


# rules: the next token from the current one and its position
def counting_cycle(tokens, positions):  # repeats every 12 tokens: n-gram guesses are always right
    return (tokens - 3 + 1) % 12


def by_position(tokens, positions):  # ignores the tokens: Jacobi predictions are right one iteration later
    return positions * 7


def by_token_and_position(tokens, positions):  # no two steps alike: no guess is ever right
    return tokens * 31 + positions * 17


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("setting", [dict(jacobi_n=6, jacobi_init="ngram"), dict(jacobi_n="auto")])
def test_identical_to_greedy_across_architectures(arch, setting, tiny_model):
    model = tiny_model(arch)
    input_ids, attention_mask = random_prompts(3, [5, 11, 2], seed=1)
    input_ids[:, -4:] = input_ids[:, -8:-4]  # something for prompt lookup to find
    expected = greedy(model, input_ids, attention_mask, max_new_tokens=30)
    for costs in (FLAT_COSTS, CPU_COSTS):
        extra = dict(jacobi_costs=costs) if setting["jacobi_n"] == "auto" else {}
        got = jacobi(model, input_ids, attention_mask, max_new_tokens=30, **setting, **extra)
        assert torch.equal(got, expected)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rule=st.sampled_from([None, counting_cycle, by_position, by_token_and_position]),
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=3),
    max_n=st.integers(1, 12),
    max_new_tokens=st.integers(1, 50),
    init=st.sampled_from(["random", "pad", "ngram"]),
    flat=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_auto_identical_property(rule, lengths, max_n, max_new_tokens, init, flat, seed, tiny_model, rule_model):
    model = tiny_model("llama") if rule is None else rule_model(rule)
    input_ids, attention_mask = random_prompts(len(lengths), lengths, seed=seed)
    costs = (FLAT_COSTS if flat else CPU_COSTS)[:max_n]
    expected = greedy(model, input_ids, attention_mask, max_new_tokens=max_new_tokens)
    got = jacobi(
        model, input_ids, attention_mask, max_new_tokens=max_new_tokens, jacobi_n="auto", jacobi_max_n=max_n,
        jacobi_init=init, jacobi_costs=costs,
    )  # fmt: skip
    assert torch.equal(got, expected)


def test_lookup_takes_the_latest_longest_match_then_the_pool():
    fallback = lambda ids, mask, k: torch.full((ids.shape[0], k), 99)  # noqa: E731
    ngram = NgramGuesses(2, "cpu", fallback, max_ngram=3, pool_size=4, span=3)
    # row 0 ends in "5 6": its latest earlier "5 6" is followed by 9 8, an older "6" alone by 4 4.
    # row 1 (left-padded) ends in 42, which occurs nowhere else, and padding must not count as a match.
    ids = torch.tensor([[5, 6, 7, 6, 4, 4, 5, 6, 9, 8, 5, 6], [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 3, 42]])
    mask = (torch.arange(12) >= torch.tensor([[0], [9]])).long()
    guesses, found, source = ngram.lookup(ids, mask, 4)
    assert guesses[0].tolist() == [9, 8, 5, 6] and int(found[0]) == 4 and int(source[0]) == 2
    assert guesses[1].tolist() == [-1, -1, -1, -1] and int(found[1]) == 0 and int(source[1]) == -1
    assert ngram(ids, mask, 4)[1].tolist() == [99, 99, 99, 99]
    # the model predicted 43 44 after a 42 once: the pool remembers it
    window, pred = torch.tensor([[1, 2], [1, 42]]), torch.tensor([[2, 3], [7, 43]])
    ngram.observe(window, pred, keep=1)
    guesses, found, source = ngram.lookup(ids, mask, 4)
    assert guesses[1].tolist() == [43, -1, -1, -1] and int(found[1]) == 1 and int(source[1]) == 0


def test_full_windows_take_the_source_whose_guesses_were_accepted_more():
    fallback = lambda ids, mask, k: torch.full((ids.shape[0], k), 99)  # noqa: E731
    planner = FullWindows(4, NgramGuesses(1, "cpu", fallback, max_ngram=3, pool_size=8, span=4))
    ids = torch.tensor([[6, 4, 4, 7, 6]])  # the last token, 6, alone matches earlier: 4 4 7 followed it
    # a window's rejected positions fill the pool: after a 6 the model predicted 8 8 8
    guesses = planner.next_guesses(ids, None, torch.tensor([[1, 6, 2, 3]]), torch.tensor([[5, 8, 8, 8]]), keep=1)
    assert guesses.tolist() == [[4, 4, 7]]  # no evidence yet: the context match, as `NgramGuesses.lookup` ranks it
    # none of the context match's guesses was accepted: the pool's turn
    guesses = planner.next_guesses(ids, None, torch.tensor([[6, 4, 4, 7]]), torch.tensor([[9, 9, 9, 9]]), keep=1)
    assert guesses.tolist() == [[8, 8, 8]]
    # nor the pool's: both are as good again, and the context match wins the tie
    guesses = planner.next_guesses(ids, None, torch.tensor([[6, 8, 8, 8]]), torch.tensor([[9, 9, 9, 9]]), keep=1)
    assert guesses.tolist() == [[4, 4, 7]]


def test_pool_memory_stays_bounded(rule_model):
    fallback = lambda ids, mask, k: torch.zeros((ids.shape[0], k), dtype=torch.long)  # noqa: E731
    ngram = NgramGuesses(1, "cpu", fallback, pool_size=8, span=4)
    shapes = (ngram.pool_keys.shape, ngram.pool_values.shape)
    for step in range(500):
        window = torch.arange(step, step + 16)[None]
        ngram.observe(window, window + 1, keep=3)
    assert (ngram.pool_keys.shape, ngram.pool_values.shape) == shapes
    assert sorted(ngram.pool_keys[0].tolist()) == list(range(499 + 8, 499 + 16))  # the newest 8 keys
    # and a long generation through the decoder keeps working with it
    model = rule_model(by_token_and_position)
    input_ids, _ = random_prompts(1, [6])
    expected = greedy(model, input_ids, max_new_tokens=400)
    got = jacobi(model, input_ids, max_new_tokens=400, jacobi_n="auto", jacobi_costs=FLAT_COSTS)
    assert torch.equal(got, expected)


def test_auto_falls_back_to_one_token_windows_when_guesses_never_pay(rule_model):
    model = rule_model(by_token_and_position)
    input_ids, _ = random_prompts(1, [8], seed=3)
    out, lengths = windows_of(model, input_ids, max_new_tokens=200, jacobi_n="auto", jacobi_costs=CPU_COSTS)
    assert torch.equal(out.sequences, greedy(model, input_ids, max_new_tokens=200))
    assert float(out.tokens_per_forward[0]) == pytest.approx(1.0, abs=0.02)
    assert lengths.count(1) >= 0.9 * len(lengths)
    # never meaningfully slower than greedy: its 199 one-token forwards cost 199; exploring costs 2 % + one block
    assert cost(lengths, CPU_COSTS) <= 1.04 * 199


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_auto_is_never_meaningfully_slower_than_greedy_on_a_random_model(seed, tiny_model):
    """A random model falls into loops now and then (n-gram guesses pay there) and is unpredictable elsewhere."""
    model = tiny_model("llama")
    input_ids, _ = random_prompts(1, [8], seed=seed)
    out, lengths = windows_of(model, input_ids, max_new_tokens=200, jacobi_n="auto", jacobi_costs=CPU_COSTS)
    assert torch.equal(out.sequences, greedy(model, input_ids, max_new_tokens=200))
    assert cost(lengths, CPU_COSTS) <= 1.04 * 199


def test_auto_checks_ngram_guesses_where_text_repeats(rule_model):
    model = rule_model(counting_cycle)
    input_ids, _ = random_prompts(1, [8], seed=3)
    out, lengths = windows_of(model, input_ids, max_new_tokens=120, jacobi_n="auto", jacobi_costs=CPU_COSTS)
    assert torch.equal(out.sequences, greedy(model, input_ids, max_new_tokens=120))
    assert float(out.tokens_per_forward[0]) > 4
    assert cost(lengths, CPU_COSTS) < 0.5 * 119


@pytest.mark.parametrize("costs", [FLAT_COSTS, CPU_COSTS], ids=["flat", "cpu"])
def test_auto_is_as_fast_as_the_best_fixed_block_size_on_a_model_that_converges(costs, rule_model):
    """On a model whose Jacobi blocks converge in two iterations (a CLLM's behaviour), auto runs blocks."""
    model = rule_model(by_position)
    input_ids, _ = random_prompts(1, [8], seed=3)
    expected = greedy(model, input_ids, max_new_tokens=160)
    fixed = {}
    for n in (2, 4, 8, 16):
        out, lengths = windows_of(model, input_ids, max_new_tokens=160, jacobi_n=n)
        assert torch.equal(out.sequences, expected)
        fixed[n] = cost(lengths, costs)
    out, lengths = windows_of(model, input_ids, max_new_tokens=160, jacobi_n="auto", jacobi_costs=costs)
    assert torch.equal(out.sequences, expected)
    assert cost(lengths, costs) <= 1.1 * min(fixed.values())


def test_measured_costs_are_cached_and_non_decreasing():
    calls = []

    def time_forward(length):
        calls.append(length)
        return {1: 1.0, 2: 1.5, 4: 1.4, 8: 2.0}[length]  # a noisy dip at 4

    model = torch.nn.Linear(1, 1)
    costs = measure_costs(model, ("cpu", "float32", 1), 8, time_forward, repeats=2)
    assert costs[1:] == pytest.approx([1.0, 1.5, 1.5, 1.5, 1.55, 1.7, 1.85, 2.0])  # interpolated, then monotone
    assert sorted(set(calls)) == [1, 2, 4, 8] and len(calls) == 8
    assert measure_costs(model, ("cpu", "float32", 1), 8, time_forward) is costs and len(calls) == 8


def test_auto_measures_costs_once_per_model(rule_model):
    model = rule_model(by_position)
    input_ids, _ = random_prompts(1, [8], seed=3)
    first, first_lengths = windows_of(model, input_ids, max_new_tokens=30, jacobi_n="auto", jacobi_max_n=8)
    again, again_lengths = windows_of(model, input_ids, max_new_tokens=30, jacobi_n="auto", jacobi_max_n=8)
    assert torch.equal(first.sequences, again.sequences)
    assert len(first_lengths) == len(again_lengths) + 3 * 4  # lengths 1, 2, 4, 8, three times each, once


def test_auto_is_routed_from_model_generate(rule_model):
    from hf_cllm import enable_jacobi

    model = enable_jacobi(rule_model(counting_cycle), jacobi_n="auto")
    input_ids, _ = random_prompts(1, [8], seed=3)
    out = model.generate(input_ids=input_ids, max_new_tokens=40, jacobi_costs=CPU_COSTS, return_dict_in_generate=True)
    assert out.iterations_per_block is None and float(out.tokens_per_forward[0]) > 2
