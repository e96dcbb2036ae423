"""Bad input gets a ValueError that names the argument and the fix."""

import pytest
import torch
import transformers
from tiny import random_prompts
from transformers import AutoModelForCausalLM

from hf_cllm import AutoCLLMForCausalLM, enable_jacobi, jacobi_generate


@pytest.fixture
def model(tiny_config):
    torch.manual_seed(0)
    return enable_jacobi(AutoModelForCausalLM.from_config(tiny_config("llama"))).eval()


@pytest.fixture
def input_ids():
    return random_prompts(1, [5])[0]


@pytest.mark.parametrize("bad", [0, -3, 2.5, "16", True, "Auto"])
def test_jacobi_n_must_be_a_positive_int(model, input_ids, bad):
    with pytest.raises(ValueError, match=r"`jacobi_n` must be a positive integer.*or \"auto\".*jacobi_n=16"):
        model.generate(input_ids=input_ids, max_new_tokens=4, jacobi_n=bad)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(jacobi_return_states=True, return_dict_in_generate=True), r"jacobi_return_states.*integer `jacobi_n`"),
        (dict(jacobi_max_n=4, jacobi_costs=[1.0, 1.2]), r"`jacobi_costs` needs one relative cost per window length"),
        (dict(jacobi_max_n=0), r"`jacobi_max_n` must be a positive integer.*jacobi_max_n=16"),
        (dict(jacobi_max_n=3, jacobi_costs=[0.0, 0.0, 0.0]), r"`jacobi_costs` must be positive finite numbers"),
        (dict(jacobi_max_n=3, jacobi_costs=[1.0, -1.0, 2.0]), r"`jacobi_costs` must be positive finite numbers"),
        (dict(jacobi_max_n=3, jacobi_costs=[1.0, float("nan"), 2.0]), r"`jacobi_costs` must be positive finite"),
        (dict(jacobi_max_n=3, jacobi_costs=[1.0, 3.0, 2.0]), r"`jacobi_costs` must not decrease"),
    ],
)
def test_bad_auto_settings_are_refused(model, input_ids, kwargs, message):
    with pytest.raises(ValueError, match=message):
        model.generate(input_ids=input_ids, max_new_tokens=4, jacobi_n="auto", **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_beams=2), r"`num_beams=1`"),
        (dict(prompt_lookup_num_tokens=3), r"assisted decoding"),
        (dict(use_cache=False), r"use_cache=False"),
        (dict(return_dict_in_generate=True, output_attentions=True), r"output_attentions"),
        (dict(jacobi_init="zeros"), r"`jacobi_init` must be one of"),
        (dict(jacobi_seed=None), r"`jacobi_seed` must be an integer.*got None"),
        (dict(jacobi_seed="x"), r"`jacobi_seed` must be an integer.*got 'x'"),
        (dict(jacobi_init=lambda ids, k: torch.full((ids.shape[0], k), 10**6)), r"ids from 1000000.*\[0, 320\)"),
        (dict(jacobi_init=lambda ids, k: torch.zeros(ids.shape[0], k + 1)), r"shape \(1, 4\).*= \(1, 3\)"),
        (dict(guidance_scale=1.5), r"`guidance_scale`"),
    ],
)
def test_unsupported_modes_are_refused(model, input_ids, kwargs, message):
    with pytest.raises(ValueError, match=message):
        model.generate(input_ids=input_ids, max_new_tokens=4, jacobi_n=4, **kwargs)


def test_assistant_model_is_refused(model, input_ids, tiny_model):
    with pytest.raises(ValueError, match="assistant_model"):
        model.generate(input_ids=input_ids, max_new_tokens=4, jacobi_n=4, assistant_model=tiny_model("llama"))


def test_stop_strings_without_tokenizer(model, input_ids):
    with pytest.raises(ValueError, match="tokenizer="):
        model.generate(input_ids=input_ids, max_new_tokens=4, jacobi_n=4, stop_strings=["x"])


def test_jacobi_options_without_jacobi_n(model, input_ids):
    with pytest.raises(ValueError, match="pass `jacobi_n` too"):
        model.generate(input_ids=input_ids, max_new_tokens=4, jacobi_init="pad")


def test_encoder_decoder_models_are_refused():
    config = transformers.T5Config(
        vocab_size=64, d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8, decoder_start_token_id=0
    )
    t5 = transformers.T5ForConditionalGeneration(config).eval()
    with pytest.raises(ValueError, match="decoder-only"):
        enable_jacobi(t5)
    with pytest.raises(ValueError, match="decoder-only"):
        t5.generate(input_ids=torch.ones(1, 3, dtype=torch.long), custom_generate=jacobi_generate, jacobi_n=4)


def test_a_cache_that_cannot_roll_back_is_refused(model, input_ids, monkeypatch):
    monkeypatch.setattr(transformers.DynamicCache, "is_croppable", property(lambda self: False))
    with pytest.raises(ValueError, match="roll back rejected guesses"):
        model.generate(input_ids=input_ids, max_new_tokens=8, jacobi_n=4)


def test_auto_class_is_not_instantiated_directly():
    with pytest.raises(OSError, match="from_pretrained"):
        AutoCLLMForCausalLM()


def test_inputs_embeds_without_input_ids_is_refused(model, input_ids):
    embeds = model.get_input_embeddings()(input_ids)
    with pytest.raises(ValueError, match="needs `input_ids`"):
        model.generate(inputs_embeds=embeds, max_new_tokens=4, jacobi_n=4)


def test_stop_strings_through_a_plain_callable_say_how(input_ids, tiny_model, tiny_tokenizer):
    """`generate` drops the tokenizer before a `custom_generate` callable runs; the error gives both fixes."""
    with pytest.raises(ValueError, match=r"stopping_criteria=StoppingCriteriaList.*enable_jacobi"):
        tiny_model("llama").generate(input_ids=input_ids, max_new_tokens=4, custom_generate=jacobi_generate,
                                     jacobi_n=4, stop_strings=["x"], tokenizer=tiny_tokenizer())  # fmt: skip
