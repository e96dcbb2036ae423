"""Generate from one prompt with Jacobi decoding, streaming the text as blocks converge, then the statistics."""

from __future__ import annotations

import sys
import time

from .common import (
    CLIError,
    add_model_arguments,
    add_sampling_arguments,
    block_size,
    check_jacobi_blocks,
    decoding_options,
    encode_prompt,
    load_model_and_tokenizer,
    positive_int,
    sampling_options,
)


HELP = "generate from your own prompt with Jacobi decoding (streamed), then print the statistics"


def add_arguments(parser) -> None:
    add_model_arguments(parser, compile=True)
    parser.add_argument("--prompt", required=True, help="the prompt text")
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    parser.add_argument(
        "--jacobi-n", type=block_size, default=16, help='block size n (1: plain greedy), or "auto" (adaptive)'
    )
    parser.add_argument("--jacobi-init", default="random", choices=["random", "pad", "ngram"], help="initial guesses")
    parser.add_argument(
        "--jacobi-blocks", type=positive_int, default=1, help="blocks in flight at once (with an integer --jacobi-n)"
    )
    parser.add_argument("--max-new-tokens", type=positive_int, default=256)
    sampling = add_sampling_arguments(parser)
    sampling.add_argument("--seed", type=int, default=None, help="seed of the sampling (repeatable output)")


def run(args) -> int:
    from transformers import TextStreamer

    if not args.prompt.strip():
        raise CLIError("--prompt is empty; give the text to continue")
    check_jacobi_blocks(args)
    sampling = sampling_options(args)
    model, tokenizer = load_model_and_tokenizer(args)
    inputs = encode_prompt(tokenizer, args.prompt, args.chat, model.device)
    if args.seed is not None:
        import torch

        torch.manual_seed(args.seed)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    if args.compile:
        print("[--compile: the first call compiles each window width, 30-60 s each on a small CPU]", file=sys.stderr)
    start = time.perf_counter()
    out = model.generate(
        **inputs,
        max_new_tokens=args.max_new_tokens,
        jacobi_n=args.jacobi_n,
        jacobi_init=args.jacobi_init,
        jacobi_blocks=args.jacobi_blocks,
        streamer=streamer,
        return_dict_in_generate=True,
        do_sample=bool(sampling),
        **sampling,
        **decoding_options(args, model),
    )
    seconds = time.perf_counter() - start
    tokens, forwards = int(out.num_new_tokens[0]), int(out.num_forward_passes[0])
    blocks = out.iterations_per_block  # None with --jacobi-n auto or --jacobi-blocks > 1
    blocks = f"; iterations per block of {args.jacobi_n}: {blocks[0]}" if blocks else ""
    print(
        f"\n[{tokens} tokens in {forwards} forward passes: TPF {tokens / forwards:.2f}, "
        f"{tokens / seconds:.1f} tokens/s{blocks}]",
        file=sys.stderr,
    )
    return 0
