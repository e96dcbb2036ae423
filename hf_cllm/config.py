"""`CLLMConfig`: the training arguments of `CLLMTrainer`, in TRL's form (an `SFTConfig` with the method's options)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trl import SFTConfig

from .losses import DISTANCES
from .packing import NOISE_SCHEDULES, RECIPES


CONSISTENCY_LOSSES = ("global", "local")
AR_TARGETS = ("teacher", "labels")


@dataclass
class CLLMConfig(SFTConfig):
    r"""
    Configuration class for [`CLLMTrainer`]: consistency distillation (CLLM, arXiv 2403.00835) of a causal LM on
    Jacobi trajectories collected by `hf_cllm.collect_trajectories`.

    Only the method's parameters are listed here; see [`~trl.SFTConfig`] and [`~transformers.TrainingArguments`]
    for the rest. Defaults follow the paper (and its reference implementation where the paper is silent).

    Parameters:
        > Parameters that choose the recipe

        recipe (`str`, *optional*, defaults to `"cllm"`):
            `"cllm"`: the CLLM paper's consistency distillation — random intermediate states of every block, each
            seeing the clean (converged) blocks before it. `"jacobi_forcing"`: its successor's recipe (Jacobi
            Forcing) — every block of an answer as a (noisy state, fixed point) pair in one sequence, the state
            picked by a noise schedule, each noisy block seeing the earlier *noisy* blocks (the noisy-context mask,
            what decoding several blocks at once sees), the consistency loss normalised per pair, and AR on the
            prompt and clean blocks without label smoothing.
        noise_schedule (`str`, *optional*, defaults to `"progressive"`):
            `jacobi_forcing` only: which recorded state each block gets. `"progressive"`: block j the state whose
            noise (share of the block still wrong) is nearest level `j % noise_levels` of `linspace(0, 1,
            noise_levels)`, so noise rises along the answer (the best in the authors' ablation); `"random"`: a random
            level per block.
        noise_levels (`int`, *optional*):
            `jacobi_forcing` only: number of target noise levels (the schedule's window); defaults to `jacobi_n`.

        > Parameters that control Jacobi decoding

        jacobi_n (`int`, *optional*, defaults to `16`):
            Block size n: tokens decoded per Jacobi block. Must be the n the trajectories were collected with; it is
            saved in the model's generation config, so the trained model decodes with it by default.

        > Parameters that control the consistency loss

        consistency_loss (`str`, *optional*, defaults to `"global"`):
            `"global"` (the paper's default, and the only one its code implements): the model on an intermediate state
            of a block is pulled towards its own distributions on the block's fixed point. `"local"`: towards its
            distributions on the next state of the same trajectory (the paper's alternative).
        distance (`str`, *optional*, defaults to `"forward_kl"`):
            Distance between the two next-token distributions: `"forward_kl"` = KL(target ‖ model), the gradient of the
            paper's soft cross-entropy; `"reverse_kl"` = KL(model ‖ target); `"jsd"`: generalised Jensen–Shannon
            divergence with weight `jsd_beta`; `"hard_ce"`: cross-entropy to the target's most likely token (what
            Jacobi acceptance checks), not its whole distribution.
        jsd_beta (`float`, *optional*, defaults to `0.5`):
            Interpolation weight of `"jsd"`, strictly between 0 and 1.
        first_divergence_mask (`bool`, *optional*, defaults to `True`):
            Count only the positions of a state from its first token that differs from the target on: before it, the
            state and the target are the same input and give the same distributions (zero loss that would only dilute
            the average). `False` averages over every position of the block.
        states_per_block (`int`, *optional*, defaults to `1`):
            Intermediate states of every block packed into a row's sequence each time it is drawn (fewer where a block
            has fewer). The reference trains on every recorded state; here extra states share the row's prefix, but
            the packed sequence grows by about n tokens per block and state (4 states tripled the step time of
            SmolLM2-135M on a CPU).
        consistency_weight (`float`, *optional*, defaults to `1.0`):
            Weight of the consistency loss in the total loss.

        > Parameters that control the AR loss

        ar_weight (`float`, *optional*, defaults to `10.0`):
            Weight of the AR (next-token) loss that keeps greedy quality; the paper's ratio is AR 10 : consistency 1.
        ar_target (`str`, *optional*, defaults to `"teacher"`):
            `"teacher"`: the teacher's greedy answer recorded with the trajectories (the paper's default);
            `"labels"`: the dataset's gold answer (the `labels` column), which the CLLM authors recommend against
            collapse on GSM8K.
        ar_label_smoothing (`float`, *optional*):
            Label smoothing of the AR loss; defaults to 0.1 with `cllm` (the reference implementation's value) and 0
            with `jacobi_forcing` (its reference's).
        ar_on_prompt (`bool`, *optional*):
            Also apply the AR loss to the prompt tokens; defaults to False with `cllm` (the paper's loss covers the
            answer only; its reference code happens to include the prompt) and True with `jacobi_forcing`.
        skip_degenerate (`bool`, *optional*, defaults to `True`):
            Leave out rows whose teacher answer is flagged `degenerate` (a long run of one repeated token), so the AR
            loss does not teach the repetition behind the collapse the CLLM authors describe.

        > Parameters that control evaluation of decoding speed

        tpf_eval_prompts (`int`, *optional*, defaults to `8`):
            At each evaluation, Jacobi-decode this many prompts of the evaluation dataset (batch 1) and log `eval_tpf`
            (tokens per forward pass) and `eval_jacobi_identical` (share identical to greedy). `0` turns it off.
        tpf_eval_max_new_tokens (`int`, *optional*, defaults to `128`):
            New tokens per prompt in that measurement.
        tpf_eval_blocks (`int`, *optional*, defaults to `1`):
            `jacobi_blocks` of that measurement: more than 1 measures multi-block decoding, the decoder the
            `jacobi_forcing` recipe trains for.
    """

    recipe: str = field(
        default="cllm",
        metadata={"help": "Training recipe: 'cllm' (the CLLM paper's) or 'jacobi_forcing' (its successor's)."},
    )
    noise_schedule: str = field(
        default="progressive",
        metadata={"help": "jacobi_forcing: which state each block gets, 'progressive' or 'random'."},
    )
    noise_levels: int | None = field(
        default=None, metadata={"help": "jacobi_forcing: number of target noise levels (default: jacobi_n)."}
    )
    jacobi_n: int = field(default=16, metadata={"help": "Block size n of the trajectories and of Jacobi decoding."})
    consistency_loss: str = field(
        default="global",
        metadata={
            "help": "Consistency loss: 'global' (to the fixed point, the paper's) or 'local' (to the next state)."
        },
    )
    distance: str = field(
        default="forward_kl",
        metadata={
            "help": "Distance between distributions: 'forward_kl' (paper), 'reverse_kl', 'jsd' or 'hard_ce' (to the "
            "target's top token)."
        },
    )
    jsd_beta: float = field(default=0.5, metadata={"help": "Interpolation weight of the 'jsd' distance, in (0, 1)."})
    first_divergence_mask: bool = field(
        default=True,
        metadata={"help": "Count consistency positions only from the first token that differs from the target on."},
    )
    states_per_block: int = field(
        default=1, metadata={"help": "Intermediate states of every block packed per row and draw (random, distinct)."}
    )
    consistency_weight: float = field(default=1.0, metadata={"help": "Weight of the consistency loss."})
    ar_weight: float = field(default=10.0, metadata={"help": "Weight of the AR loss (paper: 10 to consistency 1)."})
    ar_target: str = field(
        default="teacher",
        metadata={"help": "AR loss target: 'teacher' (the recorded greedy answer) or 'labels' (the gold answer)."},
    )
    ar_label_smoothing: float | None = field(
        default=None, metadata={"help": "Label smoothing of the AR loss (default: 0.1 cllm, 0 jacobi_forcing)."}
    )
    ar_on_prompt: bool | None = field(
        default=None,
        metadata={"help": "Apply the AR loss to the prompt tokens too (default: False cllm, True jacobi_forcing)."},
    )
    skip_degenerate: bool = field(
        default=True, metadata={"help": "Leave out rows whose teacher answer is flagged degenerate."}
    )
    tpf_eval_prompts: int = field(
        default=8, metadata={"help": "Evaluation prompts Jacobi-decoded to log eval_tpf (0: off)."}
    )
    tpf_eval_max_new_tokens: int = field(
        default=128, metadata={"help": "New tokens per prompt when measuring eval_tpf."}
    )
    tpf_eval_blocks: int = field(default=1, metadata={"help": "jacobi_blocks when measuring eval_tpf."})

    # Overridden defaults. The trajectories are already tokenized and packed by the trainer's collator, so SFT's
    # dataset preparation is skipped and the rows keep all their columns.
    dataset_kwargs: dict[str, Any] | None = field(
        default_factory=lambda: {"skip_prepare_dataset": True},
        metadata={"help": "Dataset preparation options; CLLMTrainer needs skip_prepare_dataset=True."},
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: the collator reads the trajectory columns."}
    )
    # transformers 5 renamed gradient_checkpointing; leaving the old name unset avoids its deprecation warning.
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Deprecated alias of activation_checkpointing.", "nargs": "?", "const": True}
    )
    # TrainingArguments turns the model's cache off for training; the trained model is for (Jacobi) decoding, which
    # needs it. The training forward passes use_cache=False itself.
    use_cache: bool = field(default=True, metadata={"help": "Leave the model's KV cache on after training."})
    bf16: bool | None = field(
        default=None,
        metadata={"help": "bf16 mixed precision; defaults to True on a GPU that supports it, else False."},
    )

    def __post_init__(self):
        import torch

        if self.bf16 is None:
            self.bf16 = (
                not self.fp16 and not self.use_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            )
        if self.bf16 and not self.use_cpu and torch.accelerator.current_accelerator() is None:
            # A machine with only a CPU: bf16 autocast runs there, but TrainingArguments refuses bf16 without use_cpu.
            self.use_cpu = True
        super().__post_init__()
        if not isinstance(self.jacobi_n, int) or self.jacobi_n < 2:
            raise ValueError(f"jacobi_n must be an integer >= 2 (tokens per Jacobi block), got {self.jacobi_n!r}")
        for name, value, allowed in (
            ("recipe", self.recipe, RECIPES),
            ("noise_schedule", self.noise_schedule, NOISE_SCHEDULES),
            ("consistency_loss", self.consistency_loss, CONSISTENCY_LOSSES),
            ("distance", self.distance, DISTANCES),
            ("ar_target", self.ar_target, AR_TARGETS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
        forcing = self.recipe == "jacobi_forcing"
        if self.ar_label_smoothing is None:
            self.ar_label_smoothing = 0.0 if forcing else 0.1
        if self.ar_on_prompt is None:
            self.ar_on_prompt = forcing
        if self.noise_levels is not None and (not isinstance(self.noise_levels, int) or self.noise_levels < 2):
            raise ValueError(f"noise_levels must be an integer >= 2 (or unset: jacobi_n), got {self.noise_levels!r}")
        if forcing and self.consistency_loss != "global":
            raise ValueError(
                "recipe='jacobi_forcing' pulls each noisy block towards its fixed point: use consistency_loss='global'"
            )
        if forcing and self.states_per_block != 1:
            raise ValueError(
                "states_per_block is the cllm recipe's; recipe='jacobi_forcing' packs one state per block, picked by "
                "noise_schedule: leave states_per_block at 1"
            )
        if not isinstance(self.states_per_block, int) or self.states_per_block < 1:
            raise ValueError(f"states_per_block must be an integer >= 1, got {self.states_per_block!r}")
        if not 0 < self.jsd_beta < 1:
            raise ValueError(f"jsd_beta must be strictly between 0 and 1, got {self.jsd_beta}")
        if self.ar_weight < 0 or self.consistency_weight < 0 or self.ar_weight + self.consistency_weight == 0:
            raise ValueError("ar_weight and consistency_weight must be >= 0 and not both 0")
        if not 0 <= self.ar_label_smoothing < 1:
            raise ValueError(f"ar_label_smoothing must be in [0, 1), got {self.ar_label_smoothing}")
        if not (self.dataset_kwargs or {}).get("skip_prepare_dataset") or self.remove_unused_columns:
            raise ValueError(
                "CLLMTrainer reads the trajectory columns itself: keep dataset_kwargs={'skip_prepare_dataset': True} "
                "and remove_unused_columns=False"
            )
        if self.tpf_eval_prompts < 0 or self.tpf_eval_max_new_tokens < 1 or self.tpf_eval_blocks < 1:
            raise ValueError("tpf_eval_prompts must be >= 0, tpf_eval_max_new_tokens and tpf_eval_blocks >= 1")
