"""hf_cllm: Consistency LLMs and lossless Jacobi decoding on the Hugging Face stack.

Names are imported lazily, so `import hf_cllm` stays cheap (no torch/transformers until a name is used).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING


__version__ = "0.1.0.dev0"

_LAZY = {
    "decoding": ["JacobiGenerateOutput", "jacobi_generate", "DEFAULT_JACOBI_N"],
    "collection": ["collect_trajectories"],
    "trajectories": ["load_trajectories"],
    "config": ["CLLMConfig"],
    "trainer": ["CLLMTrainer", "JacobiSpeedCallback"],
    "packing": ["JacobiCollator", "PackingOptions"],
    "hub": ["push_model", "push_decoder", "push_trajectories", "write_custom_generate"],
    "modeling": ["AutoCLLMForCausalLM", "JacobiGenerationMixin", "enable_jacobi", "set_default_jacobi_n"],
}
_NAME_TO_MODULE = {name: module for module, names in _LAZY.items() for name in names}
__all__ = sorted(_NAME_TO_MODULE)

if TYPE_CHECKING:
    from .collection import collect_trajectories
    from .config import CLLMConfig
    from .decoding import DEFAULT_JACOBI_N, JacobiGenerateOutput, jacobi_generate
    from .hub import push_decoder, push_model, push_trajectories, write_custom_generate
    from .modeling import AutoCLLMForCausalLM, JacobiGenerationMixin, enable_jacobi, set_default_jacobi_n
    from .packing import JacobiCollator, PackingOptions
    from .trainer import CLLMTrainer, JacobiSpeedCallback
    from .trajectories import load_trajectories


def __getattr__(name: str):
    if name not in _NAME_TO_MODULE:
        raise AttributeError(f"module 'hf_cllm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_NAME_TO_MODULE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
