"""One benchmark run: task quality and decoding speed of greedy AR vs Jacobi, for one model, on the same prompts.

Per item, greedy `generate` and Jacobi decoding run back to back in this process (their order alternates between
items), each timed over the whole call with its forward passes counted by a hook (`hf_cllm.speed`). A warm-up of
both runs first and is not recorded. Each finished item is appended to `items.jsonl` at once, so an interrupted run
picks up where it stopped; the report (JSON, Markdown, plot) is computed from that file.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import torch

from ..decoding import jacobi_generate
from ..modeling import eos_token_ids
from ..prompts import tokenize_prompts
from ..resume import resume_or_refuse
from ..speed import MethodSummary, Run, timed_generate
from ..trajectories import mixed_seed
from .task import get_benchmark


ITEMS_FILE, SETTINGS_FILE = "items.jsonl", "settings.json"


def run_benchmark(model, tokenizer, benchmark: str, output_dir, *, data: str | None = None, jacobi_n: int | str = 16,
                  limit: int | None = None, max_new_tokens: int | None = None, chat: bool | None = None,
                  progress: bool = True, command: str | None = None, options: dict | None = None,
                  sampling: dict | None = None, num_samples: int = 1, jacobi_blocks: int = 1,
                  generate_options: dict | None = None) -> dict:  # fmt: skip
    """Run `benchmark` (a registered `BenchmarkTask`: "gsm8k", "humaneval", "spider", ...) and write
    `output_dir/{items.jsonl, report.json, report.md, report.png}`; returns the report. Rerun with the same arguments
    to resume. `options`: the task's own options (`BenchmarkTask.options`, e.g. Spider's `db_dir`). `sampling`:
    sampling options of `generate` (e.g. `{"temperature": 0.8, "top_p": 0.95}`); AR and Jacobi then both sample
    `num_samples` completions per item, each pair from the same seed, and the task scores them together (pass@k).
    `jacobi_blocks`: blocks in flight at once (multi-block decoding) with an integer `jacobi_n`. `generate_options`:
    more `generate` arguments for both methods, e.g. the fast path's static cache and `compile_config`
    (`hf-cllm bench --compile`)."""
    from tqdm.auto import tqdm

    task = get_benchmark(benchmark)
    options = task.check_options(options)
    if num_samples < 1 or (num_samples > 1 and not sampling):
        raise ValueError(
            f"num_samples={num_samples}: several samples per item need sampling, e.g. sampling={{'temperature': 0.8}} "
            "(--temperature 0.8); greedy decoding gives one completion"
        )
    rows = task.load_rows(data)[:limit]
    if not rows:
        raise ValueError(f"no {benchmark} items to run (data={data!r}, limit={limit})")
    missing = sorted({column for row in rows for column in task.columns if column not in row})
    if missing:
        raise ValueError(
            f"the {benchmark} data {data or ''} lacks the column(s) {missing}: every item needs {list(task.columns)}"
        )
    chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
    max_new_tokens = max_new_tokens or task.max_new_tokens
    prompt_rows = [task.prompt_row(row, chat=chat) for row in rows]
    context = getattr(model.config, "max_position_embeddings", None)
    prompts, _ = tokenize_prompts(prompt_rows, tokenizer, task.prompt_format, chat, context, max_new_tokens)

    settings = {"benchmark": benchmark, "model": str(getattr(model.config, "_name_or_path", "")), "data": data,
                "jacobi_n": jacobi_n, "limit": limit, "max_new_tokens": max_new_tokens, "chat": chat,
                "dtype": str(model.dtype), "device": str(model.device), "options": options}  # fmt: skip
    if sampling:
        settings |= {"sampling": sampling, "num_samples": num_samples}
    if jacobi_blocks > 1:  # recorded only when used, so folders written before it existed still resume
        settings["jacobi_blocks"] = jacobi_blocks
    generate_options = generate_options or {}
    if generate_options:
        settings["generate_options"] = {key: repr(value) for key, value in generate_options.items()}
    output_dir = Path(output_dir)
    done = _resume(output_dir, settings)
    eos = eos_token_ids(model)
    common = dict(max_new_tokens=max_new_tokens, do_sample=bool(sampling), pad_token_id=eos[0] if eos else None)
    common |= (sampling or {}) | generate_options
    methods = {
        "ar": dict(common),
        "jacobi": dict(common, custom_generate=jacobi_generate, jacobi_n=jacobi_n, return_dict_in_generate=True),
    }
    if jacobi_blocks > 1:
        methods["jacobi"]["jacobi_blocks"] = jacobi_blocks

    def inputs_of(ids):
        return {"input_ids": torch.tensor([ids], device=model.device),
                "attention_mask": torch.ones(1, len(ids), dtype=torch.long, device=model.device)}  # fmt: skip

    todo = [i for i in range(len(rows)) if i not in done]
    if todo:  # warm-up, not recorded
        for kwargs in methods.values():
            timed_generate(model, inputs_of(prompts[todo[0]]), eos, **{**kwargs, "max_new_tokens": 8})
    with open(output_dir / ITEMS_FILE, "a") as items:
        for index in tqdm(todo, desc=f"{benchmark} (AR + Jacobi)", unit="item", disable=not progress):
            record = {"index": index, "ar": [], "jacobi": []}
            for sample in range(num_samples):
                order = ["ar", "jacobi"] if (index + sample) % 2 == 0 else ["jacobi", "ar"]
                for name in order:
                    if sampling:  # the same seed for both methods: a repeatable, resumable run
                        torch.manual_seed(mixed_seed(index, sample))
                    run = timed_generate(model, inputs_of(prompts[index]), eos, **methods[name])
                    record[name].append({"tokens": run.tokens.tolist(), "seconds": run.seconds,
                                         "forwards": run.forwards,
                                         "text": tokenizer.decode(run.tokens, skip_special_tokens=True)})  # fmt: skip
            if not sampling:  # one completion per method, stored as such
                record = {"index": index, "ar": record["ar"][0], "jacobi": record["jacobi"][0]}
            items.write(json.dumps(record) + "\n")
            items.flush()
    report = build_report(task, rows, output_dir, settings, command, options)
    write_report(report, output_dir)
    return report


def _resume(output_dir: Path, settings: dict) -> set[int]:
    """Indices already done in `output_dir`; refuse a folder made with other settings."""
    resume_or_refuse(output_dir, settings, SETTINGS_FILE, what="a benchmark run")
    done = set()
    items = output_dir / ITEMS_FILE
    if items.exists():
        lines = items.read_text().splitlines()
        complete = []
        for line in lines:
            try:
                done.add(json.loads(line)["index"])
                complete.append(line)
            except (json.JSONDecodeError, KeyError):
                break  # a line cut by an interruption: dropped, its item runs again
        if len(complete) < len(lines):
            items.write_text("".join(line + "\n" for line in complete))
    return done


def _load_items(output_dir: Path) -> list[dict]:
    lines = (output_dir / ITEMS_FILE).read_text().splitlines()
    return sorted((json.loads(line) for line in lines), key=lambda item: item["index"])


def build_report(task, rows: list[dict], output_dir: Path, settings: dict, command: str | None, options: dict) -> dict:
    items = _load_items(output_dir)
    scored_rows = [rows[item["index"]] for item in items]
    sampled = bool(settings.get("sampling"))
    # each item's completions per method: one (greedy) or `num_samples` (sampling)
    samples = {name: [item[name] if sampled else [item[name]] for item in items] for name in ("ar", "jacobi")}
    if sampled:
        quality = {name: task.score_samples([[s["text"] for s in item] for item in samples[name]], scored_rows,
                                            **options) for name in samples}  # fmt: skip
    else:
        quality = {name: task.score([item[0]["text"] for item in samples[name]], scored_rows, **options)
                   for name in samples}  # fmt: skip
    metric = next(iter(quality["ar"]))  # each task's score() puts its headline figure first
    # The same figures as the decoding benchmark, from the recorded runs (speed.MethodSummary).
    runs = {
        name: [Run(torch.tensor(s["tokens"]), s["seconds"], s["forwards"]) for item in samples[name] for s in item]
        for name in samples
    }
    figures = {name: MethodSummary(name, runs[name], runs["ar"]).figures() for name in runs}
    speed = {
        name: {key: figures[name][key] for key in ("tokens_per_s_median", "tokens_per_s_total", "tpf")}
        | {"new_tokens": sum(len(run.tokens) for run in runs[name])}
        for name in runs
    }
    identical = None if sampled else figures["jacobi"]["identical"]  # samples differ by design
    import accelerate
    import transformers

    return {
        "benchmark": settings["benchmark"],
        "items": len(items),
        "metric": metric,
        "quality": {name: quality[name][metric] for name in quality},
        "quality_details": {
            name: {k: v for k, v in quality[name].items() if k not in PER_ITEM_KEYS} for name in quality
        },
        "speed": speed,
        "speedup_median": figures["jacobi"]["speedup_median"],
        "identical": identical,
        "identical_rate": None if identical is None else identical / len(items),
        "per_item": [
            {
                "index": item["index"],
                "correct_ar": _correct(quality["ar"]["per_item"][k]),
                "correct_jacobi": _correct(quality["jacobi"]["per_item"][k]),
                "tpf": sum(len(s["tokens"]) for s in samples["jacobi"][k])
                / max(sum(s["forwards"] for s in samples["jacobi"][k]), 1),
                **_texts(k, samples, quality, sampled),
            }
            for k, item in enumerate(items)
        ],  # fmt: skip
        "settings": settings,
        "environment": {
            "device": settings["device"],
            "dtype": settings["dtype"],
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "accelerate": accelerate.__version__,
            "cpu": platform.processor() or platform.machine(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },  # fmt: skip
        "command": command or " ".join(sys.argv),
    }


PER_ITEM_KEYS = ("per_item", "status", "predictions")  # what a task's score() gives per item, not as a summary


def _texts(k: int, samples: dict, quality: dict, sampled: bool) -> dict:
    """Item k's completions per method (`text_ar`, `text_jacobi`: one text, or the list of samples) and, where the
    task reports them, what was scored (`prediction_ar`, ...: the extracted SQL, the program run): a published
    report can be checked and scored again."""
    out = {}
    for name in samples:
        texts = [s["text"] for s in samples[name][k]]
        out[f"text_{name}"] = texts if sampled else texts[0]
        if quality[name].get("predictions") is not None:
            out[f"prediction_{name}"] = quality[name]["predictions"][k]
    return out


def rescore(output_dir, benchmark: str | None = None, options: dict | None = None, command: str | None = None) -> dict:
    """Score a run folder again with the current metrics, without decoding: reads its `settings.json` and
    `items.jsonl` (the completions) and rewrites `report.{json,md,png}`. `options`: task options to change for this
    scoring (e.g. Spider's `keep_distinct`); the others stay as the run had them. The report keeps the run's command
    and adds `rescored` (this command)."""
    output_dir = Path(output_dir)
    if not (output_dir / SETTINGS_FILE).is_file() or not (output_dir / ITEMS_FILE).is_file():
        raise ValueError(
            f"--rescore {output_dir}: not a benchmark run folder (it needs {SETTINGS_FILE} and {ITEMS_FILE})"
        )
    settings = json.loads((output_dir / SETTINGS_FILE).read_text())
    if benchmark is not None and benchmark != settings["benchmark"]:
        raise ValueError(f"--rescore {output_dir}: that folder is a {settings['benchmark']} run, not {benchmark}")
    task = get_benchmark(settings["benchmark"])
    options = task.check_options({**settings.get("options", {}), **(options or {})})
    rows = task.load_rows(settings.get("data"))[: settings.get("limit")]
    previous = output_dir / "report.json"
    run_command = json.loads(previous.read_text()).get("command") if previous.is_file() else None
    report = build_report(task, rows, output_dir, settings | {"options": options}, run_command, options)
    report["rescored"] = command or " ".join(sys.argv)
    write_report(report, output_dir)
    return report


def _correct(value):
    """A greedy item is right or wrong; a sampled one is right in a share of its samples."""
    return value if isinstance(value, float) else bool(value)


def markdown(report: dict) -> str:
    s, q, env, settings = report["speed"], report["quality"], report["environment"], report["settings"]
    metric, sampling = report["metric"], settings.get("sampling")
    mode, jacobi_label = ("sampling", "Jacobi sampling") if sampling else ("greedy", "Jacobi")
    identical = "—" if report["identical"] is None else f"{report['identical']}/{report['items']}"
    ar = f"| {mode} AR | {q['ar']:.3f} | {s['ar']['tokens_per_s_median']:.1f} | {s['ar']['tpf']:.3f} | 1.00x | — |"
    jacobi = (
        f"| {jacobi_label} | {q['jacobi']:.3f} | {s['jacobi']['tokens_per_s_median']:.1f} | "
        f"{s['jacobi']['tpf']:.3f} | {report['speedup_median']:.2f}x | {identical} |"
    )
    details = ""
    if sampling:
        other = {name: {k: v for k, v in report["quality_details"][name].items() if k != metric} for name in q}
        details = (
            f"\nSampling {sampling}, {settings['num_samples']} samples per item and method (each AR/Jacobi pair "
            f"from the same seed); also: AR {other['ar']}, Jacobi {other['jacobi']}.\n"
        )
    blocks = f", {settings['jacobi_blocks']} blocks in flight" if settings.get("jacobi_blocks") else ""
    rescored = (
        f"\nScored again (same completions, current metric): `{report['rescored']}`" if report.get("rescored") else ""
    )
    return f"""# {report["benchmark"]}: {mode} AR vs {jacobi_label} (n={settings["jacobi_n"]}{blocks})

Model `{settings["model"]}`, {report["items"]} items, at most {settings["max_new_tokens"]} new tokens, chat template:
{settings["chat"]}; {env["device"]} ({env["gpu"] or env["cpu"]}), {env["dtype"]}, {env["torch_threads"]} threads;
torch {env["torch"]}, transformers {env["transformers"]}.
{details}
| method | {metric} | tokens/s (median) | TPF | speedup (median) | identical to AR |
|---|---|---|---|---|---|
{ar}
{jacobi}

Command: `{report["command"]}`{rescored}
"""


def write_report(report: dict, output_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (output_dir / "report.json").write_text(json.dumps(report, indent=2))
    (output_dir / "report.md").write_text(markdown(report))
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    names = ["greedy AR", f"Jacobi n={report['settings']['jacobi_n']}"]
    left.bar(names, [report["speed"][m]["tokens_per_s_median"] for m in ("ar", "jacobi")], color=["grey", "tab:blue"])
    left.set_ylabel("tokens/s (median)")
    left.set_title(f"{report['benchmark']}: speed")
    right.hist([item["tpf"] for item in report["per_item"]], bins=20, color="tab:blue")
    right.set_xlabel("Jacobi tokens per forward pass (per item)")
    right.set_ylabel("items")
    right.set_title(f"TPF, {report['metric']} {report['quality']['jacobi']:.3f}")
    figure.tight_layout()
    figure.savefig(output_dir / "report.png", dpi=120)
    plt.close(figure)
