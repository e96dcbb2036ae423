"""Stock greedy decoding against the fast path (greedy and Jacobi `"auto"`), with a picture of one Jacobi trajectory.

Runs offline on the embedded SmolLM2-135M-Instruct by default (converted once on first use, ~40 s).
"""

from __future__ import annotations

import sys
from pathlib import Path

from .common import add_model_arguments, decoding_options, encode_prompt, load_model_and_tokenizer, positive_int


HELP = "see Jacobi decoding at work: stock greedy vs the fast path's greedy and Jacobi, one trajectory drawn"

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
    add_model_arguments(parser, compile=True)
    parser.add_argument("--num-prompts", type=positive_int, default=4, help=f"1 to {len(DEMO_QUESTIONS)}")
    parser.add_argument("--jacobi-n", type=positive_int, default=16, help="block size n of the drawn trajectory")
    parser.add_argument("--max-new-tokens", type=positive_int, default=96)
    parser.add_argument("--output-dir", default="hf_cllm_demo", help="where the trajectory picture is written")
    parser.add_argument("--no-color", action="store_true", help="plain text instead of ANSI colours")


def run(args) -> int:
    import time

    import torch
    from tqdm.auto import tqdm

    from ..modeling import AutoCLLMForCausalLM, eos_token_ids
    from ..speed import first_divergence, timed_generate
    from ..visualize import plot_trajectory, render_terminal

    print(f"Loading {args.model} ...", file=sys.stderr, flush=True)
    model, tokenizer = load_model_and_tokenizer(args)
    fast = str(model.dtype).removeprefix("torch.") + (", compiled" if args.compile else "")
    reference = model  # stock `generate()` in float32: the model as transformers users run it
    if model.dtype != torch.float32:
        reference = AutoCLLMForCausalLM.from_pretrained(model.name_or_path, dtype=torch.float32).to(model.device)
    chat = bool(getattr(tokenizer, "chat_template", None))
    eos = eos_token_ids(model)
    questions = DEMO_QUESTIONS[: args.num_prompts]
    prompts = [encode_prompt(tokenizer, question, chat, model.device) for question in questions]
    common = dict(max_new_tokens=args.max_new_tokens, do_sample=False, return_dict_in_generate=True)
    # the fast path: a static cache, so every Jacobi window has one width (and, with --compile, one graph)
    longest = max(inputs["input_ids"].shape[1] for inputs in prompts) + args.max_new_tokens
    fast_options = {"cache_implementation": "static", "max_cache_len": longest + 16, **decoding_options(args, model)}

    start = time.perf_counter()
    for options in ({}, {"jacobi_n": "auto"}):  # warm-up (and, with --compile, compilation), not measured
        timed_generate(model, prompts[0], eos, **{**common, **fast_options, **options, "max_new_tokens": 12})
    timed_generate(reference, prompts[0], eos, **{**common, "max_new_tokens": 4})
    if args.compile:
        print(f"Compiled the fast path in {time.perf_counter() - start:.0f} s (once per process).", file=sys.stderr)

    rows = []
    for inputs in tqdm(prompts, desc="stock greedy vs fast greedy vs fast auto", unit="prompt", file=sys.stderr):
        stock = timed_generate(reference, inputs, eos, **common)
        greedy = timed_generate(model, inputs, eos, **common, **fast_options, output_logits=True)
        auto = timed_generate(model, inputs, eos, **common, **fast_options, jacobi_n="auto")
        rows.append((stock, greedy, auto))

    print()
    print(f"| prompt | new tokens | stock greedy, float32 (tokens/s) | greedy, {fast} | Jacobi auto, {fast} | "
          "auto TPF | auto ÷ stock | auto = greedy |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for index, (stock, greedy, auto) in enumerate(rows, 1):
        print(
            f"| {index} | {len(auto.tokens)} | {stock.tokens_per_second:.1f} | {greedy.tokens_per_second:.1f} | "
            f"{auto.tokens_per_second:.1f} | {auto.tpf:.2f} | {auto.tokens_per_second / stock.tokens_per_second:.2f}× "
            f"| {_identity(first_divergence(auto.tokens, greedy))} |"
        )
    rate = {name: sum(len(r[k].tokens) for r in rows) / sum(r[k].seconds for r in rows)
            for k, name in enumerate(("stock", "greedy", "auto"))}  # fmt: skip
    same = sum(first_divergence(auto.tokens, greedy) is None for _, greedy, auto in rows)
    print(
        f"| all | {sum(len(r[2].tokens) for r in rows)} | {rate['stock']:.1f} | {rate['greedy']:.1f} | "
        f"{rate['auto']:.1f} | {sum(len(r[2].tokens) for r in rows) / sum(r[2].forwards for r in rows):.2f} | "
        f"{rate['auto'] / rate['stock']:.2f}× | {same}/{len(rows)} |"
    )

    trajectory = model.generate(**prompts[0], **common, jacobi_n=args.jacobi_n, jacobi_return_states=True)
    states = trajectory.jacobi_states[0][:, 0]  # first block of the first prompt
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    picture = output_dir / "jacobi_trajectory.png"
    plot_trajectory(states, tokenizer, picture, title=f"Jacobi trajectory of the first {states.shape[1]}-token block")
    print(f"\nOne Jacobi trajectory (prompt 1, first block of n={args.jacobi_n}); one line per forward pass:\n")
    print(render_terminal(states, tokenizer, color=not args.no_color and sys.stdout.isatty()))
    print(f"\nPicture: {picture}")
    exact = (
        "In float32 Jacobi decoding is token-identical to greedy decoding."
        if model.dtype == torch.float32
        else "In bfloat16 a window of tokens rounds a little differently from a one-token step, so where greedy's"
        "\ntwo best tokens are within a rounding step or two (a near-tie, gap shown) Jacobi may take the other one."
        "\nIt equals greedy decoding computed at its own width (`jacobi_n=1, jacobi_width=8`) exactly, and with"
        "\n--dtype float32 it is token-identical to stock greedy decoding."
    )
    print(
        f"\nWhat you are looking at: stock `generate()` in float32 is the reference. The fast path computes in {fast}"
        "\nwith a static cache; greedy decoding there is already faster, and `jacobi_n=\"auto\"` checks 7 guessed tokens"
        "\nper forward pass (n-grams from the prompt, Jacobi iterations) for about the cost of one token, keeping every"
        "\ntoken that agrees with greedy decoding.\n" + exact +
        "\n\nThe trajectory: each forward pass checks the whole block at once and keeps the longest prefix that already"
        "\nagrees with greedy decoding (green). This model was not trained for it: it fixes about one token per pass."
        "\nA consistency-trained model (a CLLM) also gets tokens right behind wrong ones (yellow) and fixes several per"
        "\npass: that is where the papers' 2-3x on a GPU comes from."
        '\n\nNext: `hf-cllm generate --prompt "..." --chat --jacobi-n auto` for your own prompt; docs/decoding.md for the'
        "\nAPI; docs/benchmarks.md for measured speed."
    )
    return 0


def _identity(divergence) -> str:
    if divergence is None:
        return "yes"
    index, gap = divergence
    return f"near-tie at token {index} (gap {gap:.2f})" if gap is not None else f"differs at token {index}"
