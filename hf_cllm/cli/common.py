"""What every subcommand shares: model resolution (`--model`, `--device`, `--dtype`, `--threads`, `--compile`) and
errors."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..assets import EMBEDDED_MODEL_NAME, EmbeddedModelMissing, embedded_model_dir


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def block_size(text: str) -> int | str:
    """`--jacobi-n`: a positive integer, or "auto"."""
    if text == "auto":
        return text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f'must be a positive integer or "auto", got {text!r}') from None


DTYPE_HELP = (
    "auto (default): bfloat16 where the device computes it natively (a GPU with bf16, a CPU with AVX512-BF16 or "
    "AMX), float32 elsewhere; float32 keeps Jacobi output token-identical to stock greedy decoding"
)


def add_model_arguments(parser: argparse.ArgumentParser, compile: bool = False) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default=EMBEDDED_MODEL_NAME,
        help=f"Hub id, local model folder, or {EMBEDDED_MODEL_NAME!r}, the embedded default (works offline)",
    )
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")
    group.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"], help=DTYPE_HELP)
    group.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch (default: torch's)")
    if compile:
        group.add_argument(
            "--compile",
            action="store_true",
            help="compile decoding: a static cache, windows of one width, on a CPU inductor with frozen weights "
            "(the first call compiles, 30-60 s per width on a small CPU)",
        )


def add_sampling_arguments(parser: argparse.ArgumentParser):
    """--temperature, --top-p, --top-k in a group of their own, returned for more."""
    group = parser.add_argument_group("sampling (default: greedy; Jacobi sampling keeps sampling's distribution)")
    group.add_argument("--temperature", type=float, default=None, help="sample at this temperature")
    group.add_argument("--top-p", type=float, default=None, help="nucleus sampling (with --temperature)")
    group.add_argument("--top-k", type=int, default=None, help="top-k sampling (with --temperature)")
    return group


def check_jacobi_blocks(args) -> None:
    """`--jacobi-blocks` keeps fixed blocks in flight: refuse it with `--jacobi-n auto` before loading a model."""
    if args.jacobi_blocks > 1 and args.jacobi_n == "auto":
        raise CLIError("--jacobi-blocks needs an integer --jacobi-n (e.g. --jacobi-n 16), not auto")


def sampling_options(args) -> dict:
    """The `generate` sampling options given on the command line ({} for greedy decoding)."""
    options = {k: v for k, v in dict(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k).items()
               if v is not None}  # fmt: skip
    if options and args.temperature is None:
        raise CLIError("--top-p/--top-k sample: give --temperature too (e.g. --temperature 0.8)")
    return options


def resolve_model_path(name: str) -> str:
    """The embedded name -> its converted folder; a local folder -> itself; anything else is a Hub id."""
    if name == EMBEDDED_MODEL_NAME:
        try:
            return str(embedded_model_dir())
        except EmbeddedModelMissing as missing:
            raise CLIError(str(missing)) from None
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise CLIError(f"--model {name}: this folder holds no config.json, so it is not a transformers model")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise CLIError(f"--model {name}: no such folder")
    return name


def resolve_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise CLIError(f"--device {device}: not a device; use cpu, cuda, cuda:N or auto") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {device}: CUDA is not available on this machine; use --device cpu (or auto)")
    return resolved


def load_model_and_tokenizer(args):
    """Load `args.model` with Jacobi decoding enabled, on `args.device` in `args.dtype`, plus its tokenizer."""
    import torch
    from transformers import AutoTokenizer

    from ..fast import resolve_dtype
    from ..modeling import AutoCLLMForCausalLM

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    path = resolve_model_path(args.model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoCLLMForCausalLM.from_pretrained(path, dtype=resolve_dtype(args.dtype, device))
    except OSError as error:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
        hint = " The Hub is offline here (HF_HUB_OFFLINE=1)." if offline else ""
        raise CLIError(
            f"--model {args.model}: could not load it ({str(error).splitlines()[0]}).{hint} Pass a local model "
            f"folder, a Hub id, or {EMBEDDED_MODEL_NAME!r}."
        ) from None
    return model.to(device).eval(), tokenizer


def decoding_options(args, model) -> dict:
    """`generate` options of `--compile`: a static cache and `hf_cllm.fast.compile_config` ({} without it)."""
    if not getattr(args, "compile", False):
        return {}
    from ..fast import compile_config

    return {"cache_implementation": "static", "compile_config": compile_config(model.device)}


def encode_prompt(tokenizer, text: str, chat: bool, device):
    """Token ids of one prompt, through the chat template when asked (and refused when there is none)."""
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise CLIError("--chat: this model's tokenizer has no chat template; drop --chat to use the raw prompt")
        inputs = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
    else:
        inputs = tokenizer(text, return_tensors="pt")
    return {key: value.to(device) for key, value in inputs.items()}


def end_processes() -> None:
    """After a successful multi-process run (`accelerate launch`, torchrun), wait for every process, then destroy the
    process group. Left alive, gloo's worker threads meet interpreter shutdown and now and then abort a process
    ("terminate called without an active exception", SIGABRT) after its work is saved; destroyed without the barrier
    while a peer still works, they did so in 4 of 12 two-process DDP runs here (0 of 12 with it). Not called on
    failure: a peer may be waiting. torch's own barrier, not accelerate's `PartialState.wait_for_everyone()`: that
    one passes `device_ids` for DeepSpeed, and with it one of 3 ZeRO-3 runs aborted here (0 of 8 with this)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
