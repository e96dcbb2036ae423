"""Collect Jacobi trajectories of a teacher model on a dataset of prompts (resumable; data-parallel under
`accelerate launch --multi_gpu --num_processes K`, CPU processes when there is no GPU)."""

from __future__ import annotations

import os

from .common import CLIError, add_model_arguments, end_processes, load_model_and_tokenizer, positive_int


HELP = "collect Jacobi trajectories (the training data of consistency distillation) into parquet shards"


def add_arguments(parser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--dataset", required=True, help="a .jsonl/.json/.parquet file or a Hub dataset id")
    parser.add_argument("--output-dir", required=True, help="where shards go; rerun with the same one to resume")
    parser.add_argument("--task", default="generic", help="prompt format: generic, gsm8k, spider, code, chat")
    parser.add_argument("--split", default="train", help="split of a Hub dataset")
    parser.add_argument("--limit", type=positive_int, default=None, help="only the first K prompts")
    parser.add_argument("--jacobi-n", type=positive_int, default=16)
    parser.add_argument("--max-new-tokens", type=positive_int, default=256)
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--shard-size", type=positive_int, default=64, help="prompts per parquet shard")
    parser.add_argument("--chat", action="store_true", default=None, help="use the chat template (default: if any)")
    parser.add_argument("--no-chat", dest="chat", action="store_false")
    parser.add_argument("--augment", action="store_true", help="correct half of the wrong tokens of states")
    parser.add_argument("--no-clean", dest="clean", action="store_false", help="keep repetitive blocks")
    parser.add_argument("--max-states-per-block", type=positive_int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--push-to-hub", metavar="REPO_ID", default=None, help="upload the result as a Hub dataset")


def run(args) -> int:
    from ..collection import collect_trajectories
    from ..hub import push_trajectories

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and args.device == "auto":
        import torch
        from accelerate import PartialState

        args.device = str(PartialState(cpu=not torch.cuda.is_available()).device)
    model, tokenizer = load_model_and_tokenizer(args)
    try:
        rows = collect_trajectories(
            model,
            tokenizer,
            args.dataset,
            jacobi_n=args.jacobi_n,
            max_new_tokens=args.max_new_tokens,
            output_dir=args.output_dir,
            task=args.task,
            chat=args.chat,
            batch_size=args.batch_size,
            augment=args.augment,
            clean=args.clean,
            max_states_per_block=args.max_states_per_block,
            seed=args.seed,
            shard_size=args.shard_size,
            split=args.split,
            limit=args.limit,
        )
        if args.push_to_hub:
            print(f"Pushed: {push_trajectories(args.output_dir, args.push_to_hub)}")
    except ValueError as error:
        raise CLIError(str(error)) from None
    if int(os.environ.get("RANK", "0")) == 0:  # once, not once per process
        print(f"{len(rows)} prompts, {sum(len(b) for b in rows['state_block'])} states in {args.output_dir}")
    end_processes()
    return 0
