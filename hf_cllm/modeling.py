"""`model.generate(..., jacobi_n=16)` on any decoder-only transformers model.

[`JacobiGenerationMixin`] overrides `generate` only to route a `jacobi_n` request through `custom_generate`, so all of
stock `generate`'s preparation (generation config, logits processors, stopping criteria, cache, streamer) stays in
charge. [`enable_jacobi`] mixes it into an already loaded model; [`AutoCLLMForCausalLM`] loads one that way.
"""

from __future__ import annotations

import contextlib
import copy
import functools

from transformers import AutoModelForCausalLM, GenerationConfig, GenerationMixin
from transformers.generation import StoppingCriteriaList, StopStringCriteria

from .decoding import jacobi_generate, validate_jacobi_n


class JacobiGenerationMixin:
    """Adds `jacobi_n` (and `jacobi_init`, `jacobi_seed`) to `generate`; `jacobi_n=None` is stock `generate`.

    `jacobi_n` may also come from `model.generation_config.jacobi_n` (a CLLM saved with hf_cllm carries it). A block
    size that comes from the config gives way to sampling, beam search and assisted decoding when those are asked for;
    one passed explicitly to `generate` is checked and refused with them.
    """

    def generate(self, inputs=None, generation_config=None, *, jacobi_n=None, streamer=None, **kwargs):
        jacobi_kwargs = {
            key: kwargs.pop(key) for key in ("jacobi_init", "jacobi_seed", "jacobi_return_states") if key in kwargs
        }
        if kwargs.get("custom_generate") is not None:  # the caller picked the decoding method: pass everything on
            if jacobi_n is not None:
                kwargs["jacobi_n"] = jacobi_n
            if kwargs["custom_generate"] is jacobi_generate and streamer is not None:
                kwargs["custom_generate"] = functools.partial(jacobi_generate, streamer=streamer)
            return super().generate(inputs, generation_config, streamer=streamer, **jacobi_kwargs, **kwargs)
        config = generation_config if generation_config is not None else self.generation_config
        explicit = jacobi_n is not None
        jacobi_n = jacobi_n if explicit else getattr(config, "jacobi_n", None)
        if jacobi_n is None or (not explicit and _asks_for_another_mode(config, kwargs)):
            if jacobi_kwargs and jacobi_n is None:
                raise ValueError(f"{sorted(jacobi_kwargs)} only apply with `jacobi_n`: pass `jacobi_n` too.")
            return super().generate(inputs, generation_config, streamer=streamer, **kwargs)
        validate_jacobi_n(jacobi_n)
        if kwargs.get("assistant_model") is not None:
            raise ValueError("`jacobi_n` cannot be combined with `assistant_model`: choose one of the two.")
        if kwargs.get("synced_gpus"):
            raise ValueError("`synced_gpus=True` is not supported with `jacobi_n` yet; drop one of the two.")
        stop_strings = kwargs.pop("stop_strings", None) or getattr(config, "stop_strings", None)
        if stop_strings:
            # `generate` keeps the tokenizer from a `custom_generate` callable, so build the criterion here.
            stop = StopStringCriteria(kwargs.pop("tokenizer", None) or _missing_tokenizer(), stop_strings)
            kwargs["stopping_criteria"] = StoppingCriteriaList([*(kwargs.get("stopping_criteria") or []), stop])
            if generation_config is not None and generation_config.stop_strings:
                generation_config = copy.deepcopy(generation_config)
                generation_config.stop_strings = None
        # Likewise the streamer: bind it.
        decoder = functools.partial(jacobi_generate, streamer=streamer) if streamer is not None else jacobi_generate
        with _stop_strings_handled(self, bool(stop_strings)):
            return super().generate(
                inputs,
                generation_config,
                streamer=streamer,
                custom_generate=decoder,
                jacobi_n=jacobi_n,
                **jacobi_kwargs,
                **kwargs,
            )


@contextlib.contextmanager
def _stop_strings_handled(model, handled: bool):
    """Hide the model's own `stop_strings` from `generate` while our criterion stands in for them (`generate` fills
    unset values from `model.generation_config`, and would ask for the tokenizer it does not pass on)."""
    saved = model.generation_config.stop_strings
    if handled:
        model.generation_config.stop_strings = None
    try:
        yield
    finally:
        model.generation_config.stop_strings = saved


def _missing_tokenizer():
    raise ValueError("`stop_strings` need the model's tokenizer: pass `tokenizer=` to `generate` as well.")


def _asks_for_another_mode(config: GenerationConfig, kwargs: dict) -> bool:
    """Whether this call wants sampling, beams or assisted decoding rather than greedy decoding."""
    setting = lambda name: kwargs.get(name, getattr(config, name, None))  # noqa: E731
    return bool(
        setting("do_sample")
        or (setting("num_beams") or 1) > 1
        or setting("prompt_lookup_num_tokens") is not None
        or setting("assistant_early_exit") is not None
        or kwargs.get("assistant_model") is not None
    )


@functools.cache
def _jacobi_class(base: type) -> type:
    """`base` with Jacobi `generate`. It keeps the base's name, so `save_pretrained` writes the usual architecture and
    the checkpoint loads anywhere as a plain model."""
    return type(base.__name__, (JacobiGenerationMixin, base), {"__module__": base.__module__, "__doc__": base.__doc__})


def enable_jacobi(model, jacobi_n: int | None = None):
    """Give an already loaded model Jacobi decoding, in place, and return it.

    With `jacobi_n`, the block size becomes the model's default (`model.generation_config.jacobi_n`), which
    `save_pretrained` writes and `from_pretrained` reads back.
    """
    if not isinstance(model, GenerationMixin) or getattr(model.config, "is_encoder_decoder", False):
        raise ValueError(
            f"`enable_jacobi` needs a decoder-only generative transformers model, got {type(model).__name__}."
        )
    if not isinstance(model, JacobiGenerationMixin):
        model.__class__ = _jacobi_class(type(model))
    if jacobi_n is not None:
        set_default_jacobi_n(model, jacobi_n)
    return model


def set_default_jacobi_n(model, jacobi_n: int) -> None:
    """Store the block size in the generation config so that it survives save/load."""
    model.generation_config.jacobi_n = validate_jacobi_n(jacobi_n)
    # A config derived from the model config drops custom keys on reload; this one is ours now.
    model.generation_config._from_model_config = False


class AutoCLLMForCausalLM:
    """`AutoModelForCausalLM` whose models decode with `generate(..., jacobi_n=N)`.

    >>> model = AutoCLLMForCausalLM.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")
    >>> out = model.generate(**inputs, jacobi_n=16, max_new_tokens=256, return_dict_in_generate=True)
    >>> out.tokens_per_forward
    """

    def __init__(self, *args, **kwargs):
        raise OSError("Use `AutoCLLMForCausalLM.from_pretrained(...)` or `AutoCLLMForCausalLM.from_config(...)`.")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, jacobi_n: int | None = None, **kwargs):
        model = AutoModelForCausalLM.from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        return enable_jacobi(model, jacobi_n)

    @classmethod
    def from_config(cls, config, *, jacobi_n: int | None = None, **kwargs):
        return enable_jacobi(AutoModelForCausalLM.from_config(config, **kwargs), jacobi_n)
