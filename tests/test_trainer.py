"""CLLMTrainer: packing, losses against separate forwards, training mechanics, guard rails, and the end-to-end proof
on a toy language that consistency training raises TPF while Jacobi stays lossless."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers
from datasets import Dataset
from tiny import ARCHITECTURES
from toy import JACOBI_N, counting_share

from hf_cllm import AutoCLLMForCausalLM, CLLMConfig, CLLMTrainer, collect_trajectories
from hf_cllm.losses import ar_loss, consistency_loss
from hf_cllm.packing import IGNORE_INDEX, JacobiCollator, PackingOptions, model_attention_mask, pack_row, pick_states
from hf_cllm.speed import jacobi_speed


N = JACOBI_N

# A hand-made row: prompt of 5, answer of 14 (blocks of 8 and 6), two states of block 0 and one of block 1.
ROW = dict(
    prompt_ids=[5, 6, 7, 8, 9],
    answer_ids=list(range(20, 34)),
    states=[[20, 50, 51, 52, 53, 54, 55, 56], [20, 21, 22, 60, 61, 62, 63, 64], [28, 29, 70, 71, 72, 73]],
    state_block=[0, 0, 1],
    state_step=[0, 1, 0],
    labels=[100, 101, 102],
    degenerate=False,
)
SHORT_ROW = dict(
    prompt_ids=[11, 12],
    answer_ids=[40, 41, 42, 43],
    states=[[40, 3, 3, 3]],
    state_block=[0],
    state_step=[0],
    labels=[7],
    degenerate=False,
)


def config(tmp_path, **overrides):
    settings = dict(
        output_dir=str(tmp_path / "out"),
        jacobi_n=N,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        per_device_train_batch_size=8,
        max_steps=2,
        logging_steps=1,
        seed=0,
    )
    return CLLMConfig(**{**settings, **overrides})


# --- packing -------------------------------------------------------------------------------------------------------


def test_pack_row_lays_out_targets_and_the_first_divergence_mask():
    torch.manual_seed(0)
    packed = pack_row(ROW, PackingOptions(N), torch.Generator().manual_seed(1))
    p, a = 5, 14
    assert packed.input_ids[: p + a] == ROW["prompt_ids"] + ROW["answer_ids"]
    # AR: the last prompt token predicts the first answer token, and so on; nothing on the prompt itself.
    assert packed.ar_labels[p - 1 : p + a - 1] == ROW["answer_ids"]
    assert set(packed.ar_labels[: p - 1]) == {IGNORE_INDEX} and packed.ar_labels[p + a - 1] == IGNORE_INDEX
    # Block 1's state sits after the block-0 state, positioned where block 1 starts, and pairs with the answer there.
    block1 = len(packed.input_ids) - 6
    assert packed.input_ids[block1:] == ROW["states"][2]
    assert packed.position_ids[block1:] == list(range(p + N, p + N + 6))
    pairs = [(s, t, m) for s, t, m in zip(packed.student_positions, packed.teacher_positions, packed.consistency_mask)]
    block1_pairs = [pair for pair in pairs if pair[0] >= block1]
    # The last answer token (EOS here) predicts nothing: 5 pairs, not 6. Tokens 0-1 agree with the answer.
    assert [(s - block1, t - (p + N), m) for s, t, m in block1_pairs] == [
        (0, 0, False), (1, 1, False), (2, 2, True), (3, 3, True), (4, 4, True),
    ]  # fmt: skip


def test_pick_states_draws_distinct_states_per_block():
    state_block = [0] * 5 + [1] * 2 + [3]
    for seed in range(20):
        chosen = pick_states(state_block, torch.Generator().manual_seed(seed), per_block=3)
        assert sorted(chosen) == [0, 1, 3]
        assert len(set(chosen[0])) == 3 and set(chosen[0]) <= set(range(5))
        assert chosen[1] == [5, 6] and chosen[3] == [7]  # fewer states than asked: all of them
    draws = {tuple(pick_states(state_block, torch.Generator().manual_seed(seed))[0]) for seed in range(40)}
    assert len(draws) == 5  # one state of block 0 per draw, every one of them reachable


def test_pack_row_options():
    local = pack_row(ROW, PackingOptions(N, consistency="local"), torch.Generator().manual_seed(0))
    every = pack_row(ROW, PackingOptions(N, first_divergence_mask=False), torch.Generator().manual_seed(0))
    gold = pack_row(ROW, PackingOptions(N, ar_target="labels", ar_on_prompt=True, eos_token_id=2))
    assert all(every.consistency_mask)
    # Local: a state's target is the next state of its block (one more segment) unless it is the block's last.
    assert len(local.input_ids) in (5 + 14 + 8 + 6, 5 + 14 + 8 + 8 + 6)
    # Gold labels: their own segment after the prompt, ending with EOS; prompt tokens are targets too.
    assert gold.input_ids[19:23] == [100, 101, 102, 2] and gold.position_ids[19:23] == [5, 6, 7, 8]
    assert gold.ar_labels[:4] == [6, 7, 8, 9] and gold.ar_labels[4] == 100 and gold.ar_labels[19:22] == [101, 102, 2]
    assert set(gold.ar_labels[5:19]) == {IGNORE_INDEX}


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_one_packed_forward_equals_separate_forwards(arch, implementation, tiny_config):
    """Every position of the packed batch has the logits of a separate forward over what it may see; sliding-window
    layers included (the rows are longer than the tiny models' window of 8)."""
    cfg = tiny_config(arch)
    cfg._attn_implementation = implementation
    torch.manual_seed(0)
    try:
        model = getattr(transformers, ARCHITECTURES[arch][0])(cfg).eval()
    except ValueError:
        pytest.skip(f"{arch} has no {implementation} attention")
    for consistency, target in (("global", "teacher"), ("local", "labels")):
        torch.manual_seed(1)
        options = PackingOptions(N, consistency=consistency, ar_target=target, eos_token_id=2)
        batch = JacobiCollator(options, 0)([ROW, SHORT_ROW])
        mask = model_attention_mask(model, batch["attention_mask"], batch["position_ids"])
        with torch.no_grad():
            logits = model(batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"]).logits
        for row in range(2):
            real = batch["position_ids"][row] > 0  # padding has position 0, like only the first token
            real[0] = True
            for t in real.nonzero().flatten().tolist():
                visible = batch["attention_mask"][row, 0, t].nonzero().flatten()
                with torch.no_grad():
                    expected = model(input_ids=batch["input_ids"][row, visible][None]).logits[0, -1]
                torch.testing.assert_close(logits[row, t], expected, atol=2e-5, rtol=1e-4)


def test_flash_attention_is_refused_clearly(tiny_config):
    model = transformers.LlamaForCausalLM(tiny_config("llama"))
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="attn_implementation='sdpa'"):
        model_attention_mask(model, torch.ones(1, 1, 2, 2, dtype=torch.bool), torch.zeros(1, 2, dtype=torch.long))


# --- the losses of one step against the reference's separate forwards ---------------------------------------------


def reference_losses(model, row, state_index, n, smoothing):
    """AR loss on prompt+answer and the global consistency loss of the chosen states of each block, each from its
    own forward, as the reference trainer computes them."""
    prompt, answer = row["prompt_ids"], row["answer_ids"]
    full = torch.tensor([prompt + answer])
    logits = model(input_ids=full).logits[0]
    labels = torch.full((len(prompt) + len(answer),), IGNORE_INDEX)
    labels[len(prompt) - 1 : -1] = torch.tensor(answer)
    ar = ar_loss(logits[None], labels[None], label_smoothing=smoothing)
    students, teachers, masks = [], [], []
    for block, index in ((block, index) for block, indices in state_index.items() for index in indices):
        state = row["states"][index]
        start = len(prompt) + block * n
        student = model(input_ids=torch.tensor([prompt + answer[: block * n] + state])).logits[0, start:]
        usable = min(len(state), len(answer) - block * n - 1)
        wrong = next((j for j in range(len(state)) if state[j] != answer[block * n + j]), len(state))
        students.append(student[:usable])
        teachers.append(logits[start : start + usable].detach())
        masks.append(torch.arange(usable) >= wrong)
    consistency = consistency_loss(torch.cat(students)[None], torch.cat(teachers)[None], torch.cat(masks)[None])
    return ar, consistency


@pytest.mark.parametrize("states_per_block", [1, 2])
def test_one_forward_one_backward_gives_the_reference_gradient(tmp_path, states_per_block, toy_model, toy_tokenizer):
    """The packed single-backward loss has the same value and gradient as AR + consistency from separate forwards,
    with one state per block and with several (block 0 has two states, block 1 one)."""
    model = toy_model()
    row = dict(ROW, prompt_ids=[3, 4, 5, 6, 7], answer_ids=list(range(8, 22)), labels=None)
    row["states"] = [[8, 20, 21, 3, 4, 5, 6, 7], [8, 9, 10, 25, 4, 4, 4, 4], [16, 17, 3, 3, 3, 3]]
    trainer = CLLMTrainer(
        model=model,
        args=config(tmp_path, states_per_block=states_per_block),
        train_dataset=Dataset.from_list([row]),
        processing_class=toy_tokenizer(),
    )
    model.train()
    torch.manual_seed(5)
    batch = trainer.data_collator([row])
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    packed_grad = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch.manual_seed(5)
    chosen = pick_states(row["state_block"], per_block=states_per_block)  # the collator's draw, replayed
    assert [len(chosen[0]), len(chosen[1])] == [states_per_block, 1]
    ar, consistency = reference_losses(model, row, chosen, N, 0.1)
    expected = 10 * ar + consistency
    expected.backward()
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    for packed, reference in zip(packed_grad, (p.grad for p in model.parameters())):
        torch.testing.assert_close(packed, reference, atol=1e-5, rtol=1e-4)


# --- end to end ----------------------------------------------------------------------------------------------------


def test_consistency_training_raises_tpf_and_stays_lossless(
    toy_trajectories, tmp_path, toy_model, toy_tokenizer, toy_prompts, held_out_prompts
):
    """The toy model accepts ~1 token per forward; after consistency training on its own trajectories it accepts
    clearly more, its Jacobi output still equals its greedy output, and its greedy answers still count on."""
    model, tokenizer = toy_model(), toy_tokenizer()
    prompts = held_out_prompts()
    held_out = collect_trajectories(
        model, tokenizer, toy_prompts(16, seed=99), jacobi_n=N, max_new_tokens=32, output_dir=tmp_path / "held_out",
        chat=False, progress=False,
    )  # fmt: skip
    args = config(
        tmp_path, max_steps=400, learning_rate=2e-3, lr_scheduler_type="constant", eval_strategy="steps",
        eval_steps=400, eval_on_start=True, tpf_eval_prompts=16, tpf_eval_max_new_tokens=32, logging_steps=50,
    )  # fmt: skip
    trainer = CLLMTrainer(
        model=model, args=args, train_dataset=toy_trajectories, eval_dataset=held_out, processing_class=tokenizer
    )
    trainer.train()
    evaluations = [log for log in trainer.state.log_history if "eval_tpf" in log]
    before, after = evaluations[0], evaluations[-1]
    assert (before["step"], after["step"]) == (0, 400)
    assert before["eval_tpf"] < 1.2
    assert after["eval_tpf"] >= 1.5 * before["eval_tpf"], (before, after)
    assert before["eval_jacobi_identical"] == after["eval_jacobi_identical"] == 1.0
    # An independent measurement agrees with the logged one, and the greedy answers kept their quality.
    assert jacobi_speed(model, prompts, N, 32)["tpf"] == pytest.approx(after["eval_tpf"])
    assert counting_share(model, prompts) >= 0.9  # greedy answers still follow the language's rule
    trainer.save_model()
    assert f"| {round(after['eval_tpf'], 3)} |" in (tmp_path / "out" / "README.md").read_text()  # measured TPF
    losses = [log for log in trainer.state.log_history if "ar_loss" in log and "eval_tpf" not in log]
    assert losses[-1]["consistency_loss"] < 0.5 * losses[0]["consistency_loss"]


# --- training mechanics --------------------------------------------------------------------------------------------


def test_a_step_changes_parameters_and_logs_both_losses(toy_trajectories, tmp_path, toy_model, toy_tokenizer):
    model = toy_model()
    before = {k: v.clone() for k, v in model.named_parameters()}
    trainer = CLLMTrainer(
        model=model, args=config(tmp_path), train_dataset=toy_trajectories, processing_class=toy_tokenizer()
    )
    trainer.train()
    assert all(not torch.equal(before[k], v) for k, v in model.named_parameters())
    logged = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logged) == 2
    for log in logged:
        assert log["ar_loss"] > 0 and log["consistency_loss"] > 0
        assert log["loss"] == pytest.approx(10 * log["ar_loss"] + log["consistency_loss"], rel=1e-4)


def one_state_per_block(dataset):
    """Rows with the first state of each block only, so a batch does not depend on the random draw."""

    def first(row):
        keep = [i for i, b in enumerate(row["state_block"]) if i == 0 or row["state_block"][i - 1] != b]
        return {key: [row[key][i] for i in keep] for key in ("states", "state_block", "state_step")}

    return dataset.map(first)


@pytest.fixture(scope="session")
def sgd_update(toy_tokenizer):
    """`sgd_update(model, tmp_path, dataset, **overrides)`: the gradient one plain SGD step of CLLMTrainer used."""

    def sgd_update(model, tmp_path, dataset, **overrides):
        args = config(
            tmp_path, optim="sgd", learning_rate=0.1, max_grad_norm=0.0, lr_scheduler_type="constant", max_steps=1,
            weight_decay=0.0, **overrides,
        )  # fmt: skip
        before = {k: v.clone() for k, v in model.named_parameters()}
        CLLMTrainer(model=model, args=args, train_dataset=dataset, processing_class=toy_tokenizer()).train()
        return {k: (v - before[k]) / -0.1 for k, v in model.named_parameters()}  # the gradient used

    return sgd_update


def test_gradient_accumulation_averages_micro_batches(
    toy_trajectories, tmp_path, toy_model, toy_tokenizer, sgd_update
):
    rows = one_state_per_block(toy_trajectories.select(range(2)))
    accumulated = sgd_update(toy_model(), tmp_path, rows, per_device_train_batch_size=1, gradient_accumulation_steps=2)
    model = toy_model().train()
    trainer = CLLMTrainer(model=model, args=config(tmp_path), train_dataset=rows, processing_class=toy_tokenizer())
    for i in range(2):  # each micro-batch's mean loss, halved
        (trainer.compute_loss(model, trainer.data_collator([rows[i]])) / 2).backward()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(accumulated[name], parameter.grad, atol=1e-5, rtol=1e-4)


def test_activation_checkpointing_gives_the_same_gradient(toy_trajectories, tmp_path, toy_model, sgd_update):
    rows = one_state_per_block(toy_trajectories.select(range(4)))
    plain = sgd_update(toy_model(), tmp_path, rows)
    checkpointed = sgd_update(toy_model(), tmp_path, rows, activation_checkpointing=True)
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], atol=1e-5, rtol=1e-4)


def test_bf16_mixed_precision_step_runs(toy_trajectories, tmp_path, toy_model, toy_tokenizer):
    model = toy_model()
    trainer = CLLMTrainer(
        model=model, args=config(tmp_path, bf16=True, max_steps=1), train_dataset=toy_trajectories,
        processing_class=toy_tokenizer(),
    )  # fmt: skip
    trainer.train()
    assert torch.isfinite(torch.tensor(trainer.state.log_history[0]["loss"]))
    assert model.dtype == torch.float32  # autocast, weights stay fp32


def test_lora_trains_adapters_only(toy_trajectories, tmp_path, toy_model, toy_tokenizer, held_out_prompts):
    peft = pytest.importorskip("peft")
    model = toy_model()
    base = {k: v.clone() for k, v in model.named_parameters()}
    trainer = CLLMTrainer(
        model=model, args=config(tmp_path, max_steps=3, learning_rate=1e-2), train_dataset=toy_trajectories,
        processing_class=toy_tokenizer(), peft_config=peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"),
    )  # fmt: skip
    trainer.train()
    names = dict(trainer.model.named_parameters())
    lora = {k: v for k, v in names.items() if "lora_B" in k}
    assert lora and all(v.abs().sum() > 0 for v in lora.values())  # B starts at zero
    frozen = {k.replace("base_model.model.", "").replace(".base_layer", ""): v for k, v in names.items()}
    assert all(torch.equal(frozen[k], base[k]) for k in base)
    merged = trainer.model.merge_and_unload()
    prompt = torch.tensor([held_out_prompts(1)[0]])
    greedy = merged.generate(prompt, max_new_tokens=16, do_sample=False)
    jacobi = AutoCLLMForCausalLM.from_config(merged.config)  # the decoder on the merged weights
    jacobi.load_state_dict(merged.state_dict())
    assert torch.equal(jacobi.eval().generate(prompt, max_new_tokens=16, do_sample=False, jacobi_n=N), greedy)


def test_saved_model_reloads_and_decodes_with_its_jacobi_n(
    toy_trajectories, tmp_path, toy_model, toy_tokenizer, held_out_prompts
):
    trainer = CLLMTrainer(
        model=toy_model(), args=config(tmp_path, max_steps=1), train_dataset=toy_trajectories,
        processing_class=toy_tokenizer(),
    )  # fmt: skip
    trainer.train()
    trainer.save_model()
    card = (tmp_path / "out" / "README.md").read_text()
    assert "- cllm" in card and "2403.00835" in card and "CLLMTrainer" in card and "trust_remote_code=True" in card
    assert (tmp_path / "out" / "custom_generate" / "generate.py").is_file()  # Jacobi with transformers alone
    reloaded = AutoCLLMForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert reloaded.generation_config.jacobi_n == N
    prompt = torch.tensor([held_out_prompts(1)[0]])
    out = reloaded.generate(prompt, max_new_tokens=24, do_sample=False, return_dict_in_generate=True)
    assert out.num_forward_passes is not None  # Jacobi, from the saved jacobi_n
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert torch.equal(out.sequences, plain.generate(prompt, max_new_tokens=24, do_sample=False))


class StopAfter(transformers.TrainerCallback):
    """Ends training after `step` steps, as a killed run would (its checkpoint is already written)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = state.global_step >= self.step


def test_resuming_from_a_checkpoint_continues_where_it_stopped(toy_trajectories, tmp_path, toy_model, toy_tokenizer):
    def run(folder, resume=None, callbacks=None):
        args = config(tmp_path, output_dir=str(tmp_path / folder), max_steps=4, save_strategy="steps",
                      save_steps=2, per_device_train_batch_size=4)  # fmt: skip
        trainer = CLLMTrainer(model=toy_model(), args=args, train_dataset=toy_trajectories,
                              processing_class=toy_tokenizer(), callbacks=callbacks)  # fmt: skip
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    straight = run("straight")
    interrupted = run("interrupted", callbacks=[StopAfter(2)])
    assert interrupted.state.global_step == 2
    resumed = run("interrupted", resume=str(tmp_path / "interrupted" / "checkpoint-2"))
    assert resumed.state.global_step == 4
    losses = [[log["loss"] for log in t.state.log_history if "loss" in log] for t in (straight, resumed)]
    assert losses[1][-2:] == pytest.approx(losses[0][2:], rel=1e-5)  # steps 3 and 4 as in the uninterrupted run
    for (name, a), (_, b) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)


# --- guard rails ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda ds: ds.select([]), "is empty"),
        (lambda ds: ds.remove_columns("states"), "columns \\['states'\\] are missing"),
        # without the collection's record, n is inferred from the rows
        (
            lambda ds: Dataset.from_list(ds.map(lambda r: {"states": [s[:4] for s in r["states"]]}).to_list()),
            "collected with jacobi_n=4",
        ),
        (lambda ds: ds.map(lambda r: {"states": [s + s for s in r["states"]]}), "longer than the jacobi_n=8"),
        (lambda ds: ds.map(lambda r: {"prompt_ids": r["prompt_ids"] + [999]}), "token id 999"),
        (lambda ds: ds.map(lambda r: {"states": [[999] * len(s) for s in r["states"]]}), "states hold token id 999"),
        (lambda ds: ds.map(lambda r: {"degenerate": True}), "every row of train_dataset is flagged degenerate"),
    ],
)
def test_bad_trajectories_are_refused_before_training(
    toy_trajectories, tmp_path, change, message, toy_model, toy_tokenizer
):
    with pytest.raises(ValueError, match=message):
        CLLMTrainer(
            model=toy_model(), args=config(tmp_path), train_dataset=change(toy_trajectories),
            processing_class=toy_tokenizer(),
        )  # fmt: skip


def test_config_mismatches_are_refused(toy_trajectories, tmp_path, toy_model, toy_tokenizer):
    with pytest.raises(ValueError, match="collected with jacobi_n=8 but CLLMConfig.jacobi_n=16"):
        CLLMTrainer(model=toy_model(), args=config(tmp_path, jacobi_n=16), train_dataset=toy_trajectories,
                    processing_class=toy_tokenizer())  # fmt: skip
    with pytest.raises(ValueError, match="ar_target='labels' needs a gold answer"):
        CLLMTrainer(model=toy_model(), args=config(tmp_path, ar_target="labels"), train_dataset=toy_trajectories,
                    processing_class=toy_tokenizer())  # fmt: skip
    with pytest.raises(ValueError, match="the tokenizer has 27 tokens but the model's embeddings only 20"):
        small = transformers.LlamaForCausalLM(
            transformers.LlamaConfig(
                vocab_size=20, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
            )
        )
        CLLMTrainer(model=small, args=config(tmp_path), train_dataset=toy_trajectories,
                    processing_class=toy_tokenizer())  # fmt: skip
    with pytest.raises(TypeError, match="args must be a CLLMConfig"):
        CLLMTrainer(model=toy_model(), args=transformers.TrainingArguments(str(tmp_path)),
                    train_dataset=toy_trajectories, processing_class=toy_tokenizer())  # fmt: skip


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (dict(jacobi_n=1), "jacobi_n must be an integer >= 2"),
        (dict(consistency_loss="pairwise"), "consistency_loss must be one of 'global', 'local'"),
        (dict(distance="l2"), "distance must be one of"),
        (dict(ar_target="gold"), "ar_target must be one of 'teacher', 'labels'"),
        (dict(jsd_beta=1.0), "jsd_beta must be strictly between 0 and 1"),
        (dict(states_per_block=0), "states_per_block must be an integer >= 1"),
        (dict(ar_weight=0.0, consistency_weight=0.0), "not both 0"),
        (dict(remove_unused_columns=True), "remove_unused_columns=False"),
    ],
)
def test_config_validation_names_the_argument(tmp_path, option, message):
    with pytest.raises(ValueError, match=message):
        config(tmp_path, **option)


# --- processes and the command line --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_folders(tmp_path_factory, toy_trajectory_dir, toy_model, toy_tokenizer):
    """The toy model and its trajectories on disk, as a user of the command line has them."""
    root = tmp_path_factory.mktemp("toy_folders")
    toy_model().save_pretrained(root / "model")
    toy_tokenizer().save_pretrained(root / "model")
    return root, str(toy_trajectory_dir)


def test_train_command_line_with_a_yaml_config(toy_folders, tmp_path):
    from hf_cllm.cli import main

    model_dir, trajectories = toy_folders
    (tmp_path / "train.yaml").write_text(
        textwrap.dedent(f"""
        model_name_or_path: {model_dir / "model"}
        trajectories: {trajectories}
        eval_fraction: 0.1
        output_dir: {tmp_path / "cllm"}
        jacobi_n: {N}
        max_steps: 3
        per_device_train_batch_size: 4
        use_cpu: true
        report_to: none
        save_strategy: "no"
        tpf_eval_prompts: 2
        tpf_eval_max_new_tokens: 16
    """)
    )
    assert main(["train", "--config", str(tmp_path / "train.yaml"), "--learning_rate", "1e-3", "--eval_strategy",
                 "steps", "--eval_steps", "3"]) == 0  # fmt: skip
    state = (tmp_path / "cllm" / "README.md").read_text()
    assert "2403.00835" in state
    reloaded = AutoCLLMForCausalLM.from_pretrained(tmp_path / "cllm")
    assert reloaded.generation_config.jacobi_n == N


def test_train_command_line_errors(toy_folders, tmp_path, capsys):
    from hf_cllm.cli import main

    model_dir, trajectories = toy_folders
    common = ["--model_name_or_path", str(model_dir / "model"), "--output_dir", str(tmp_path), "--use_cpu", "true"]
    assert main(["train", *common]) == 2
    assert "--trajectories is required" in capsys.readouterr().err
    assert main(["train", *common, "--trajectories", str(tmp_path)]) == 2
    assert "was not written by `hf-cllm collect`" in capsys.readouterr().err
    assert main(["train", *common, "--trajectories", trajectories, "--jacobi_n", "4"]) == 2
    assert "collected with jacobi_n=8 but CLLMConfig.jacobi_n=4" in capsys.readouterr().err
    # each of these is one line naming the fix, exit 2, before any model is loaded
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "garbage.parquet").write_text("not parquet")
    damaged = tmp_path / "damaged"
    shutil.copytree(trajectories, damaged)
    next((damaged / "shards").iterdir()).write_text("garbage")
    empty = tmp_path / "empty"
    (empty / "shards").mkdir(parents=True)
    shutil.copy(Path(trajectories) / "collection.json", empty)
    data = ["--trajectories", trajectories]
    cases = {
        ("--output_dir", str(tmp_path / "a_file" / "out"), *data): "cannot write there (Not a directory)",
        ("--trajectories", str(tmp_path / "garbage.parquet")): "garbage.parquet is not a readable parquet file",
        ("--trajectories", str(damaged)): "is not a readable parquet file",
        ("--trajectories", str(empty)): "holds no collected trajectories",
        ("--distance", "l2", *data): "distance must be one of 'forward_kl', 'reverse_kl', 'jsd', 'hard_ce'; got 'l2'",
        ("--no_such_flag", "3", *data): "not used by the HfArgumentParser: ['--no_such_flag', '3']",
        ("--resume_from_checkpoint", str(tmp_path / "nowhere"), *data): "no such checkpoint folder; give one, or true",
    }
    for arguments, message in cases.items():
        assert main(["train", *common, *arguments]) == 2, arguments
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_one_train_command_starts_and_resumes(toy_folders, tmp_path):
    """`--resume_from_checkpoint true` (a string on the command line) starts afresh when --output_dir has no
    checkpoint yet and resumes from the newest one when it has: rerunning the same command continues a long run."""
    import json

    from hf_cllm.cli import main

    model_dir, trajectories = toy_folders
    out = tmp_path / "run"
    command = ["train", "--model_name_or_path", str(model_dir / "model"), "--trajectories", trajectories,
               "--output_dir", str(out), "--jacobi_n", str(N), "--per_device_train_batch_size", "4", "--use_cpu",
               "true", "--report_to", "none", "--save_steps", "2", "--logging_steps", "1", "--tpf_eval_prompts", "0",
               "--resume_from_checkpoint", "true"]  # fmt: skip
    assert main([*command, "--max_steps", "2"]) == 0
    assert (out / "checkpoint-2").is_dir()
    assert main([*command, "--max_steps", "4"]) == 0
    history = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    assert [log["step"] for log in history if "ar_loss" in log] == [1, 2, 3, 4]  # steps 1-2 kept, 3-4 added


def test_two_processes_under_accelerate_train(toy_folders, tmp_path):
    model_dir, trajectories = toy_folders
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
        "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "hf_cllm", "train",
        "--model_name_or_path", str(model_dir / "model"), "--trajectories", trajectories, "--output_dir",
        str(tmp_path / "ddp"), "--jacobi_n", str(N), "--max_steps", "3", "--per_device_train_batch_size", "4",
        "--use_cpu", "true", "--report_to", "none", "--save_strategy", "no", "--logging_steps", "1",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "'ar_loss'" in result.stdout and (tmp_path / "ddp" / "model.safetensors").is_file()


def test_the_example_config_parses():
    from pathlib import Path

    from hf_cllm.cli.train import parser

    example = Path(__file__).parent.parent / "examples" / "train_gsm8k.yaml"
    script, config, model = parser().parse_args_and_config(["--config", str(example), "--use_cpu", "true"])
    assert (config.jacobi_n, config.ar_target, config.ar_weight) == (16, "labels", 10)
    assert config.lr_scheduler_type == "cosine" and config.warmup_steps == 0.03
    assert script.trajectories == "traj/gsm8k" and model.model_name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_the_gsm8k_smollm2_example_configs_parse():
    from pathlib import Path

    from hf_cllm.cli.train import parser

    folder = Path(__file__).parent.parent / "examples" / "gsm8k_smollm2"
    parsed = {}
    for name in ("full", "lora", "jacobi_forcing", "fast"):
        parsed[name] = parser().parse_args_and_config(["--config", str(folder / f"{name}.yaml"), "--use_cpu", "true"])
    (_, full, full_model), (_, lora, lora_model) = parsed["full"], parsed["lora"]
    forcing = parsed["jacobi_forcing"][1]
    assert (forcing.recipe, forcing.ar_on_prompt, forcing.ar_label_smoothing) == ("jacobi_forcing", True, 0.0)
    assert (forcing.learning_rate, forcing.num_train_epochs) == (full.learning_rate, full.num_train_epochs)
    assert (full.jacobi_n, full.ar_target, full.tpf_eval_prompts) == (16, "labels", 4)
    assert not full_model.use_peft and lora_model.use_peft and lora_model.lora_r == 32
    assert full.output_dir == "runs/gsm8k/full" and lora.output_dir == "runs/gsm8k/lora"
    script, fast, _ = parsed["fast"]
    assert (fast.recipe, fast.distance, fast.learning_rate, fast.bf16) == ("cllm", "hard_ce", 1e-3, True)
    assert len(script.trajectories.split(",")) == 3


def test_a_model_path_and_no_tokenizer_loads_both(toy_folders, toy_trajectories, tmp_path):
    from hf_cllm.packing import JacobiCollator

    model_dir, _ = toy_folders
    trainer = CLLMTrainer(model=str(model_dir / "model"), args=config(tmp_path, max_steps=1),
                          train_dataset=toy_trajectories)  # fmt: skip
    assert isinstance(trainer.data_collator, JacobiCollator)
    trainer.train()
    assert trainer.state.global_step == 1
