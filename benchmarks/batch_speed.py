"""Batched Jacobi decoding: every row at its own pace (`jacobi_progress="row"`) vs the batch at its slowest row's
(`"shared"`), with greedy AR alongside, on the same prompts in one process.

    python benchmarks/batch_speed.py --model toy                  # the toy language's model, consistency-trained here
    python benchmarks/batch_speed.py --task gsm8k --prompts gsm8k/test.jsonl --max-new-tokens 64   # SmolLM2

For each batch size, the same prompts run in consecutive batches of that size (left-padded), each method back to
back per batch after one excluded warm-up. Figures: tokens/s = every row's new tokens up to EOS ÷ the wall time of
the `generate` calls; TPF = the mean over rows of each row's tokens per forward while it ran (what
`tokens_per_forward` reports); identical = rows whose new tokens equal greedy AR's in the same batch.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import transformers

from hf_cllm import jacobi_generate
from hf_cllm.speed import new_tokens_to_eos


def toy_consistency_model(steps: int = 400):
    """The tests' toy language (tests/toy.py): its AR model, then consistency training on its own trajectories."""
    import tempfile

    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    import toy

    from hf_cllm import CLLMConfig, CLLMTrainer, collect_trajectories, load_trajectories

    model, tokenizer = toy.toy_model(), toy.toy_tokenizer()
    with tempfile.TemporaryDirectory() as folder:
        collect_trajectories(model, tokenizer, toy.toy_prompts(128, seed=7), jacobi_n=toy.JACOBI_N,
                             max_new_tokens=32, output_dir=f"{folder}/trajectories", batch_size=32, chat=False,
                             progress=False)  # fmt: skip
        args = CLLMConfig(output_dir=f"{folder}/out", jacobi_n=toy.JACOBI_N, use_cpu=True, report_to="none",
                          save_strategy="no", disable_tqdm=True, per_device_train_batch_size=8, max_steps=steps,
                          learning_rate=2e-3, lr_scheduler_type="constant", logging_steps=steps, seed=0)  # fmt: skip
        CLLMTrainer(model=model, args=args, train_dataset=load_trajectories(f"{folder}/trajectories"),
                    processing_class=tokenizer).train()  # fmt: skip
    prompts = [tokenizer(text)["input_ids"] for text in toy.toy_prompts(32, seed=99)]
    return model.eval(), tokenizer, prompts, toy.JACOBI_N


def left_padded(prompts, pad: int, device):
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    return ids, mask


def measure(model, prompts, batch: int, methods: dict, eos, pad: int) -> dict:
    figures = {name: {"tokens": 0, "seconds": 0.0, "tpf": [], "identical": 0} for name in methods}
    for start in range(0, len(prompts), batch):
        ids, mask = left_padded(prompts[start : start + batch], pad, model.device)
        outputs = {}
        for name, kwargs in methods.items():
            started = time.perf_counter()
            out = model.generate(input_ids=ids, attention_mask=mask, return_dict_in_generate=True, **kwargs)
            figures[name]["seconds"] += time.perf_counter() - started
            outputs[name] = [new_tokens_to_eos(row, ids.shape[1], eos) for row in out.sequences]
            figures[name]["tokens"] += sum(len(row) for row in outputs[name])
            tpf = getattr(out, "tokens_per_forward", None)
            figures[name]["tpf"] += tpf.tolist() if tpf is not None else [1.0] * len(ids)
        for name in methods:
            figures[name]["identical"] += sum(torch.equal(a, b) for a, b in zip(outputs[name], outputs["AR greedy"]))
    return {name: {"tokens_per_s": f["tokens"] / f["seconds"], "tpf": sum(f["tpf"]) / len(f["tpf"]),
                   "identical": f["identical"], "rows": len(prompts)} for name, f in figures.items()}  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help='"toy", a Hub id or folder (default: the embedded SmolLM2)')
    parser.add_argument("--task", default="gsm8k", help="the benchmark whose prompts to use (not for the toy)")
    parser.add_argument("--prompts", default=None, help="the task's data file (default: Hub, or offline packages)")
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--jacobi-n", type=int, default=None, help="default: 16 (toy: its training n)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--toy-steps", type=int, default=400, help="consistency training steps of the toy model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.model == "toy":
        model, tokenizer, prompts, n = toy_consistency_model(args.toy_steps)
        prompts = prompts[: args.num_prompts]
    else:
        sys.path.insert(0, str(Path(__file__).parent))
        from decoding_speed import load_prompts
        from transformers import AutoTokenizer

        from hf_cllm import AutoCLLMForCausalLM
        from hf_cllm.assets import embedded_model_dir

        source = args.model or str(embedded_model_dir())
        model = AutoCLLMForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(source)
        prompts = load_prompts(args.task, args.prompts, args.num_prompts, tokenizer, args.max_new_tokens)
        n = 16
    n = args.jacobi_n or n
    eos = [model.generation_config.eos_token_id] if isinstance(model.generation_config.eos_token_id, int) else (
        model.generation_config.eos_token_id or [])  # fmt: skip
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    common = dict(max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=pad)
    jacobi = dict(common, custom_generate=jacobi_generate, jacobi_n=n)
    methods = {"AR greedy": common, "Jacobi, shared progress": dict(jacobi, jacobi_progress="shared"),
               "Jacobi, per-row progress": dict(jacobi, jacobi_progress="row")}  # fmt: skip
    measure(model, prompts[:2], 2, methods, eos, pad)  # warm-up
    where = platform.processor() or platform.machine()
    print(f"{args.model or 'SmolLM2-135M-Instruct'}, n={n}, {len(prompts)} prompts, {args.max_new_tokens} new tokens, "
          f"{torch.get_num_threads()} threads, {where}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}\n")  # fmt: skip
    print("| batch | method | tokens/s | × AR | TPF (mean per row) | identical to AR |\n|---|---|---|---|---|---|")
    results = {}
    for batch in args.batches:
        figures = measure(model, prompts, batch, methods, eos, pad)
        results[batch] = figures
        for name, f in figures.items():
            ratio = f["tokens_per_s"] / figures["AR greedy"]["tokens_per_s"]
            print(f"| {batch} | {name} | {f['tokens_per_s']:.1f} | {ratio:.2f} | {f['tpf']:.3f} | "
                  f"{f['identical']}/{f['rows']} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "n": n, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
