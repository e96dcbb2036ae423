"""`model.generate(..., jacobi_n=16)` on any decoder-only transformers model.

[`JacobiGenerationMixin`] overrides `generate` only to route a `jacobi_n` request through `custom_generate`, so all of
stock `generate`'s preparation (generation config, logits processors, stopping criteria, cache, streamer) stays in
charge. [`enable_jacobi`] mixes it into an already loaded model; [`AutoCLLMForCausalLM`] loads one that way.
"""

from __future__ import annotations

import functools

from transformers import AutoModelForCausalLM, GenerationMixin

from .decoding import validate_jacobi_n
from .hub import push_model, write_custom_generate
from .routing import route_generate


class JacobiGenerationMixin:
    """Adds `jacobi_n` (and `jacobi_init`, `jacobi_seed`, ..., see `decoding.JACOBI_KWARGS`) to `generate`;
    `jacobi_n=None` is stock `generate`. See `hf_cllm.routing.route_generate` for how a call is routed.

    `save_pretrained` also writes the `custom_generate/` folder, so the saved model Jacobi-decodes for users who only
    have transformers (`from_pretrained(folder, trust_remote_code=True)`); `push_to_hub` uploads it with a model card.
    """

    def generate(self, inputs=None, generation_config=None, **kwargs):
        return route_generate(self, super().generate, inputs, generation_config, **kwargs)

    def __reduce_ex__(self, protocol):
        """Pickle (and `torch.save`) as the base class, re-enabled on load: the class `enable_jacobi` makes shares
        the base's name, so pickle cannot find it by name."""
        reduced = super().__reduce_ex__(protocol)
        base = type(self).__dict__.get("_jacobi_base")  # set only on the classes `enable_jacobi` makes
        if base is None:
            return reduced
        function, arguments, *rest = reduced
        arguments = tuple(base if argument is type(self) else argument for argument in arguments)
        return (_rebuild_with_jacobi, (function, arguments), *rest)

    def save_pretrained(self, save_directory, *args, **kwargs):
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            write_custom_generate(save_directory)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        jacobi_n: int | None = None,
        **kwargs,
    ):
        """Save to a temporary folder (weights, config, `custom_generate/`) and upload it with a model card in one
        commit; see `hf_cllm.hub.push_model`. `jacobi_n` is needed when the model has none in its generation config."""
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, **kwargs)
            return push_model(
                folder,
                repo_id,
                commit_message=commit_message,
                private=private,
                token=token,
                revision=revision,
                create_pr=create_pr,
                jacobi_n=jacobi_n,
            )


def _rebuild_with_jacobi(function, arguments):
    """Unpickle: build the base-class object as pickle would, then give it Jacobi decoding again."""
    model = function(*arguments)
    model.__class__ = _jacobi_class(type(model))
    return model


@functools.cache
def _jacobi_class(base: type) -> type:
    """`base` with Jacobi `generate`. It keeps the base's name, so `save_pretrained` writes the usual architecture and
    the checkpoint loads anywhere as a plain model."""
    namespace = {"__module__": base.__module__, "__doc__": base.__doc__, "_jacobi_base": base}
    return type(base.__name__, (JacobiGenerationMixin, base), namespace)


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


def eos_token_ids(model) -> list[int]:
    """The model's EOS ids as a list (a generation config holds one id, a list, or none)."""
    eos = model.generation_config.eos_token_id
    return [eos] if isinstance(eos, int) else list(eos or [])


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
