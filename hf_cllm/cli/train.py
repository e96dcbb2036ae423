"""Consistency-train a model on collected Jacobi trajectories with CLLMTrainer.

Built on TRL's argument parser: every CLLMConfig / SFTConfig / TrainingArguments flag and TRL's model flags
(ModelConfig: --dtype, --attn_implementation, --use_peft, --lora_r, ...) work here and in a YAML file (--config).

  hf-cllm train --model_name_or_path HuggingFaceTB/SmolLM2-135M-Instruct --trajectories traj/ \\
      --output_dir smollm2-cllm --jacobi_n 16 [--eval_trajectories held_out/ --eval_strategy steps --eval_steps 100]
  hf-cllm train --config train.yaml
  accelerate launch -m hf_cllm train --config train.yaml        # DDP, FSDP or DeepSpeed from accelerate's config

--model_name_or_path defaults to the embedded smollm2-135m-instruct; --trajectories takes a folder written by
`hf-cllm collect`, a .parquet/.jsonl file, or a Hub dataset id.

Precision: where the device computes bfloat16 natively (a GPU with bf16, a CPU with AVX512-BF16 or AMX) and neither
--bf16 nor --fp16 is given (here, in the --config file, or as `accelerate launch --mixed_precision`), training runs
with --bf16 true: TrainingArguments' bfloat16 autocast, with float32 weights and optimizer state. --bf16 false keeps
float32. (--dtype is TRL's: the dtype the weights are loaded in.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .common import CLIError


HELP = "consistency-train a model on trajectories (CLLMTrainer; all TRL/TrainingArguments flags, --config YAML)"
PASSTHROUGH = True  # the arguments go to TRL's parser, not to argparse


@dataclass
class TrainScriptArguments:
    """Where the trajectories come from."""

    trajectories: str = field(
        default=None,
        metadata={
            "help": "Training trajectories: a `hf-cllm collect` folder, a .parquet/.jsonl file or a Hub id; several "
            "(e.g. the same prompts collected with different --seed) separated by commas are joined."
        },
    )
    eval_trajectories: str | None = field(
        default=None, metadata={"help": "Held-out trajectories for eval loss and eval_tpf (same forms)."}
    )
    eval_fraction: float = field(
        default=0.0, metadata={"help": "Hold out this share of the training trajectories for evaluation instead."}
    )


def add_arguments(parser) -> None:
    """Nothing: `hf_cllm.cli.main` hands every argument after `train` to TRL's parser (see `parser()`)."""


def parser():
    from trl import ModelConfig, TrlParser

    from ..config import CLLMConfig

    return TrlParser((TrainScriptArguments, CLLMConfig, ModelConfig), prog="hf-cllm train", description=__doc__)


def with_native_precision(arguments: list[str]) -> list[str]:
    """The arguments, plus `--bf16 true` where the device computes bfloat16 natively and the user chose no mixed
    precision (neither flag, nor a key of the --config file, nor `accelerate launch --mixed_precision`)."""
    import torch

    from ..fast import computes_bf16

    chosen = {argument.split("=")[0] for argument in arguments} & {"--bf16", "--fp16"}
    if "--config" in arguments and arguments.index("--config") + 1 < len(arguments):
        import yaml

        try:
            with open(arguments[arguments.index("--config") + 1]) as handle:
                chosen |= set(yaml.safe_load(handle) or {}) & {"bf16", "fp16"}
        except (OSError, yaml.YAMLError, TypeError):
            pass  # TRL's parser names the problem
    if (
        chosen
        or os.environ.get("ACCELERATE_MIXED_PRECISION")
        or not computes_bf16("cuda" if torch.cuda.is_available() else "cpu")
    ):
        return arguments
    return [*arguments, "--bf16", "true"]


def run(args) -> int:
    try:
        script_args, config, model_args = parser().parse_args_and_config(with_native_precision(args.arguments))
    except ValueError as error:  # a flag no parser knows, or a value CLLMConfig refuses
        raise CLIError(" ".join(str(error).split()) + " (`hf-cllm train --help` lists the flags)") from None
    return train(script_args, config, model_args)


def checkpoint_to_resume(value: str | None, output_dir: str) -> str | None:
    """`--resume_from_checkpoint` as the command line gives it (a string): `true` resumes from the newest checkpoint
    in --output_dir, or starts afresh when there is none yet, so one command both starts and resumes a long run;
    `false` starts afresh; anything else is a checkpoint folder."""
    from transformers.trainer_utils import get_last_checkpoint

    if value is None or value.lower() == "false":
        return None
    if value.lower() == "true":
        return get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    if not os.path.isdir(value):
        raise CLIError(f"--resume_from_checkpoint {value}: no such checkpoint folder; give one, or true/false")
    return value


def _check_writable(folder: str) -> None:
    """Fail before loading anything when the output folder cannot be written."""
    import tempfile
    from pathlib import Path

    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as error:
        raise CLIError(f"--output_dir {folder}: cannot write there ({error.strerror or error}); choose another folder")


def train(script_args, config, model_args) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import get_peft_config

    from ..assets import EMBEDDED_MODEL_NAME
    from ..trainer import CLLMTrainer
    from ..trajectories import load_trajectory_source
    from .common import end_processes, resolve_model_path

    if not script_args.trajectories:
        raise CLIError("--trajectories is required: a `hf-cllm collect` output folder, a parquet file or a Hub id")
    if not 0 <= script_args.eval_fraction < 1:
        raise CLIError(f"--eval_fraction must be in [0, 1), got {script_args.eval_fraction}")
    _check_writable(config.output_dir)
    checkpoint = checkpoint_to_resume(config.resume_from_checkpoint, config.output_dir)
    try:
        train_dataset = load_trajectory_source(script_args.trajectories)
        eval_dataset = load_trajectory_source(script_args.eval_trajectories) if script_args.eval_trajectories else None
    except ValueError as error:
        raise CLIError(str(error)) from None
    if script_args.eval_fraction and eval_dataset is None:
        split = train_dataset.train_test_split(test_size=script_args.eval_fraction, seed=config.seed)
        train_dataset, eval_dataset = split["train"], split["test"]

    path = resolve_model_path(model_args.model_name_or_path or EMBEDDED_MODEL_NAME)
    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, revision=model_args.model_revision)
        model = AutoModelForCausalLM.from_pretrained(
            path,
            revision=model_args.model_revision,
            dtype=dtype if dtype is not None else "auto",
            attn_implementation=model_args.attn_implementation or "sdpa",
        )
    except OSError as error:
        raise CLIError(f"--model_name_or_path {path}: could not load it ({str(error).splitlines()[0]})") from None
    try:
        trainer = CLLMTrainer(
            model=model,
            args=config,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            peft_config=get_peft_config(model_args),
        )
    except (ValueError, TypeError) as error:
        raise CLIError(str(error)) from None
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(config.output_dir)
    if config.push_to_hub:
        trainer.push_to_hub()
    if trainer.is_world_process_zero():
        precision = "bfloat16 autocast" if config.bf16 else "float16 autocast" if config.fp16 else "float32"
        print(f"Saved the CLLM to {config.output_dir} (jacobi_n={config.jacobi_n}, trained in {precision})")
    end_processes()
    return 0
