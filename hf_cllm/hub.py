"""The Hub side: the `custom_generate/` folder that makes a saved CLLM Jacobi-decode with transformers alone, its
model card, and pushing a model folder, a standalone decoder repo or collected trajectories (with a dataset card).

`custom_generate/` holds verbatim copies of `decoding.py`, `verify.py`, `windows.py`, `routing.py` and
`hub_generate.py` as `generate.py`; they import nothing from hf_cllm (only each other, relatively), so the package
and the Hub code cannot drift.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from .trajectories import SETTINGS_FILE, SHARD_DIR, load_trajectories, read_settings, schema_table


PACKAGE_DIR = Path(__file__).parent
CUSTOM_GENERATE_DIR = "custom_generate"
# file in the repo's custom_generate/ -> the package module it is a copy of
CUSTOM_GENERATE_FILES = {
    "generate.py": "hub_generate.py",
    "decoding.py": "decoding.py",
    "routing.py": "routing.py",
    "windows.py": "windows.py",
    "verify.py": "verify.py",
}
# What the copied code needs; transformers checks these lines before it runs the code. Kept equal to pyproject's.
REQUIREMENTS = ["torch>=2.6", "transformers>=5.24,<5.40"]
TAGS = ["custom_generate", "cllm", "jacobi-decoding", "consistency-distillation", "hf_cllm"]
CARD_MARKER = "<!-- written by hf_cllm -->"
CITATION = """\
@inproceedings{kou2024cllms,
    title     = {{CLLMs: Consistency Large Language Models}},
    author    = {Siqi Kou and Lanxiang Hu and Zhezhi He and Zhijie Deng and Hao Zhang},
    booktitle = {Forty-first International Conference on Machine Learning},
    year      = {2024},
    url       = {https://arxiv.org/abs/2403.00835}
}"""


def write_custom_generate(folder) -> Path:
    """Write (or refresh) `folder/custom_generate/` from the package's own modules."""
    target = Path(folder) / CUSTOM_GENERATE_DIR
    target.mkdir(parents=True, exist_ok=True)
    for name, module in CUSTOM_GENERATE_FILES.items():
        shutil.copyfile(PACKAGE_DIR / module, target / name)
    (target / "requirements.txt").write_text("\n".join(REQUIREMENTS) + "\n")
    return target


GENERATE_ARGUMENTS = """\
| argument | default | meaning |
|---|---|---|
| `jacobi_n` | the repo's `generation_config.jacobi_n` (16 for the decoder repo) | tokens per Jacobi block, \
or `"auto"`: before each forward, greedy / n-gram check / Jacobi block, whichever pays most on this device |
| `jacobi_init` | `"random"` | a block's first guesses: `"random"` (context tokens), `"pad"`, `"ngram"` \
(prompt lookup), or `fn(input_ids, k)` |
| `jacobi_max_n` | 16 (8 on a CPU with a static cache) | with `"auto"`: the longest window |
| `jacobi_width` | with `cache_implementation="static"`: the widest window | every decoding forward computes this \
many tokens (padded): one compiled graph, and in bfloat16 output equal to greedy decoding at that width |
| `jacobi_blocks` | 1 | blocks in flight at once (multi-block decoding, for models trained with Jacobi Forcing) |
| `jacobi_progress` | `"row"` on a GPU, `"shared"` on a CPU | in a batch, each row commits its own accepted \
tokens every forward (`"shared"`: the batch moves by its slowest row) |
| `jacobi_seed` | 0 | seed of the random guesses (results never depend on it, only speed) |
| `jacobi_return_states` | False | also return every Jacobi state of every block (`jacobi_states`) |

Everything else is `generate`'s: greedy decoding (identical output) and sampling (`do_sample=True`, with temperature,
top-k/top-p and the other processors: exactly the distribution of ordinary sampling); batches with left padding, EOS,
`max_new_tokens`, stopping criteria, `stop_strings` (with `tokenizer=`), streamers, scores and the cache work as
usual. Beam search and assisted decoding fall back to standard generation. With `return_dict_in_generate=True` the
output also has, per row, `num_forward_passes`, `num_new_tokens`, `tokens_per_forward` (TPF: tokens accepted per
forward pass) and `iterations_per_block`."""


def model_card(jacobi_n: int, *, repo_id: str | None = None, base_model: str | None = None,
               figures: dict | None = None, training: str | None = None) -> str:  # fmt: skip
    """A model card for a CLLM: what it is, how to use it with transformers alone or with hf_cllm, the extra
    generate arguments and outputs, measured speed when given (`figures`: tpf, speedup, ...), the citation."""
    repo = repo_id or "path/to/this/model"
    header = ["---", "library_name: transformers", "pipeline_tag: text-generation", "tags:"]
    header += [f"- {tag}" for tag in TAGS]
    if base_model:
        header.append(f"base_model: {base_model}")
    header.append("---")
    speed = ""
    if figures:
        rows = "\n".join(f"| {key} | {value} |" for key, value in figures.items())
        speed = f"\n## Measured\n\n| figure | value |\n|---|---|\n{rows}\n"
    return f"""{chr(10).join(header)}
{CARD_MARKER}

# {repo.split("/")[-1]}: a Consistency LLM

A consistency-distilled model ([CLLM, arXiv 2403.00835](https://arxiv.org/abs/2403.00835)) made with
hf_cllm{f", from `{base_model}`" if base_model else ""}. It decodes with
**Jacobi decoding**: a block of {jacobi_n} tokens per step, refined in parallel until it reaches its fixed point, which
is exactly the greedy output, so decoding is lossless and faster than token by token. {training or ""}

## Use it with transformers only

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{repo}", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("{repo}")
inputs = tokenizer("What is 12 * 7?", return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=256, return_dict_in_generate=True)   # Jacobi, n={jacobi_n}
out.sequences          # identical to greedy decoding
out.tokens_per_forward # tokens accepted per forward pass
```

`trust_remote_code=True` runs this repo's `custom_generate/` code (hf_cllm's decoder, plain PyTorch). Without it the
model loads as the plain architecture and decodes as usual. Sampling (`do_sample=True`) is Jacobi sampling, with
exactly ordinary sampling's distribution; beam search falls back to standard generation.

## Use it with hf_cllm

```python
from hf_cllm import AutoCLLMForCausalLM
model = AutoCLLMForCausalLM.from_pretrained("{repo}")           # no remote code
model.generate(**inputs, max_new_tokens=256)                  # jacobi_n={jacobi_n} from the generation config
```

## Additional generate arguments and outputs

{GENERATE_ARGUMENTS}
{speed}
## Citation

```bibtex
{CITATION}
```
"""


def decoder_card(repo_id: str | None = None) -> str:
    """The card of a standalone decoder repo (custom_generate/ only), usable on any decoder-only model."""
    repo = repo_id or "user/jacobi-decoding"
    header = "\n".join(["---", "library_name: transformers", "tags:", *(f"- {tag}" for tag in TAGS), "---"])
    return f"""{header}
{CARD_MARKER}

# Jacobi decoding for any causal LM (`custom_generate`)

Lossless parallel decoding from hf_cllm: Jacobi decoding
([CLLM, arXiv 2403.00835](https://arxiv.org/abs/2403.00835)) guesses a block of tokens, refines all of them in one
forward pass per step and keeps what agrees with greedy decoding. The output is identical to greedy decoding; the
speed-up comes from models trained for it (CLLMs accept 2-6 tokens per step, a plain model about one).

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")
tokenizer = AutoTokenizer.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")
inputs = tokenizer("What is 12 * 7?", return_tensors="pt")
out = model.generate(**inputs, custom_generate="{repo}", trust_remote_code=True, jacobi_n=16,
                     max_new_tokens=128, return_dict_in_generate=True)
```

## Additional generate arguments and outputs

{GENERATE_ARGUMENTS}

## Citation

```bibtex
{CITATION}
```
"""


def check_repo_id(repo_id: str) -> str:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"repo id {repo_id!r} is malformed ({error}); use 'user-or-org/name'") from None
    if repo_id.count("/") != 1:
        raise ValueError(f"repo id {repo_id!r} must look like 'user-or-org/name'")
    return repo_id


def check_can_push(token: str | None) -> str:
    """Offline or without a token, say so before anything is created or uploaded."""
    import huggingface_hub

    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise ValueError("cannot push: the Hub is offline here (HF_HUB_OFFLINE=1); nothing was pushed")
    token = token or huggingface_hub.get_token()
    if not token:
        raise ValueError("no Hugging Face token: run `hf auth login`, set HF_TOKEN, or pass token= / --token")
    return token


def _upload(stage: Path, repo_id: str, token: str, *, private, commit_message, revision, create_pr) -> str:
    """One commit with the whole staged folder, so a repo never holds half a push."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(
        folder_path=str(stage), repo_id=repo_id, commit_message=commit_message, revision=revision, create_pr=create_pr
    )
    return getattr(commit, "commit_url", None) or f"https://huggingface.co/{repo_id}"


def push_model(folder, repo_id: str, *, token: str | None = None, private: bool | None = None,
               commit_message: str | None = None, revision: str | None = None, create_pr: bool = False,
               jacobi_n: int | None = None, figures: dict | None = None) -> str:  # fmt: skip
    """Push a saved model folder as a CLLM: its files, `custom_generate/`, `generation_config.jacobi_n` and a model
    card (the folder's own, if hf_cllm wrote it). Returns the commit URL."""
    from transformers import GenerationConfig

    from .decoding import validate_jacobi_n

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder} is not a saved model: it has no config.json (save it with save_pretrained first)")
    check_repo_id(repo_id)
    token = check_can_push(token)
    with tempfile.TemporaryDirectory() as staging:
        stage = Path(staging) / "model"
        shutil.copytree(folder, stage, ignore=shutil.ignore_patterns("checkpoint-*", "runs", ".*", "__pycache__"))
        generation = (
            GenerationConfig.from_pretrained(stage)
            if (stage / "generation_config.json").is_file()
            else GenerationConfig.from_model_config(json.loads((stage / "config.json").read_text()))
        )
        jacobi_n = jacobi_n or getattr(generation, "jacobi_n", None)
        if jacobi_n is None:
            raise ValueError(f"{folder} has no generation_config.jacobi_n: pass jacobi_n= / --jacobi-n")
        generation.jacobi_n = validate_jacobi_n(jacobi_n)
        generation._from_model_config = False
        generation.save_pretrained(stage)
        write_custom_generate(stage)
        card = stage / "README.md"
        if not (card.is_file() and CARD_MARKER in card.read_text()):
            base = json.loads((stage / "config.json").read_text()).get("_name_or_path") or None
            card.write_text(model_card(jacobi_n, repo_id=repo_id, base_model=base, figures=figures))
        return _upload(stage, repo_id, token, private=private, revision=revision, create_pr=create_pr,
                       commit_message=commit_message or "Upload CLLM (hf_cllm)")  # fmt: skip


def push_decoder(repo_id: str, *, token: str | None = None, private: bool | None = None,
                 commit_message: str | None = None) -> str:  # fmt: skip
    """Push a standalone decoder repo (`custom_generate/` and a card) usable on any model with
    `generate(..., custom_generate=repo_id, trust_remote_code=True)`. Returns the commit URL."""
    check_repo_id(repo_id)
    token = check_can_push(token)
    with tempfile.TemporaryDirectory() as staging:
        stage = Path(staging)
        write_custom_generate(stage)
        (stage / "README.md").write_text(decoder_card(repo_id))
        return _upload(stage, repo_id, token, private=private, revision=None, create_pr=False,
                       commit_message=commit_message or "Upload Jacobi decoding (hf_cllm)")  # fmt: skip


def dataset_card(output_dir) -> str:
    """A Hub dataset card for a collected folder: what the rows are and how they were made."""
    settings = read_settings(output_dir)
    rows = load_trajectories(output_dir)
    states = sum(len(s) for s in rows["state_block"]) if len(rows) else 0
    return f"""---
tags:
- cllm
- jacobi-decoding
- consistency-distillation
configs:
- config_name: default
  data_files: {SHARD_DIR}/*.parquet
---

# Jacobi trajectories of `{settings["teacher"]}`

Training data for consistency distillation (CLLM, arXiv 2403.00835), collected with hf_cllm's
`collect_trajectories`: the teacher Jacobi-decoded every prompt greedily in blocks of
n={settings["jacobi_n"]} tokens (at most {settings["max_new_tokens"]} new tokens, KV-cached and batched), and every
state of every block on its way to its fixed point was kept.

- prompts: {len(rows)}; states: {states}; prompt format: `{settings["task"]}`, chat template: {settings["chat"]}
- augmentation: {settings["augment"]}; cleaning (repetition threshold {settings["repetition_threshold"]}):
  {settings["clean"]}; states per block capped at: {settings["max_states_per_block"]}; seed: {settings["seed"]}

## Schema (one row per prompt)

{schema_table()}"""


def push_trajectories(output_dir, repo_id: str, token: str | None = None, private: bool = False) -> str:
    """Upload a collected folder (parquet shards, settings and a dataset card) as a Hub dataset; returns its URL."""
    from huggingface_hub import HfApi

    output_dir = Path(output_dir)
    if not (output_dir / SETTINGS_FILE).is_file():
        raise ValueError(f"{output_dir} holds no collected trajectories ({SETTINGS_FILE} is missing)")
    check_repo_id(repo_id)
    token = check_can_push(token)
    (output_dir / "README.md").write_text(dataset_card(output_dir))
    api = HfApi(token=token)
    repo = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    api.upload_folder(  # one commit: the dataset repo never holds half a push
        folder_path=str(output_dir),
        repo_id=repo_id,
        repo_type="dataset",
        allow_patterns=["README.md", SETTINGS_FILE, f"{SHARD_DIR}/*.parquet"],
        commit_message="Upload Jacobi trajectories (hf_cllm)",
    )
    return str(getattr(repo, "url", repo))


def save_decoder(folder) -> Path:
    """The decoder repo's content in a local folder (usable as `custom_generate=folder`)."""
    folder = Path(folder)
    write_custom_generate(folder)
    (folder / "README.md").write_text(decoder_card())
    return folder
