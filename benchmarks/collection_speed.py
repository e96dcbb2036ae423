"""Trajectory collection throughput: hf_cllm's KV-cached, batched pipeline vs a cache-less batch-1 collector.

    python benchmarks/collection_speed.py --prompts gsm8k_train.jsonl --num-prompts 8 --max-new-tokens 128

The baseline re-implements what the CLLM reference collector does (no KV cache, batch 1: every Jacobi iteration runs
the whole prompt, the previous blocks and the block through the model, all n positions start random, and a block is
done when an iteration changes nothing). Both run in this process on the same prompts; figures are prompts/s and
answer tokens/s.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch
from transformers import AutoTokenizer

from hf_cllm import AutoCLLMForCausalLM
from hf_cllm.assets import embedded_model_dir
from hf_cllm.collection import collect_trajectories
from hf_cllm.modeling import eos_token_ids
from hf_cllm.prompts import load_prompt_rows, tokenize_prompts


@torch.no_grad()
def cacheless_collect(model, prompt_ids: list[int], n: int, max_new_tokens: int, eos_ids: set, generator):
    """The reference's collector for one prompt: returns (answer ids, number of states, forward passes)."""
    sequence, prompt = list(prompt_ids), torch.tensor(prompt_ids)
    states = forwards = 0
    while len(sequence) - len(prompt_ids) < max_new_tokens:
        block = prompt[torch.randint(0, len(prompt), (n,), generator=generator)].tolist()
        while True:
            logits = model(input_ids=torch.tensor([sequence + block])).logits[0, len(sequence) - 1 : -1]
            forwards += 1
            updated = logits.argmax(-1).tolist()
            if updated == block:
                break
            block, states = updated, states + 1
        sequence += block
        if eos_ids & set(block):
            break
    answer = sequence[len(prompt_ids) :][:max_new_tokens]
    for position, token in enumerate(answer):
        if token in eos_ids:
            return answer[: position + 1], states, forwards
    return answer, states, forwards


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--prompts", required=True, help="jsonl with a 'question' field (GSM8K)")
    parser.add_argument("--num-prompts", type=int, default=8)
    parser.add_argument("--jacobi-n", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    path = args.model or str(embedded_model_dir())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoCLLMForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    eos_ids = set(eos_token_ids(model))
    rows = load_prompt_rows(args.prompts, limit=args.num_prompts)
    prompt_ids, _ = tokenize_prompts(rows, tokenizer, "gsm8k", True, None, args.max_new_tokens)

    results = []
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    baseline = [
        cacheless_collect(model, ids, args.jacobi_n, args.max_new_tokens, eos_ids, generator) for ids in prompt_ids
    ]
    seconds = time.perf_counter() - start
    tokens = sum(len(answer) for answer, _, _ in baseline)
    results.append(
        (
            "cache-less, batch 1 (reference style)",
            seconds,
            tokens,
            sum(s for _, s, _ in baseline),
            sum(f for _, _, f in baseline),
        )
    )

    for batch_size in args.batch_sizes:
        with tempfile.TemporaryDirectory() as output_dir:
            start = time.perf_counter()
            collected = collect_trajectories(
                model,
                tokenizer,
                rows,
                jacobi_n=args.jacobi_n,
                max_new_tokens=args.max_new_tokens,
                task="gsm8k",
                chat=True,
                batch_size=batch_size,
                output_dir=output_dir,
                clean=False,
                progress=False,
            )
            seconds = time.perf_counter() - start
        tokens = sum(len(a) for a in collected["answer_ids"])
        same = sum(a == b[0][: len(a)] or b[0] == a[: len(b[0])] for a, b in zip(collected["answer_ids"], baseline))
        results.append(
            (
                f"hf_cllm, KV cache, batch {batch_size}",
                seconds,
                tokens,
                sum(len(s) for s in collected["state_block"]),
                None,
            )
        )
        print(f"batch {batch_size}: {same}/{len(baseline)} answers agree with the cache-less collector's")

    print(
        f"\n{len(prompt_ids)} GSM8K prompts (chat template), n={args.jacobi_n}, max_new_tokens={args.max_new_tokens}, "
        f"{args.threads} threads, fp32, {path}"
    )
    print("| collector | seconds | prompts/s | answer tokens/s | states | speedup |")
    print("|---|---|---|---|---|---|")
    for name, seconds, tokens, states, _ in results:
        print(
            f"| {name} | {seconds:.1f} | {len(prompt_ids) / seconds:.3f} | {tokens / seconds:.1f} | {states} | "
            f"{results[0][1] / seconds:.2f}x |"
        )
    print(json.dumps([dict(zip(["collector", "seconds", "tokens", "states", "forwards"], r)) for r in results]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
