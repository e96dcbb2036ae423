"""Greedy decoding and Jacobi decoding side by side on a few prompts, with a picture of one Jacobi trajectory.

Runs offline on the embedded SmolLM2-135M-Instruct by default (converted once on first use, ~40 s).
"""

from __future__ import annotations

import sys
from pathlib import Path

from .common import add_model_arguments, encode_prompt, load_model_and_tokenizer, positive_int


HELP = "see Jacobi decoding at work: AR vs Jacobi on a few prompts, and one trajectory drawn"

# GSM8K-style word problems written for the demo and the benchmarks.
DEMO_QUESTIONS = [
    "A baker makes 24 muffins every morning. He sells 15 of them and gives 3 to his neighbours. How many muffins are left at the end of the day?",
    "Tom has 3 boxes with 12 pencils each. He gives 8 pencils to his sister. How many pencils does Tom have now?",
    "A train travels 60 miles per hour for 3 hours and then 40 miles per hour for 2 hours. How far does it travel in total?",
    "Sara earns $15 an hour and works 6 hours a day for 5 days. She spends $120 on groceries. How much money does she have left?",
    "A garden has 8 rows of tomato plants with 7 plants in each row. Each plant gives 4 tomatoes. How many tomatoes does the garden give?",
    "Mike read 20 pages on Monday, twice as many on Tuesday and 15 pages on Wednesday. How many pages did he read in total?",
    "A school has 450 students. One third of them take the bus and 120 walk. The rest come by car. How many students come by car?",
    "A shop sells apples for $2 each and oranges for $3 each. Anna buys 5 apples and 4 oranges. How much does she pay?",
    "A water tank holds 500 litres. It loses 25 litres a day. After how many days is the tank half full?",
    "Lisa is 4 years older than her brother. In 6 years the sum of their ages will be 40. How old is Lisa now?",
    "A farmer has 36 cows and buys 14 more. He then sells half of all his cows. How many cows does he have now?",
    "A pizza is cut into 8 slices. Four friends order 3 pizzas and each eats the same number of slices. How many slices does each friend eat?",
]


def add_arguments(parser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--num-prompts", type=positive_int, default=4, help=f"1 to {len(DEMO_QUESTIONS)}")
    parser.add_argument("--jacobi-n", type=positive_int, default=16, help="block size n")
    parser.add_argument("--max-new-tokens", type=positive_int, default=96)
    parser.add_argument("--output-dir", default="hf_cllm_demo", help="where the trajectory picture is written")
    parser.add_argument("--no-color", action="store_true", help="plain text instead of ANSI colours")


def run(args) -> int:
    from tqdm.auto import tqdm

    from ..modeling import eos_token_ids
    from ..speed import timed_generate
    from ..visualize import plot_trajectory, render_terminal

    print(f"Loading {args.model} ...", file=sys.stderr, flush=True)
    model, tokenizer = load_model_and_tokenizer(args)
    chat = bool(getattr(tokenizer, "chat_template", None))
    eos = eos_token_ids(model)
    common = dict(max_new_tokens=args.max_new_tokens, do_sample=False, return_dict_in_generate=True)
    jacobi = dict(jacobi_n=args.jacobi_n, jacobi_return_states=True)

    questions = DEMO_QUESTIONS[: args.num_prompts]
    warm = encode_prompt(tokenizer, questions[0], chat, model.device)
    timed_generate(model, warm, eos, **{**common, "max_new_tokens": 4})  # warm-up, not measured

    rows = []
    for question in tqdm(questions, desc="greedy vs Jacobi", unit="prompt", file=sys.stderr):
        inputs = encode_prompt(tokenizer, question, chat, model.device)
        greedy = timed_generate(model, inputs, eos, **common)
        parallel = timed_generate(model, inputs, eos, **common, **jacobi)
        rows.append((greedy, parallel))

    print()
    print("| prompt | new tokens | AR tokens/s | Jacobi tokens/s | AR forwards | Jacobi forwards | TPF | identical |")
    print("|---|---|---|---|---|---|---|---|")
    for index, (greedy, parallel) in enumerate(rows, 1):
        print(
            f"| {index} | {len(greedy.tokens)} | {greedy.tokens_per_second:.1f} | {parallel.tokens_per_second:.1f} | "
            f"{greedy.forwards} | {parallel.forwards} | {parallel.tpf:.2f} | "
            f"{'yes' if _same(greedy, parallel) else 'NO'} |"
        )
    tokens = sum(len(g.tokens) for g, _ in rows)
    ar_seconds, jacobi_seconds = sum(g.seconds for g, _ in rows), sum(p.seconds for _, p in rows)
    jacobi_forwards = sum(p.forwards for _, p in rows)
    print(
        f"| all | {tokens} | {tokens / ar_seconds:.1f} | {sum(len(p.tokens) for _, p in rows) / jacobi_seconds:.1f} | "
        f"{sum(g.forwards for g, _ in rows)} | {jacobi_forwards} | {tokens / jacobi_forwards:.2f} | "
        f"{sum(_same(g, p) for g, p in rows)}/{len(rows)} |"
    )

    states = rows[0][1].output.jacobi_states[0][:, 0]  # first block of the first prompt
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    picture = output_dir / "jacobi_trajectory.png"
    plot_trajectory(states, tokenizer, picture, title=f"Jacobi trajectory of the first {states.shape[1]}-token block")
    print(f"\nOne Jacobi trajectory (prompt 1, first block of n={args.jacobi_n}); one line per forward pass:\n")
    print(render_terminal(states, tokenizer, color=not args.no_color and sys.stdout.isatty()))
    print(f"\nPicture: {picture}")
    print(
        "\nWhat you are looking at: each forward pass checks the whole block at once and keeps the longest prefix that"
        "\nalready agrees with greedy decoding (green), so the output is exactly greedy's ('identical'). This model was"
        f"\nnot trained for it: it fixes about one token per forward pass (TPF {tokens / jacobi_forwards:.2f}), and the"
        "\nextra work of the block makes it slower than greedy. A consistency-trained model (a CLLM) also gets tokens"
        "\nright behind wrong ones (yellow) and fixes several per pass: that is where the 2-3x speedup comes from."
        '\n\nNext: `hf-cllm generate --prompt "..." --chat` for your own prompt; docs/decoding.md for the API;'
        "\ndocs/benchmarks.md for measured speed."
    )
    return 0


def _same(greedy, parallel) -> bool:
    return greedy.tokens.shape == parallel.tokens.shape and bool((greedy.tokens == parallel.tokens).all())
