"""Lossless Jacobi decoding (CLLM, arXiv 2403.00835) for transformers' `custom_generate`, made by hf_cllm.

This file is `custom_generate/generate.py` of a model or decoder repo; beside it, `decoding.py` (the decoding loop),
`verify.py` (what a forward pass confirms), `windows.py` (what each window holds) and `routing.py` (what `jacobi_n`
means) are verbatim copies of hf_cllm's modules, so the repo runs with transformers alone. Two ways in:

    model = AutoModelForCausalLM.from_pretrained(cllm_repo, trust_remote_code=True)
    model.generate(**inputs, max_new_tokens=256)              # Jacobi with the repo's jacobi_n, identical to greedy

    model.generate(**inputs, custom_generate=decoder_repo, trust_remote_code=True, jacobi_n=16)   # any model

Extra arguments: `jacobi_n` (block size, or "auto"), `jacobi_init` ("random" | "pad" | "ngram" | callable),
`jacobi_seed`, `jacobi_return_states`, `jacobi_max_n` and `jacobi_costs` (for "auto"), `jacobi_blocks` (blocks in
flight at once), `jacobi_progress` ("row": each row of a batch at its own pace, or "shared"), `jacobi_width` (every
decoding forward padded to this many tokens; the default with a static cache). With
`return_dict_in_generate=True` the output also has `num_forward_passes`, `num_new_tokens`, `tokens_per_forward` and
`iterations_per_block`.
"""

import functools

from transformers import GenerationMixin

from .decoding import DEFAULT_JACOBI_N, resolve_jacobi_n
from .routing import route_generate


def generate(*args, model, **kwargs):
    """The entry point transformers calls, with `model` as a keyword (`from_pretrained` binds it)."""
    # Loaded through `custom_generate="<repo>"`, the call may still carry that request: it is this function.
    if isinstance(kwargs.get("custom_generate"), str):
        kwargs.pop("custom_generate")
    kwargs.pop("trust_remote_code", None)
    if resolve_jacobi_n(kwargs.get("jacobi_n"), model.generation_config) is None:
        kwargs["jacobi_n"] = DEFAULT_JACOBI_N  # a plain model that asked for this decoder
    return route_generate(model, functools.partial(GenerationMixin.generate, model), *args, **kwargs)
