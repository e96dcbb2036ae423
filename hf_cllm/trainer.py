"""`CLLMTrainer`: consistency distillation (CLLM, arXiv 2403.00835, or its successor Jacobi Forcing) as a TRL
`SFTTrainer`.

Each training row is one prompt's Jacobi trajectory (`collect_trajectories`). The collator packs the prompt, the
teacher's answer and one intermediate state per block into one sequence (`hf_cllm.packing`; the recipe decides
which states and what they see), so a single forward gives both losses and a single backward trains them:

    loss = ar_weight · AR(answer) + consistency_weight · D(model on the fixed point, detached ‖ model on the state)
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import TrainerCallback
from trl import SFTTrainer

from .config import CLLMConfig
from .hub import CITATION, model_card, write_custom_generate
from .losses import ar_loss, consistency_loss
from .modeling import set_default_jacobi_n
from .packing import JacobiCollator, PackingOptions, check_packable, model_attention_mask
from .trajectories import validate_trajectories


class CLLMTrainer(SFTTrainer):
    """Trains a causal LM on Jacobi trajectories so that Jacobi decoding accepts several tokens per forward pass,
    while an AR loss keeps its greedy output.

    Args:
        model: a model, or a Hub id / folder that `SFTTrainer` loads.
        args (`CLLMConfig`): the method's options and every `SFTConfig`/`TrainingArguments` setting.
        train_dataset, eval_dataset: trajectory rows (`collect_trajectories` / `load_trajectories`). An evaluation
            dataset also gives `eval_tpf` at each evaluation (`CLLMConfig.tpf_eval_prompts`).
        processing_class: the tokenizer (required offline: SFTTrainer would otherwise fetch one from the Hub).
        peft_config: a `peft.LoraConfig` (or other PEFT config) to train adapters instead of all weights.
    """

    _tag_names = ["trl", "cllm", "jacobi-decoding", "consistency-distillation", "hf_cllm"]
    _name = "CLLM"
    _paper = {"title": "CLLMs: Consistency Large Language Models", "id": "2403.00835", "citation": CITATION}
    # compute_loss returns a mean over the micro-batch: the Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model,
        args: CLLMConfig | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        callbacks=None,
        optimizers=(None, None),
        peft_config=None,
        **kwargs,
    ):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = CLLMConfig(f"{str(name).split('/')[-1] or 'model'}-CLLM")
        if not isinstance(args, CLLMConfig):
            raise TypeError(f"args must be a CLLMConfig (it holds jacobi_n and the losses), got {type(args).__name__}")
        if processing_class is None and not isinstance(model, str):
            raise ValueError("processing_class is required: pass the model's tokenizer")
        train_dataset = prepare_trajectories(train_dataset, args, "train_dataset")
        if isinstance(eval_dataset, dict):
            eval_dataset = {k: prepare_trajectories(v, args, f"eval_dataset[{k!r}]") for k, v in eval_dataset.items()}
        else:
            eval_dataset = prepare_trajectories(eval_dataset, args, "eval_dataset")
        if processing_class is None:  # a Hub id / folder: its tokenizer, as SFTTrainer would load it
            from transformers import AutoTokenizer

            processing_class = AutoTokenizer.from_pretrained(model, trust_remote_code=args.trust_remote_code)
        if data_collator is None:
            data_collator = JacobiCollator(
                PackingOptions.from_config(args, processing_class),
                _padding_id(processing_class),
                seed=args.data_seed if args.data_seed is not None else args.seed,
            )
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
            peft_config=peft_config,
            **kwargs,
        )
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        check_packable(base)
        check_vocabulary(base, self.processing_class, [train_dataset, *_datasets(eval_dataset)])
        set_default_jacobi_n(base, args.jacobi_n)  # the saved model decodes with the n it was trained for
        self._cllm_base = base
        self.add_callback(_CollatorEpoch(self.data_collator))
        prompts = _eval_prompts(eval_dataset, args.tpf_eval_prompts)
        if prompts:
            self.add_callback(
                JacobiSpeedCallback(self, prompts, args.jacobi_n, args.tpf_eval_max_new_tokens, args.tpf_eval_blocks)
            )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """AR loss on the answer + consistency loss of the states, from one forward of the packed rows."""
        args = self.args
        mask = model_attention_mask(self._cllm_base, inputs["attention_mask"], inputs["position_ids"])
        outputs = model(
            input_ids=inputs["input_ids"], attention_mask=mask, position_ids=inputs["position_ids"], use_cache=False
        )
        logits = outputs.logits
        ar = ar_loss(logits, inputs["ar_labels"], label_smoothing=args.ar_label_smoothing)
        rows = torch.arange(logits.shape[0], device=logits.device)[:, None]
        per_pair = args.recipe == "jacobi_forcing"
        consistency = consistency_loss(
            logits[rows, inputs["student_positions"]],
            logits[rows, inputs["teacher_positions"]],  # detached inside: the stop-gradient target
            inputs["consistency_mask"],
            distance=args.distance,
            beta=args.jsd_beta,
            pairs=inputs["consistency_pair"] if per_pair else None,
            num_pairs=inputs["num_pairs"] if per_pair else None,
        )
        loss = args.ar_weight * ar + args.consistency_weight * consistency
        mode = "train" if model.training else "eval"
        self._metrics[mode]["ar_loss"].append(ar.detach())
        self._metrics[mode]["consistency_loss"].append(consistency.detach())
        self._metrics[mode]["consistency_positions"].append(inputs["consistency_mask"].sum().float())
        return (loss, outputs) if return_outputs else loss

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """Save the model, then (unlike SFTTrainer) its model card beside it, crediting the method."""
        super().save_model(output_dir, _internal_call)
        if not _internal_call and self.is_world_process_zero():
            output_dir = Path(output_dir or self.args.output_dir)
            self.create_model_card(model_name=output_dir.name)  # written to args.output_dir
            card = Path(self.args.output_dir) / "README.md"
            if card.resolve() != (output_dir / "README.md").resolve():
                os.replace(card, output_dir / "README.md")

    def _save(self, output_dir: str | None = None, state_dict=None):
        """Every save (final model and checkpoints) also gets `custom_generate/`, so the folder Jacobi-decodes for
        users who only have transformers."""
        super()._save(output_dir, state_dict)
        if self.is_world_process_zero():
            write_custom_generate(output_dir or self.args.output_dir)

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None, tags=None):
        """hf_cllm's model card (usage with and without hf_cllm, extra generate arguments, citation), with how the
        model was trained and the last measured `eval_tpf`."""
        if not self.is_world_process_zero():
            return
        args = self.args
        base = getattr(self._cllm_base.config, "_name_or_path", None)
        base = base if base and not os.path.isdir(base) else None
        recipe = (
            f"the Jacobi Forcing recipe ({args.noise_schedule} noise schedule, noisy-context mask)"
            if args.recipe == "jacobi_forcing"
            else f"the CLLM recipe ({args.consistency_loss} consistency loss)"
        )
        training = (
            f"Trained with hf_cllm's `CLLMTrainer` (TRL `SFTTrainer`) for {self.state.global_step} steps: "
            f"{recipe}, {args.distance} distance, AR weight {args.ar_weight} on the {args.ar_target} answer, "
            f"learning rate {args.learning_rate}."
        )
        evaluations = [log for log in self.state.log_history if "eval_tpf" in log]
        figures = None
        if evaluations:
            last = evaluations[-1]
            figures = {
                "TPF (Jacobi tokens per forward pass, held-out prompts, batch 1)": round(last["eval_tpf"], 3),
                "Jacobi output identical to greedy": f"{last['eval_jacobi_identical']:.0%}",
                "at training step": last["step"],
            }
        card = model_card(args.jacobi_n, repo_id=args.hub_model_id or model_name, base_model=base, figures=figures,
                          training=training)  # fmt: skip
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.output_dir) / "README.md").write_text(card)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation loss only: the packed batches have no per-token predictions worth returning."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # The losses were kept as device tensors (no host sync per step); average them, over processes too.
        mode = "train" if self.model.training else "eval"
        for key, values in self._metrics[mode].items():
            if values and isinstance(values[0], torch.Tensor):
                mean = self.accelerator.reduce(torch.stack(values).mean(), reduction="mean")
                self._metrics[mode][key] = [mean.item()]
        super().log(logs, start_time)


def _padding_id(tokenizer) -> int:
    """Padding of the packed batches: the tokenizer's pad token, else its EOS, else 0 (masked out either way)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return pad if pad is not None else 0


def _datasets(value) -> list:
    if value is None:
        return []
    return list(value.values()) if isinstance(value, dict) else [value]


def prepare_trajectories(dataset, args: CLLMConfig, name: str):
    """The trajectory contract's checks (`validate_trajectories`) with this config's block size and AR target."""
    return validate_trajectories(
        dataset, name, jacobi_n=args.jacobi_n, need_labels=args.ar_target == "labels",
        skip_degenerate=args.skip_degenerate,
    )  # fmt: skip


def check_vocabulary(model, tokenizer, datasets) -> None:
    """The tokenizer and the trajectories must fit the model's embedding matrix."""
    size = model.get_input_embeddings().num_embeddings  # not the weight: sharded under ZeRO-3 / FSDP
    if len(tokenizer) > size:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's embeddings only {size}: they do not belong "
            "together (or call model.resize_token_embeddings(len(tokenizer)) first)"
        )
    for dataset in datasets:
        for column in ("prompt_ids", "answer_ids", "states", "labels"):
            if column not in dataset.column_names:
                continue
            rows = [ids for ids in dataset[column] if ids]
            if column == "states":  # a list of states per row
                rows = [state for states in rows for state in states]
            ids = [token for row in rows for token in row]
            if ids and (min(ids) < 0 or max(ids) >= size):
                bad = min(ids) if min(ids) < 0 else max(ids)
                raise ValueError(
                    f"the trajectories' {column} hold token id {bad} but the model's vocabulary has ids 0 to "
                    f"{size - 1}: they were collected with another tokenizer/model"
                )


def _eval_prompts(eval_dataset, count: int) -> list[list[int]]:
    datasets = _datasets(eval_dataset)
    if not count or not datasets:
        return []
    return [list(ids) for ids in datasets[0].select(range(min(count, len(datasets[0]))))["prompt_ids"]]


class _CollatorEpoch(TrainerCallback):
    """Tells the collator which epoch it serves, so the states it draws for a row change from epoch to epoch."""

    def __init__(self, collator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        if hasattr(self.collator, "epoch"):
            self.collator.epoch = int(state.epoch or 0)


class JacobiSpeedCallback(TrainerCallback):
    """At each evaluation, Jacobi-decode held-out prompts (batch 1) with the model being trained and log `eval_tpf`
    (new tokens per forward pass, the number consistency training raises) and `eval_jacobi_identical` (share of
    prompts whose Jacobi output equals the model's own greedy output).

    Over several processes the figures are those of one process on all prompts: under data parallelism each process
    decodes its share and the counts are summed; with sharded parameters (FSDP, DeepSpeed ZeRO) every forward pass
    gathers them collectively, so every process decodes every prompt in step (the same tokens everywhere)."""

    def __init__(self, trainer, prompts: list[list[int]], jacobi_n: int, max_new_tokens: int = 128, blocks: int = 1):
        self.trainer, self.prompts, self.jacobi_n, self.max_new_tokens = trainer, prompts, jacobi_n, max_new_tokens
        self.blocks = blocks

    def on_evaluate(self, args, state, control, **kwargs):
        from .speed import jacobi_counts, tpf_figures

        trainer, accelerator = self.trainer, self.trainer.accelerator
        sharded = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled
        share = self.prompts if sharded else self.prompts[accelerator.process_index :: accelerator.num_processes]
        counts = jacobi_counts(trainer.model, share, self.jacobi_n, self.max_new_tokens, self.blocks)
        if accelerator.num_processes > 1 and not sharded:
            summed = accelerator.reduce(torch.tensor(list(counts.values()), device=accelerator.device), "sum")
            counts = dict(zip(counts, summed.tolist()))
        trainer.log({f"eval_{key}": value for key, value in tpf_figures(counts).items()})
