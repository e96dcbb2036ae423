"""Jacobi sampling has exactly the distribution of ordinary sampling.

On a tiny model with an 8-token vocabulary, every 3-token continuation is enumerable: its exact probability comes
from the model's own logits, processed and warped as `generate` does. 20,000 samples from Jacobi sampling must fit
those probabilities (chi-square); so must stock sampling (the control), and a deliberately wrong acceptance rule
must not (the test has power).
"""

import itertools

import pytest
import torch
import transformers
from transformers import GenerationConfig, LogitsProcessorList

from hf_cllm import jacobi_generate
from hf_cllm.verify import GreedyAcceptance, SamplingAcceptance


VOCAB, PAD, EOS, STEPS, SAMPLES = 8, 0, 1, 3, 20_000
PROMPTS = ([3, 5, 2, 7, 4], [6, 2])


@pytest.fixture(scope="module")
def peaked_model():
    """A tiny Llama whose next-token distributions are far from uniform (scaled output layer)."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, pad_token_id=PAD, bos_token_id=2, eos_token_id=EOS,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    return model


def exact_distribution(model, prompt, settings, eos=None):
    """{continuation: probability} over every `STEPS`-token continuation of `prompt` (after EOS: padding)."""
    config = GenerationConfig(**settings, do_sample=True)
    processors = model._get_logits_processor(
        generation_config=config, input_ids_seq_length=len(prompt), encoder_input_ids=torch.tensor([prompt]),
        logits_processor=LogitsProcessorList(), device="cpu", model_kwargs={},
    )  # fmt: skip
    probabilities = {(): 1.0}
    for _ in range(STEPS):
        grown = {}
        for prefix, mass in probabilities.items():
            if eos is not None and eos in prefix:
                grown[prefix + (PAD,)] = mass
                continue
            ids = torch.tensor([prompt + list(prefix)])
            with torch.no_grad():
                scores = processors(ids, model(input_ids=ids).logits[:, -1].float())
            for token, p in enumerate(torch.softmax(scores, -1)[0].tolist()):
                if p > 0:
                    grown[prefix + (token,)] = mass * p
        probabilities = grown
    return probabilities


def chi_square_p_value(counts: dict, probabilities: dict, total: int) -> float:
    """p-value of the counts under the probabilities; outcomes expected < 5 times are pooled; an outcome of
    probability zero that occurs gives 0."""
    if any(outcome not in probabilities for outcome in counts):
        return 0.0
    cells, pooled_expected, pooled_observed = [], 0.0, 0
    for outcome, p in probabilities.items():
        expected, observed = p * total, counts.get(outcome, 0)
        if expected < 5:
            pooled_expected, pooled_observed = pooled_expected + expected, pooled_observed + observed
        else:
            cells.append((observed, expected))
    if pooled_expected > 0:
        cells.append((pooled_observed, pooled_expected))
    statistic = sum((o - e) ** 2 / e for o, e in cells)
    dof = len(cells) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(statistic / 2)))


def sample_counts(model, prompts, settings, seed, **jacobi):
    """Counts of the continuations of each prompt over `SAMPLES` samples (rows of one left-padded batch)."""
    torch.manual_seed(seed)
    width = max(map(len, prompts))
    rows = [prompts[i % len(prompts)] for i in range(SAMPLES * len(prompts))]
    input_ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows])
    attention_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    out = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=STEPS, do_sample=True, pad_token_id=PAD,
        return_dict_in_generate=True, **settings, **jacobi,
    )  # fmt: skip
    counts = [{} for _ in prompts]
    for row, continuation in enumerate(map(tuple, out.sequences[:, width:].tolist())):
        counts[row % len(prompts)][continuation] = counts[row % len(prompts)].get(continuation, 0) + 1
    return counts


SETTINGS = {
    "temperature": (dict(temperature=0.7, top_k=0, eos_token_id=None), (PROMPTS[0],), 2),
    "top-k + top-p": (dict(temperature=1.0, top_k=5, top_p=0.8, eos_token_id=None), (PROMPTS[0],), 8),
    "repetition penalty": (
        dict(temperature=1.0, top_k=0, repetition_penalty=1.8, eos_token_id=None),
        (PROMPTS[0],),
        8,
    ),
    "batch 2, padding, EOS": (dict(temperature=1.0, top_k=0, eos_token_id=EOS), PROMPTS, 4),
}


@pytest.mark.parametrize("progress", ["row", "shared"])
@pytest.mark.parametrize("name", list(SETTINGS))
def test_jacobi_sampling_has_the_exact_distribution(peaked_model, name, progress):
    settings, prompts, jacobi_n = SETTINGS[name]
    eos = settings.get("eos_token_id")
    exact = [exact_distribution(peaked_model, list(p), {k: v for k, v in settings.items() if k != "eos_token_id"},
                                eos) for p in prompts]  # fmt: skip
    stock = sample_counts(peaked_model, prompts, settings, seed=1)
    jacobi = sample_counts(peaked_model, prompts, settings, seed=2, custom_generate=jacobi_generate, jacobi_n=jacobi_n,
                           jacobi_progress=progress)  # the rows of one batch: per-row or shared progress
    for probabilities, control, counts in zip(exact, stock, jacobi):
        assert chi_square_p_value(control, probabilities, SAMPLES) > 1e-3  # the control: stock sampling fits
        assert chi_square_p_value(counts, probabilities, SAMPLES) > 1e-3, name


def test_the_rule_commits_each_position_with_its_exact_distribution():
    """The rule on one window (rows of a large batch commit one token per forward, so the end-to-end test rarely
    commits two): over 20,000 rows, the token at position 0 has distribution p0; given that position 0 accepted the
    guess, the token at position 1 has distribution p1 — whether it is the accepted guess, the residual draw after a
    rejection, or (for the last position) the bonus draw."""
    torch.manual_seed(0)
    rule = SamplingAcceptance(LogitsProcessorList())
    logits = torch.randn(3, VOCAB) * 1.5  # positions 0, 1, 2 of one window
    guesses = logits.argmax(-1)[:2]  # likely guesses, so position 1 is reached often
    window = torch.cat([torch.tensor([4]), guesses]).expand(SAMPLES, 3)
    prediction = rule.predict(logits.expand(SAMPLES, 3, VOCAB), window[:, :1], window)
    matches = rule.accepted_guesses(window, prediction)
    p = torch.softmax(logits, -1)
    first = prediction.tokens[:, 0].bincount(minlength=VOCAB).tolist()
    assert chi_square_p_value(dict(enumerate(first)), dict(enumerate(p[0].tolist())), SAMPLES) > 1e-3
    reached = matches >= 1  # the guess at position 0 was accepted
    second = prediction.tokens[reached, 1].bincount(minlength=VOCAB).tolist()
    assert int(reached.sum()) > 5000
    assert chi_square_p_value(dict(enumerate(second)), dict(enumerate(p[1].tolist())), int(reached.sum())) > 1e-3
    assert torch.equal(reached, prediction.tokens[:, 0] == guesses[0])  # accepted exactly when the token is the guess


def test_a_wrong_acceptance_rule_fails_the_test(peaked_model, monkeypatch):
    """At a rejection, drawing from p itself instead of the residual (p without the guess) over-weights guesses."""
    settings, prompts, jacobi_n = SETTINGS["temperature"]
    monkeypatch.setattr(SamplingAcceptance, "residual", staticmethod(lambda probs, guesses: probs))
    exact = exact_distribution(peaked_model, list(prompts[0]), {"temperature": 0.7, "top_k": 0})
    (counts,) = sample_counts(peaked_model, prompts, settings, seed=2, custom_generate=jacobi_generate,
                              jacobi_n=jacobi_n)  # fmt: skip
    assert chi_square_p_value(counts, exact, SAMPLES) < 1e-6


def test_the_chi_square_check_is_calibrated():
    """Counts drawn from the probabilities themselves pass; shifted ones fail."""
    torch.manual_seed(0)
    outcomes = list(itertools.product(range(3), repeat=2))
    p = torch.softmax(torch.randn(len(outcomes)), 0)
    probabilities = dict(zip(outcomes, p.tolist()))
    drawn = torch.multinomial(p, SAMPLES, replacement=True).bincount(minlength=len(outcomes)).tolist()
    assert chi_square_p_value(dict(zip(outcomes, drawn)), probabilities, SAMPLES) > 1e-3
    shifted = torch.multinomial(torch.softmax(p.log() * 1.1, 0), SAMPLES, replacement=True)
    shifted = shifted.bincount(minlength=len(outcomes)).tolist()
    assert chi_square_p_value(dict(zip(outcomes, shifted)), probabilities, SAMPLES) < 1e-6


def test_sampling_keeps_generate_features(peaked_model):
    """A seed makes it repeatable; num_return_sequences, scores and the streamer work as with stock sampling."""
    from transformers.generation.streamers import BaseStreamer

    class Collect(BaseStreamer):
        def __init__(self):
            self.values = []

        def put(self, value):
            self.values.append(value)

        def end(self):
            pass

    settings = dict(input_ids=torch.tensor([PROMPTS[0]]), max_new_tokens=6, do_sample=True, num_return_sequences=4,
                    eos_token_id=None, pad_token_id=PAD, return_dict_in_generate=True, output_scores=True,
                    custom_generate=jacobi_generate, jacobi_n=4)  # fmt: skip
    torch.manual_seed(3)
    streamer = Collect()
    first = peaked_model.generate(**settings, streamer=streamer)
    torch.manual_seed(3)
    second = peaked_model.generate(**settings)
    assert first.sequences.shape == (4, 5 + 6) and torch.equal(first.sequences, second.sequences)
    assert len({tuple(row) for row in first.sequences.tolist()}) > 1  # four samples, not one repeated
    assert len(first.scores) == 6 and first.scores[0].shape == (4, VOCAB)
    assert torch.equal(torch.cat(streamer.values[1:], dim=-1).reshape(6, 4).T, first.sequences[:, 5:])


def test_warpers_run_once_per_window_with_the_scores_of_a_per_position_run(monkeypatch):
    """Processors that look at the prefix (repetition penalty, min length, no-repeat n-gram) run per position; the
    sampling warpers once for the whole window. The scores equal running the whole list position by position."""
    from transformers.generation import logits_process as lp

    torch.manual_seed(0)
    processors = LogitsProcessorList([
        lp.RepetitionPenaltyLogitsProcessor(1.3), lp.TemperatureLogitsWarper(0.7), lp.TopKLogitsWarper(5),
        lp.MinLengthLogitsProcessor(12, eos_token_id=EOS, device="cpu"), lp.TopPLogitsWarper(0.9),
        lp.NoRepeatNGramLogitsProcessor(2),
    ])  # fmt: skip
    input_ids, window = torch.randint(0, VOCAB, (3, 9)), torch.randint(0, VOCAB, (3, 5))
    logits = torch.randn(3, 5, VOCAB)
    calls = []
    original = lp.TopPLogitsWarper.__call__
    monkeypatch.setattr(
        lp.TopPLogitsWarper, "__call__", lambda self, ids, scores: calls.append(1) or original(self, ids, scores)
    )
    scores, raw = GreedyAcceptance(processors).processed_scores(logits, input_ids, window)
    assert len(calls) == 1 and torch.equal(raw, logits)
    prefixes = torch.cat([input_ids, window[:, 1:]], dim=1)
    expected = torch.stack([processors(prefixes[:, : 9 + i], logits[:, i].clone()) for i in range(5)], dim=1)
    assert torch.equal(scores, expected)
