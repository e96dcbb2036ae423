"""Cost of one consistency-training pass over the same trajectory rows: hf_cllm's packed step vs the reference's.

    hf-cllm collect --dataset gsm8k_train.jsonl --task gsm8k --limit 8 --max-new-tokens 128 --output-dir traj/
    python benchmarks/training_step.py --trajectories traj/ --batch-sizes 1 8

Reference style (re-implemented from the CLLM trainer, one record per block, batch 1): for every block, an AR forward
on prompt + answer, a forward on the fixed-point sequence (the teacher) and one on prompt + previous blocks + a state
(the student), then backward for the AR loss and again for the consistency loss. The same with one backward of the
sum is measured too. hf_cllm: each row packed into one sequence (prompt, answer, one state per block) with a 4-D
mask, one forward and one backward, at each batch size. Forward + backward only (the optimizer step is the same for
all); seconds per row (prompt), after one warm-up row.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_cllm import CLLMConfig, CLLMTrainer, load_trajectories
from hf_cllm.assets import embedded_model_dir
from hf_cllm.losses import ar_loss, consistency_loss
from hf_cllm.packing import IGNORE_INDEX, pick_states


def reference_row(model, row, n: int, single_backward: bool) -> float:
    """One row as the reference trains it: one record per block; returns the summed loss."""
    prompt, answer = row["prompt_ids"], row["answer_ids"]
    total = 0.0
    for block, (index,) in sorted(pick_states(row["state_block"]).items()):
        state = row["states"][index]
        full = torch.tensor([prompt + answer])
        labels = torch.full(full.shape, IGNORE_INDEX)
        labels[0, len(prompt) - 1 : -1] = torch.tensor(answer)
        ar = 10 * ar_loss(model(input_ids=full).logits, labels, label_smoothing=0.1)
        if not single_backward:
            ar.backward()
        start = len(prompt) + block * n
        fixed = torch.tensor([prompt + answer[: block * n + len(state)]])
        teacher = model(input_ids=fixed).logits[:, start:-1].detach()
        student = model(input_ids=torch.tensor([prompt + answer[: block * n] + state])).logits[:, start:-1]
        mask = torch.ones(student.shape[:2], dtype=torch.bool)
        consistency = consistency_loss(student, teacher, mask)
        if single_backward:
            (ar + consistency).backward()
        else:
            consistency.backward()
        total += float(ar) + float(consistency)
    return total


def timed(function, rows) -> float:
    """Seconds per row over `rows` after one warm-up call on the first."""
    function(rows[:1])
    start = time.perf_counter()
    function(rows)
    return (time.perf_counter() - start) / len(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trajectories", required=True, help="a folder written by `hf-cllm collect`")
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=None, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    path = args.model or str(embedded_model_dir())
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").train()
    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = load_trajectories(args.trajectories)
    n = max(len(s) for states in rows["states"] for s in states)
    config = CLLMConfig("/tmp/hf_cllm_bench", jacobi_n=n, use_cpu=True, report_to="none", tpf_eval_prompts=0)
    trainer = CLLMTrainer(model=model, args=config, train_dataset=rows, processing_class=tokenizer)
    rows = [rows[i] for i in range(len(rows))]

    def packed(batch_size):
        def run(subset):
            for start in range(0, len(subset), batch_size):
                trainer.compute_loss(model, trainer.data_collator(subset[start : start + batch_size])).backward()
                model.zero_grad(set_to_none=True)

        return run

    def reference(single_backward):
        def run(subset):
            for row in subset:
                reference_row(model, row, n, single_backward)
                model.zero_grad(set_to_none=True)

        return run

    methods = {"reference: 3 forwards per block, 2 backward": reference(False)}
    methods["reference: 3 forwards per block, 1 backward"] = reference(True)
    for size in args.batch_sizes:
        methods[f"hf_cllm packed, batch {size}"] = packed(size)
    seconds = {name: timed(function, rows) for name, function in methods.items()}
    baseline = seconds["reference: 3 forwards per block, 2 backward"]
    blocks = sum(len(set(r["state_block"])) for r in rows) / len(rows)
    print(f"{len(rows)} rows, {blocks:.1f} blocks with states per row, n={n}, {args.threads} threads, fp32")
    print("| method | s/row | speedup |\n|---|---|---|")
    for name, value in seconds.items():
        print(f"| {name} | {value:.2f} | {baseline / value:.2f}x |")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"rows": len(rows), "jacobi_n": n, "seconds_per_row": seconds}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
