"""What `generate` users rely on works the same with `jacobi_n`: processors, stopping, streaming, scores, the cache."""

import copy

import pytest
import torch
from tiny import EOS, PAD, random_prompts
from transformers import (
    AutoModelForCausalLM,
    DynamicCache,
    GenerationConfig,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)
from transformers.generation.streamers import BaseStreamer

from hf_cllm import AutoCLLMForCausalLM, enable_jacobi, jacobi_generate
from hf_cllm.speed import count_forwards


@pytest.fixture
def model(fresh_llama):
    """A fresh Jacobi-enabled tiny Llama (fresh, because tests change its class and config)."""
    return fresh_llama()


@pytest.fixture(scope="session")
def fresh_llama(tiny_config):
    """`fresh_llama()`: a new Jacobi-enabled tiny Llama with fixed weights, for tests that change the model."""

    def fresh_llama():
        torch.manual_seed(0)  # the same weights whatever ran before
        return enable_jacobi(AutoModelForCausalLM.from_config(tiny_config("llama"))).eval()

    return fresh_llama


def both(model, input_ids, attention_mask=None, jacobi_n=4, jacobi_init="random", **kwargs):
    """(greedy, jacobi) outputs of the same call."""
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, do_sample=False, **kwargs)
    return model.generate(**kwargs), model.generate(jacobi_n=jacobi_n, jacobi_init=jacobi_init, **kwargs)


def oracle_init(reference, corrupt_every=None):
    """A `jacobi_init` guessing from the known greedy answer (a test hook), optionally with wrong tokens mixed in."""

    def guesses(input_ids, count):
        start = input_ids.shape[1]
        known = reference[:, start : start + count]
        filler = torch.full((known.shape[0], count - known.shape[1]), 5, dtype=torch.long)
        guess = torch.cat([known, filler], dim=1)
        if corrupt_every:
            guess[:, corrupt_every - 1 :: corrupt_every] = 7
        return guess

    return guesses


@pytest.mark.parametrize(
    "processor_kwargs",
    [
        dict(repetition_penalty=1.8),
        dict(no_repeat_ngram_size=2),
        dict(bad_words_ids=[[10], [11, 12]]),
        dict(min_new_tokens=8, eos_token_id=None),  # EOS chosen below
        dict(repetition_penalty=1.3, no_repeat_ngram_size=3, min_new_tokens=4),
    ],
)
def test_logits_processors_see_each_positions_own_prefix(model, processor_kwargs):
    input_ids, attention_mask = random_prompts(2, [5, 9], seed=11)
    kwargs = dict(processor_kwargs)
    if "eos_token_id" in kwargs:  # make EOS likely early so that min_new_tokens has something to hold back
        plain = model.generate(
            input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=12, eos_token_id=None
        )
        kwargs["eos_token_id"] = int(plain[0, input_ids.shape[1] + 2])
    # An oracle init makes multi-token acceptance happen, so processors really run on hypothetical prefixes.
    reference = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=30, **kwargs)
    expected, got = both(
        model, input_ids, attention_mask, max_new_tokens=30, jacobi_init=oracle_init(reference, 4), **kwargs
    )
    assert torch.equal(got, expected)


def test_scores_and_logits_match_greedy(model):
    input_ids, _ = random_prompts(1, [6], seed=12)
    common = dict(max_new_tokens=14, return_dict_in_generate=True, output_scores=True, output_logits=True)
    expected, got = both(model, input_ids, repetition_penalty=1.5, **common)
    assert torch.equal(got.sequences, expected.sequences)
    assert len(got.scores) == len(expected.scores) == 14
    for ours, theirs in zip(got.scores + got.logits, expected.scores + expected.logits):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    transition = model.compute_transition_scores(got.sequences, got.scores, normalize_logits=True)
    assert transition.shape == (1, 14)


def test_max_new_tokens_and_max_length_are_exact(model):
    input_ids, attention_mask = random_prompts(2, [4, 7], seed=13)
    for kwargs in (dict(max_new_tokens=1), dict(max_new_tokens=5), dict(max_new_tokens=17), dict(max_length=9)):
        expected, got = both(model, input_ids, attention_mask, jacobi_n=8, eos_token_id=None, **kwargs)
        assert torch.equal(got, expected)
    # An oracle never lets a block overshoot the budget either.
    reference = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=30, eos_token_id=None
    )
    got = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=11,
        eos_token_id=None,
        jacobi_n=16,
        jacobi_init=oracle_init(reference),
    )
    assert got.shape[1] == input_ids.shape[1] + 11
    assert torch.equal(got, reference[:, : got.shape[1]])


def test_several_eos_ids_and_pad_token(model):
    input_ids, attention_mask = random_prompts(3, [3, 8, 5], seed=14)
    plain = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=16, eos_token_id=None)
    new = plain[:, input_ids.shape[1] :]
    eos_ids = [int(new[0, 4]), int(new[1, 9]), EOS]
    expected, got = both(model, input_ids, attention_mask, max_new_tokens=16, eos_token_id=eos_ids, pad_token_id=PAD)
    assert torch.equal(got, expected)


class StopAfterToken(StoppingCriteria):
    """Stops a row once `token` appears among its last `window` tokens (a user criterion that looks at the prefix)."""

    def __init__(self, token, window=1):
        self.token, self.window = token, window

    def __call__(self, input_ids, scores, **kwargs):
        return (input_ids[:, -self.window :] == self.token).any(-1)


def test_user_stopping_criteria(model):
    input_ids, attention_mask = random_prompts(2, [5, 5], seed=15)
    plain = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=20, eos_token_id=None)
    token = int(plain[1, input_ids.shape[1] + 6])
    criteria = StoppingCriteriaList([StopAfterToken(token)])
    reference = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=30)
    for init in ("random", oracle_init(reference)):
        for eos in (None, EOS):  # without EOS, finished rows keep generating real tokens (as in `_sample`)
            expected, got = both(
                model,
                input_ids,
                attention_mask,
                max_new_tokens=20,
                stopping_criteria=criteria,
                eos_token_id=eos,
                jacobi_init=init,
            )
            assert torch.equal(got, expected)


def test_stop_strings_with_tokenizer(tiny_tokenizer, fresh_llama):
    tokenizer = tiny_tokenizer()
    model = fresh_llama()
    input_ids, attention_mask = random_prompts(1, [6], seed=16)
    plain = model.generate(input_ids=input_ids, max_new_tokens=20, eos_token_id=None)
    stopped_early = 0
    for start in range(input_ids.shape[1] + 3, input_ids.shape[1] + 12):
        stop = tokenizer.decode(plain[0, start : start + 2])
        expected, got = both(model, input_ids, max_new_tokens=20, stop_strings=[stop], tokenizer=tokenizer)
        assert torch.equal(got, expected)
        stopped_early += got.shape[1] < input_ids.shape[1] + 20
    assert stopped_early  # the stop strings really cut generation short


def test_stop_strings_from_the_generation_config(tiny_tokenizer, fresh_llama):
    tokenizer = tiny_tokenizer()
    model = fresh_llama()
    input_ids, _ = random_prompts(1, [6], seed=16)
    plain = model.generate(input_ids=input_ids, max_new_tokens=20, eos_token_id=None)
    start = input_ids.shape[1] + 4
    model.generation_config.stop_strings = [tokenizer.decode(plain[0, start : start + 2])]
    expected = model.generate(input_ids=input_ids, max_new_tokens=20, tokenizer=tokenizer)
    got = model.generate(input_ids=input_ids, max_new_tokens=20, tokenizer=tokenizer, jacobi_n=4)
    assert torch.equal(got, expected)


class Recorder(BaseStreamer):
    def __init__(self):
        self.values, self.ended = [], 0

    def put(self, value):
        self.values.append(value.clone())

    def end(self):
        self.ended += 1


def test_streamer_receives_the_same_pushes_as_greedy(model):
    input_ids, attention_mask = random_prompts(2, [4, 9], seed=17)
    streams = []
    for jacobi_n in (None, 5):
        recorder = Recorder()
        model.generate(
            input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=12, streamer=recorder, jacobi_n=jacobi_n
        )
        assert recorder.ended == 1
        streams.append(recorder.values)
    assert len(streams[0]) == len(streams[1])
    assert all(torch.equal(a, b) for a, b in zip(*streams))


def test_streamer_with_the_explicit_callable_through_the_mixin(model):
    input_ids, _ = random_prompts(1, [4], seed=17)
    recorder = Recorder()
    model.generate(
        input_ids=input_ids, max_new_tokens=6, streamer=recorder, custom_generate=jacobi_generate, jacobi_n=3
    )
    assert recorder.ended == 1 and len(recorder.values) == 1 + 6  # the prompt, then one push per token


def test_streamer_and_stop_strings_with_the_callable_on_a_plain_model(tiny_model, tiny_tokenizer):
    """transformers hands a `custom_generate` callable neither the streamer nor the tokenizer: the streamer still
    gets the prompt and every token, as with greedy; `stop_strings` is refused with the fix (test_errors.py)."""
    plain = tiny_model("gpt2")
    input_ids, _ = random_prompts(1, [4], seed=17)
    pushes = []
    for jacobi in ({}, dict(custom_generate=jacobi_generate, jacobi_n=3)):
        recorder = Recorder()
        plain.generate(input_ids=input_ids, max_new_tokens=6, streamer=recorder, **jacobi)
        assert recorder.ended == 1
        pushes.append(recorder.values)
    assert len(pushes[1]) == 1 + 6 and all(torch.equal(a, b) for a, b in zip(*pushes))
    # through the mixin, `custom_generate=jacobi_generate` takes `stop_strings` with the tokenizer as usual
    tokenizer = tiny_tokenizer()
    model = enable_jacobi(copy.deepcopy(plain))
    stop = tokenizer.decode(model.generate(input_ids=input_ids, max_new_tokens=3, jacobi_n=3)[0, -1:])
    kwargs = dict(input_ids=input_ids, max_new_tokens=8, stop_strings=[stop], tokenizer=tokenizer)
    expected = plain.generate(**kwargs, do_sample=False)
    out = model.generate(**kwargs, custom_generate=jacobi_generate, jacobi_n=3)
    assert torch.equal(out, expected) and out.shape[1] < input_ids.shape[1] + 8  # it stopped


def test_text_iterator_streamer_ends(tiny_tokenizer, fresh_llama):
    tokenizer = tiny_tokenizer()
    model = fresh_llama()
    input_ids, _ = random_prompts(1, [6], seed=18)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, timeout=30)
    out = model.generate(input_ids=input_ids, max_new_tokens=10, streamer=streamer, jacobi_n=4)
    text = "".join(streamer)  # would hang (then time out) without `end()`
    assert text == tokenizer.decode(out[0, input_ids.shape[1] :])


def test_continue_from_the_returned_cache(model):
    input_ids, attention_mask = random_prompts(2, [5, 8], seed=19)
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=9, return_dict_in_generate=True)
    first_greedy = model.generate(**kwargs)
    first = model.generate(**kwargs, jacobi_n=4)
    assert first.cache.get_seq_length() == first.sequences.shape[1] - 1  # like `_sample`: all but the last token
    mask = torch.cat([attention_mask, attention_mask.new_ones(2, 9)], dim=1)
    expected = model.generate(
        input_ids=first_greedy.sequences, attention_mask=mask, cache=first_greedy.cache, max_new_tokens=7
    )
    got = model.generate(
        input_ids=first.sequences, attention_mask=mask, cache=first.cache, max_new_tokens=7, jacobi_n=4
    )
    assert torch.equal(got, expected)


def test_user_supplied_cache(model):
    input_ids, _ = random_prompts(1, [7], seed=20)
    expected = model.generate(input_ids=input_ids, max_new_tokens=10, cache=DynamicCache(config=model.config))
    got = model.generate(input_ids=input_ids, max_new_tokens=10, cache=DynamicCache(config=model.config), jacobi_n=3)
    assert torch.equal(got, expected)


def test_acceptance_with_oracle_guesses_counts_forwards_and_crops_the_cache(model):
    """Random tiny models accept ~1 token per step; guesses from the known answer make blocks converge early."""
    input_ids, attention_mask = random_prompts(2, [6, 4], seed=21)
    reference = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=60, eos_token_id=None
    )
    for jacobi_n, corrupt_every in ((2, None), (4, 5), (8, 5), (16, 5), (16, None)):
        with count_forwards(model) as calls:
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=60,
                eos_token_id=None,
                jacobi_n=jacobi_n,
                jacobi_init=oracle_init(reference, corrupt_every),
                return_dict_in_generate=True,
            )
        assert torch.equal(out.sequences, reference)
        assert out.num_forward_passes.tolist() == [calls[0]] * 2
        assert out.num_new_tokens.tolist() == [60, 60]
        assert out.cache.get_seq_length() == out.sequences.shape[1] - 1
        assert (out.tokens_per_forward > 1.3).all()
        assert all(1 <= it <= jacobi_n for it in out.iterations_per_block[0])
        if corrupt_every is None:  # perfect guesses: every block settles in one forward
            assert set(out.iterations_per_block[0]) == {1}
            assert calls[0] == 1 + -(-59 // jacobi_n)


def test_random_model_statistics_are_consistent(model):
    input_ids, attention_mask = random_prompts(1, [5], seed=22)
    with count_forwards(model) as calls:
        out = model.generate(
            input_ids=input_ids, max_new_tokens=20, eos_token_id=None, jacobi_n=4, return_dict_in_generate=True
        )
    assert int(out.num_forward_passes[0]) == calls[0]
    # Each iteration settles at least one token, so at most one forward per token (the prefill gives the first).
    assert 1.0 <= float(out.tokens_per_forward[0]) and calls[0] <= 20
    assert sum(out.iterations_per_block[0]) == calls[0] - 1


def test_jacobi_n_1_is_plain_greedy(model):
    input_ids, _ = random_prompts(1, [5], seed=23)
    out = model.generate(input_ids=input_ids, max_new_tokens=10, jacobi_n=1, return_dict_in_generate=True)
    assert torch.equal(out.sequences, model.generate(input_ids=input_ids, max_new_tokens=10))
    assert float(out.tokens_per_forward[0]) == 1.0
    assert out.iterations_per_block[0] == [1] * 9


@pytest.mark.parametrize("init", ["random", "pad"])
def test_initialisations_are_lossless_and_random_is_seeded(model, init):
    input_ids, attention_mask = random_prompts(2, [5, 8], seed=24)
    runs = [
        model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=20,
            jacobi_n=6,
            jacobi_init=init,
            jacobi_seed=3,
            return_dict_in_generate=True,
        )
        for _ in range(2)
    ]
    expected = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=20)
    assert all(torch.equal(run.sequences, expected) for run in runs)
    assert runs[0].iterations_per_block == runs[1].iterations_per_block


def test_custom_generate_callable_on_an_untouched_model(tiny_model):
    model = tiny_model("gpt2")
    input_ids, attention_mask = random_prompts(2, [4, 6], seed=25)
    expected = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=12)
    got = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=12,
        custom_generate=jacobi_generate,
        jacobi_n=5,
        return_dict_in_generate=True,
    )
    assert torch.equal(got.sequences, expected)
    assert got.num_forward_passes is not None


def test_jacobi_n_in_generation_config_survives_save_and_load(tmp_path, tiny_config):
    model = enable_jacobi(AutoModelForCausalLM.from_config(tiny_config("llama")), jacobi_n=6).eval()
    model.save_pretrained(tmp_path)
    reloaded = AutoCLLMForCausalLM.from_pretrained(tmp_path)
    assert reloaded.generation_config.jacobi_n == 6
    input_ids, _ = random_prompts(1, [5], seed=26)
    out = reloaded.generate(input_ids=input_ids, max_new_tokens=8, return_dict_in_generate=True)
    assert out.num_forward_passes is not None  # Jacobi, with the saved block size
    # The checkpoint is an ordinary one: plain transformers loads it as the base architecture.
    plain = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(plain).__name__ == "LlamaForCausalLM" and not hasattr(plain, "_jacobi")
    assert torch.equal(plain.generate(input_ids=input_ids, max_new_tokens=8), out.sequences)
    # Sampling with the saved block size is Jacobi sampling too.
    sampled = reloaded.generate(input_ids=input_ids, max_new_tokens=4, do_sample=True, return_dict_in_generate=True)
    assert sampled.sequences.shape == (1, 9) and sampled.num_forward_passes is not None


def test_generation_config_object_carries_jacobi_n(model):
    input_ids, _ = random_prompts(1, [5], seed=27)
    config = GenerationConfig(max_new_tokens=6, do_sample=False, pad_token_id=PAD, eos_token_id=EOS)
    config.jacobi_n = 3
    out = model.generate(input_ids=input_ids, generation_config=config, return_dict_in_generate=True)
    assert out.iterations_per_block is not None and max(out.iterations_per_block[0]) <= 3


def test_a_generation_config_without_jacobi_n_keeps_the_models_and_may_carry_the_other_options(model):
    """As `generate` fills what a passed config leaves unset from the model's: a server passes each request's own
    GenerationConfig, and a CLLM must still decode with its saved block size; `jacobi_*` options ride along."""
    from hf_cllm import set_default_jacobi_n

    set_default_jacobi_n(model, 3)
    input_ids, _ = random_prompts(1, [5], seed=27)
    reference = model.generate(input_ids=input_ids, max_new_tokens=12, jacobi_n=None, do_sample=False)
    config = GenerationConfig(max_new_tokens=12, do_sample=False, pad_token_id=PAD, eos_token_id=EOS)
    out = model.generate(input_ids=input_ids, generation_config=config, return_dict_in_generate=True)
    assert torch.equal(out.sequences, reference)
    assert out.iterations_per_block is not None and max(out.iterations_per_block[0]) <= 3
    config.jacobi_blocks = 2  # multi-block decoding has no per-block iteration counts
    out = model.generate(input_ids=input_ids, generation_config=config, return_dict_in_generate=True)
    assert torch.equal(out.sequences, reference) and out.iterations_per_block is None
    config.jacobi_blocks = 0
    with pytest.raises(ValueError, match="jacobi_blocks"):
        model.generate(input_ids=input_ids, generation_config=config)


def test_returned_states_form_block_trajectories(model):
    input_ids, attention_mask = random_prompts(2, [5, 7], seed=28)
    reference = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=40, eos_token_id=None
    )
    early_eos = int(reference[0, input_ids.shape[1] + 12])
    for init, eos in (("random", None), (oracle_init(reference, 3), None), ("random", early_eos)):
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=30,
            eos_token_id=eos,
            jacobi_n=8,
            jacobi_init=init,
            jacobi_return_states=True,
            return_dict_in_generate=True,
        )
        prompt = input_ids.shape[1]
        # Blocks are shared by the batch; a row that finished early took part in the first ones only.
        longest = max(out.iterations_per_block, key=len)
        assert len(out.jacobi_states) == len(longest)
        for block, (states, iterations) in enumerate(zip(out.jacobi_states, longest)):
            assert states.shape[0] == iterations + 1  # one state per iteration, then the fixed point
            start = prompt + block * 8
            # The fixed point is the greedy answer's block, and every state starts with the block's known token.
            assert torch.equal(states[-1], out.sequences[:, start : start + states.shape[2]])
            assert (states[:, :, 0] == out.sequences[:, start]).all()
            assert states.shape[2] == 8 or block == len(out.jacobi_states) - 1


def test_an_enabled_model_pickles_and_torch_saves(fresh_llama):
    """`enable_jacobi` makes a class under the base's name; pickling goes through the base and re-enables it."""
    import io
    import pickle

    model = fresh_llama()
    input_ids, _ = random_prompts(1, [5], seed=29)
    expected = model.generate(input_ids=input_ids, max_new_tokens=8, jacobi_n=4)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for copy_ in (pickle.loads(pickle.dumps(model)), torch.load(buffer, weights_only=False)):
        assert type(copy_) is type(model)
        assert torch.equal(copy_.generate(input_ids=input_ids, max_new_tokens=8, jacobi_n=4), expected)
