"""Serve a model with Jacobi decoding behind an OpenAI-compatible API: `transformers serve` (its /v1/completions,
/v1/chat/completions and /v1/responses, streaming or not) with hf_cllm's `custom_generate/` as the model's generate.

    pip install "hf-cllm[serve]"
    hf-cllm serve                                   # the embedded SmolLM2-135M-Instruct at http://localhost:8000/v1
    hf-cllm serve path/to/cllm --port 8001          # a CLLM saved by hf-cllm train: its own jacobi_n
    hf-cllm serve HuggingFaceTB/SmolLM2-135M-Instruct --jacobi-n 16

Requests name the model as given here (a local folder by its folder name). Per request, the `generation_config`
field (a JSON string; with the openai client, `extra_body={"generation_config": json.dumps({...})}`) sets
`jacobi_n` ("auto" or a block size; 1 is plain greedy), `jacobi_blocks` and the rest of generate's options; the
server log gives every request's TPF. Requests are decoded one at a time; docs/serving.md says what is exact.
"""

from __future__ import annotations

import sys

from .common import DTYPE_HELP, CLIError, block_size, positive_int, resolve_device, resolve_model_path


HELP = "serve a model with Jacobi decoding on an OpenAI-compatible endpoint (transformers serve)"


def add_arguments(parser) -> None:
    from ..assets import EMBEDDED_MODEL_NAME

    parser.add_argument(
        "model", nargs="?", default=EMBEDDED_MODEL_NAME,
        help=f"a model folder (a CLLM saved by hf-cllm or any causal LM), a Hub id, or {EMBEDDED_MODEL_NAME!r} "
        "(the default, works offline)",
    )  # fmt: skip
    parser.add_argument("--host", default="localhost", help="address to listen on (default: localhost)")
    parser.add_argument("--port", type=positive_int, default=8000)
    parser.add_argument(
        "--jacobi-n", type=block_size, default=None,
        help='default block size of requests, or "auto" (default: the model\'s own generation_config.jacobi_n, '
        'else "auto")',
    )  # fmt: skip
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"], help=DTYPE_HELP)
    parser.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument(
        "--continuous-batching", action="store_true",
        help="refused: transformers' continuous batching decodes one token per request per step and cannot run Jacobi",
    )  # fmt: skip
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def run(args) -> int:
    if args.continuous_batching:
        raise CLIError(
            "--continuous-batching: transformers' continuous batching engine takes one token per request per step "
            "and cannot roll back rejected guesses, so it would silently drop Jacobi decoding; leave the flag out "
            "(requests are then decoded one at a time, each with Jacobi)"
        )
    from transformers.utils.import_utils import is_serve_available

    if not is_serve_available():
        raise CLIError('serving needs transformers\' serving extra: pip install "hf-cllm[serve]"')
    import torch

    from ..fast import resolve_dtype
    from ..serving import serve, served_name, serving_folder

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = str(resolve_dtype(args.dtype, device)).removeprefix("torch.")
    name = served_name(args.model)
    try:
        folder = serving_folder(resolve_model_path(args.model), args.jacobi_n, name=name)
    except (OSError, ValueError) as error:
        raise CLIError(f"{args.model}: could not prepare it for serving ({str(error).splitlines()[0]})") from None
    from transformers import GenerationConfig

    jacobi_n = GenerationConfig.from_pretrained(folder).jacobi_n
    print(
        f"hf-cllm serve: {name} with Jacobi decoding (jacobi_n={jacobi_n}, {dtype}, {device}) at "
        f"http://{args.host}:{args.port}/v1 — OpenAI-compatible; requests use model={name!r}",
        file=sys.stderr,
        flush=True,
    )
    try:
        serve(folder, name, host=args.host, port=args.port, dtype=dtype, device=str(device), log_level=args.log_level)
    except KeyboardInterrupt:  # uvicorn shut down gracefully on Ctrl-C, then passed the signal on
        print("hf-cllm serve: stopped", file=sys.stderr)
    return 0
