"""Route a `generate` call to Jacobi decoding or to stock `generate`: what `generate(..., jacobi_n=N)` means.

Shared by `JacobiGenerationMixin.generate` (hf_cllm's models) and by the `custom_generate/` folder hf_cllm writes
beside a saved model, so a user with transformers alone gets the same behaviour. Like `decoding.py`, this module
imports nothing from hf_cllm but `.decoding`: both are copied verbatim into that folder (a test checks they match).
"""

from __future__ import annotations

import contextlib
import copy
import functools

from transformers import GenerationConfig
from transformers.generation import StoppingCriteriaList, StopStringCriteria

from .decoding import (
    DEFAULT_JACOBI_N,
    JACOBI_KWARGS,
    frozen_weights,
    jacobi_generate,
    resolve_jacobi_n,
    reuse_frozen_cache,
)


def route_generate(
    model, stock_generate, inputs=None, generation_config=None, *, jacobi_n=None, streamer=None, **kwargs
):
    """`jacobi_n` (and the rest of `JACOBI_KWARGS`: `jacobi_init`, `jacobi_seed`, ...) on top of `stock_generate`,
    the model's own `generate`; `jacobi_n=None` is stock `generate`.

    `jacobi_n` may also come from the `generation_config` passed, else from `model.generation_config.jacobi_n` (a CLLM
    saved with hf_cllm carries it; as `generate` fills what a passed config leaves unset from the model's). A block
    size that comes from the config gives way to beam search and assisted decoding when those are asked for; one
    passed explicitly is checked and refused with them. Greedy decoding and sampling both go through Jacobi.
    A `compile_config` that asks for frozen weights (`hf_cllm.fast.compile_config`) gets them, Jacobi or not.
    """
    compile_config = kwargs.get("compile_config") or getattr(
        generation_config if generation_config is not None else model.generation_config, "compile_config", None
    )
    with frozen_weights(compile_config):
        return _route(model, stock_generate, inputs, generation_config, jacobi_n=jacobi_n, streamer=streamer, **kwargs)


def _route(model, stock_generate, inputs, generation_config, *, jacobi_n, streamer, **kwargs):
    config = generation_config if generation_config is not None else model.generation_config
    # Jacobi options come as arguments, else from the generation config (a server passes a request's settings so).
    jacobi_kwargs = {key: kwargs.pop(key) if key in kwargs else getattr(config, key) for key in JACOBI_KWARGS
                     if key in kwargs or getattr(config, key, None) is not None}  # fmt: skip
    if kwargs.get("custom_generate") is jacobi_generate:  # Jacobi asked for by name: the same as by `jacobi_n`
        kwargs.pop("custom_generate")
        jacobi_n = resolve_jacobi_n(jacobi_n, config) or DEFAULT_JACOBI_N
    if kwargs.get("custom_generate") is not None:  # the caller picked another decoding method: pass everything on
        if jacobi_n is not None:
            kwargs["jacobi_n"] = jacobi_n
        return stock_generate(inputs, generation_config, streamer=streamer, **jacobi_kwargs, **kwargs)
    explicit = jacobi_n is not None
    jacobi_n = resolve_jacobi_n(jacobi_n, config if hasattr(config, "jacobi_n") else model.generation_config)
    if jacobi_n is None or (not explicit and _asks_for_another_mode(config, kwargs)):
        if jacobi_kwargs and jacobi_n is None:
            raise ValueError(f"{sorted(jacobi_kwargs)} only apply with `jacobi_n`: pass `jacobi_n` too.")
        kwargs = reuse_frozen_cache(model, inputs, generation_config, kwargs)
        return stock_generate(inputs, generation_config, streamer=streamer, **kwargs)
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
    kwargs = reuse_frozen_cache(model, inputs, generation_config, kwargs, _widest_window(jacobi_n, jacobi_kwargs))
    # Likewise the streamer: bind it.
    decoder = functools.partial(jacobi_generate, streamer=streamer) if streamer is not None else jacobi_generate
    with _stop_strings_handled(model, bool(stop_strings)):
        return stock_generate(
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


def _widest_window(jacobi_n, jacobi_kwargs) -> int:
    """The most tokens one decoding forward may compute (0 where the arguments are invalid: refused later)."""
    widths = [jacobi_kwargs.get("jacobi_width"), jacobi_n, jacobi_kwargs.get("jacobi_blocks", 1)]
    if jacobi_n == "auto":
        widths[1:] = [jacobi_kwargs.get("jacobi_max_n", DEFAULT_JACOBI_N), 1]
    if not all(isinstance(width, int) for width in widths[1:]):
        return 0
    return widths[0] if isinstance(widths[0], int) else widths[1] * widths[2]


def _missing_tokenizer():
    raise ValueError("`stop_strings` need the model's tokenizer: pass `tokenizer=` to `generate` as well.")


def _asks_for_another_mode(config: GenerationConfig, kwargs: dict) -> bool:
    """Whether this call wants beams or assisted decoding, which Jacobi decoding cannot do (it samples and decodes
    greedily)."""
    setting = lambda name: kwargs.get(name, getattr(config, name, None))  # noqa: E731
    return bool(
        (setting("num_beams") or 1) > 1
        or setting("prompt_lookup_num_tokens") is not None
        or setting("assistant_early_exit") is not None
        or kwargs.get("assistant_model") is not None
    )
