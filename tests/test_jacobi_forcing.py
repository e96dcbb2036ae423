"""The Jacobi Forcing recipe of CLLMTrainer: the noise schedule, the noisy-context layout against separate forwards,
its loss against a hand computation, and on the toy language against the CLLM recipe."""

from __future__ import annotations

import pytest
import torch
import transformers
from datasets import Dataset
from test_trainer import ROW, SHORT_ROW, N, config
from tiny import ARCHITECTURES
from toy import counting_share

from hf_cllm import CLLMTrainer, collect_trajectories
from hf_cllm.losses import ar_loss, consistency_loss
from hf_cllm.packing import (
    IGNORE_INDEX,
    JacobiCollator,
    PackingOptions,
    model_attention_mask,
    pack_row,
    pick_noisy_states,
    state_noise,
)
from hf_cllm.speed import jacobi_speed


FORCING = PackingOptions(N, recipe="jacobi_forcing", ar_on_prompt=True)

# An answer of 4 blocks of 4 tokens; every block has states of noise 3/4 (step 0), 2/4 and 1/4.
BLOCKS = [[10, 11, 12, 13], [14, 15, 16, 17], [18, 19, 20, 21], [22, 23, 24, 25]]


def graded_row():
    states, state_block = [], []
    for b, block in enumerate(BLOCKS):
        for right in (1, 2, 3):  # the first `right` tokens agree with the fixed point
            states.append(block[:right] + [5] * (4 - right))
            state_block.append(b)
    return dict(prompt_ids=[3, 4], answer_ids=sum(BLOCKS, []), states=states, state_block=state_block, labels=None)


def test_state_noise_is_the_share_still_wrong():
    assert state_noise([10, 11, 5, 5], [10, 11, 12, 13]) == 0.5
    assert state_noise([10, 5, 12, 13], [10, 11, 12, 13]) == 0.75  # from the first wrong token on
    assert state_noise([10, 11, 12, 13], [10, 11, 12, 13]) == 0.0


def test_progressive_schedule_picks_the_state_nearest_each_level():
    row = graded_row()
    options = PackingOptions(4, recipe="jacobi_forcing", noise_levels=4)  # levels 0, 1/3, 2/3, 1
    noise = [state_noise(row["states"][i], BLOCKS[b]) if i is not None else 0.0
             for b, i in enumerate(pick_noisy_states(row, options))]  # fmt: skip
    assert noise == [0.0, 0.25, 0.75, 0.75]  # nearest to 0, 1/3, 2/3 and 1
    # With more blocks than levels the schedule cycles; with the default (jacobi_n levels) noise rises slowly.
    eight = dict(row, answer_ids=sum(BLOCKS * 2, []), states=row["states"] * 2,
                 state_block=row["state_block"] + [b + 4 for b in row["state_block"]])  # fmt: skip
    chosen = pick_noisy_states(eight, options)
    assert chosen[4:] == [None if i is None else i + 12 for i in chosen[:4]]
    levels4 = pick_noisy_states(row, PackingOptions(4, recipe="jacobi_forcing"))  # 4 levels = jacobi_n
    assert levels4 == pick_noisy_states(row, options)


def test_random_schedule_reaches_every_level_and_ties_are_drawn():
    row = graded_row()
    options = PackingOptions(4, recipe="jacobi_forcing", noise_levels=4, noise_schedule="random")
    seen = {tuple(pick_noisy_states(row, options, torch.Generator().manual_seed(s))) for s in range(60)}
    block0 = {picks[0] for picks in seen}
    assert block0 == {None, 0, 2}  # levels 0, 1/3 (-> 1/4), 2/3 and 1 (-> 3/4)
    # Two states of the same noise: either may be taken.
    tie = dict(row, states=[[10, 5, 5, 5], [10, 6, 6, 6]], state_block=[0, 0], answer_ids=BLOCKS[0])
    options = PackingOptions(4, recipe="jacobi_forcing", noise_levels=2, noise_schedule="random")
    draws = {pick_noisy_states(tie, options, torch.Generator().manual_seed(s))[0] for s in range(40)}
    assert draws == {None, 0, 1}


def test_layout_noisy_blocks_see_the_prompt_and_earlier_noisy_blocks():
    row = graded_row()
    options = PackingOptions(4, recipe="jacobi_forcing", noise_levels=4, ar_on_prompt=True)
    packed = pack_row(row, options)
    p, a = 2, 16
    noisy = packed.input_ids[p + a :]
    assert noisy == BLOCKS[0] + [14, 15, 16, 5] + [18, 5, 5, 5] + [22, 5, 5, 5]  # noise 0, 1/4, 3/4, 3/4
    assert packed.position_ids[p + a :] == list(range(p, p + a))  # a pair shares position ids
    assert set(packed.context_length[p + a :]) == {p} and set(packed.segment_start[p + a :]) == {p + a}
    # AR on prompt and clean blocks; nothing on the noisy copy.
    assert packed.ar_labels[: p + a - 1] == [4] + sum(BLOCKS, [])
    assert set(packed.ar_labels[p + a - 1 :]) == {IGNORE_INDEX}
    # Pairs: each noisy position against the clean one, counted from the block's first wrong token; the answer's
    # last token predicts nothing.
    assert packed.num_pairs == 4
    assert packed.student_positions == list(range(p + a, p + 2 * a - 1))
    assert packed.teacher_positions == list(range(p, p + a - 1))
    assert packed.consistency_pair == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 3
    assert packed.consistency_mask == [False] * 4 + [False, False, False, True] + [False, True, True, True] + [
        False, True, True,
    ]  # fmt: skip
    batch = JacobiCollator(options, 0)([row, row])
    assert batch["num_pairs"].item() == 8 and batch["consistency_pair"][1, 0].item() == 4  # numbered across rows


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_noisy_context_packing_equals_separate_forwards(arch, tiny_config):
    """The clean part has the logits of prompt + answer, the noisy part those of prompt + noisy answer, each from
    its own plain forward — sliding windows included (the tiny models' window is 8, rows are longer)."""
    torch.manual_seed(0)
    try:
        model = getattr(transformers, ARCHITECTURES[arch][0])(tiny_config(arch)).eval()
    except ValueError:
        pytest.skip(f"{arch} has no sdpa attention")
    three_blocks = dict(
        ROW, answer_ids=list(range(20, 44)), state_block=[0, 1, 2],
        states=[[20, 50, 51, 52, 53, 54, 55, 56], [28, 29, 60, 61, 62, 63, 64, 65], [36, 70, 71, 72, 73, 74, 75, 76]],
    )  # fmt: skip
    rows = [ROW, SHORT_ROW, three_blocks]  # in the last, blocks 1 and 2 are both noisy
    options = PackingOptions(N, recipe="jacobi_forcing", noise_levels=3, ar_target="labels", eos_token_id=2)
    batch = JacobiCollator(options, 0)(rows)
    mask = model_attention_mask(model, batch["attention_mask"], batch["position_ids"])
    with torch.no_grad():
        logits = model(batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"]).logits
    for i, row in enumerate(rows):
        prompt, answer = row["prompt_ids"], row["answer_ids"]
        packed = pack_row(row, options, JacobiCollator(options, 0)._generator(row))
        p, a, gold = len(prompt), len(answer), len(row["labels"]) + 1
        noisy = packed.input_ids[p + a + gold :]
        assert len(noisy) == a and noisy != answer or row is SHORT_ROW  # something is noisy (short: 1 block)
        with torch.no_grad():
            clean = model(input_ids=torch.tensor([prompt + answer])).logits[0]
            noisy_logits = model(input_ids=torch.tensor([prompt + noisy])).logits[0, p:]
            gold_logits = model(input_ids=torch.tensor([prompt + list(row["labels"]) + [2]])).logits[0, p:]
        torch.testing.assert_close(logits[i, : p + a], clean, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(logits[i, p + a : p + a + gold], gold_logits, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(logits[i, p + a + gold : p + 2 * a + gold], noisy_logits, atol=2e-5, rtol=1e-4)


def test_per_pair_normalisation_closed_form():
    """Each pair's mean over its counted positions, summed over pairs, divided by the number of pairs."""
    torch.manual_seed(0)
    student, teacher = torch.randn(1, 5, 7), torch.randn(1, 5, 7)
    per_position = torch.stack([consistency_loss(student[:, t : t + 1], teacher[:, t : t + 1], torch.ones(1, 1))
                                for t in range(5)])  # fmt: skip
    mask = torch.tensor([[True, True, False, True, False]])
    pairs = torch.tensor([[0, 0, 1, 1, -1]])
    expected = ((per_position[0] + per_position[1]) / 2 + per_position[3] / 1 + 0) / 3  # pair 2 counts nothing
    got = consistency_loss(student, teacher, mask, pairs=pairs, num_pairs=torch.tensor(3))
    torch.testing.assert_close(got, expected)


def test_loss_and_gradient_equal_a_hand_computation(tmp_path, toy_model, toy_tokenizer):
    """10 x AR (no smoothing) on prompt + clean answer, plus each noisy block's forward KL to its detached clean
    block from its first wrong token, averaged per pair over the blocks — all from plain separate forwards."""
    model = toy_model().train()
    row = dict(graded_row(), prompt_ids=[3, 4, 5], answer_ids=[10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21])
    row["states"] = [[10, 3, 3, 3], [10, 11, 4, 4], [14, 15, 3, 3], [14, 3, 3, 3], [18, 19, 20, 3]]
    row["state_block"] = [0, 0, 1, 1, 2]
    args = config(tmp_path, jacobi_n=4, recipe="jacobi_forcing", noise_levels=3)
    assert args.ar_label_smoothing == 0.0 and args.ar_on_prompt  # the recipe's defaults
    trainer = CLLMTrainer(model=model, args=args, train_dataset=Dataset.from_list([row]),
                          processing_class=toy_tokenizer())  # fmt: skip
    loss = trainer.compute_loss(model, trainer.data_collator([row]))
    loss.backward()
    packed_grad = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    # By hand: the schedule (levels 0, 1/2, 1) gives block 0 its fixed point, block 1 the state of noise 1/2,
    # block 2 its only state (noise 1/4, nearest to 1).
    prompt, answer = row["prompt_ids"], row["answer_ids"]
    noisy = answer[:4] + row["states"][2] + row["states"][4]
    clean = model(input_ids=torch.tensor([prompt + answer])).logits[0]
    student = model(input_ids=torch.tensor([prompt + noisy])).logits[0, 3:]
    labels = torch.tensor(prompt[1:] + answer + [IGNORE_INDEX])
    ar = ar_loss(clean[None], labels[None])
    pair_losses = []
    for block, first_wrong in ((0, 4), (1, 2), (2, 3)):
        positions = [block * 4 + j for j in range(first_wrong, 4) if block * 4 + j + 1 < len(answer)]
        if positions:
            pair_losses.append(consistency_loss(student[None, positions], clean[None, [3 + t for t in positions]],
                                                torch.ones(1, len(positions))))  # fmt: skip
    expected = 10 * ar + sum(pair_losses) / 3
    expected.backward()
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    for packed, reference in zip(packed_grad, (p.grad for p in model.parameters())):
        torch.testing.assert_close(packed, reference, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (dict(recipe="jf"), "recipe must be one of 'cllm', 'jacobi_forcing'"),
        (dict(recipe="jacobi_forcing", noise_schedule="reverse"), "noise_schedule must be one of"),
        (dict(recipe="jacobi_forcing", noise_levels=1), "noise_levels must be an integer >= 2"),
        (dict(recipe="jacobi_forcing", consistency_loss="local"), "use consistency_loss='global'"),
        (dict(recipe="jacobi_forcing", states_per_block=2), "leave states_per_block at 1"),
    ],
)
def test_config_validation(tmp_path, option, message):
    with pytest.raises(ValueError, match=message):
        config(tmp_path, **option)


def test_cllm_defaults_are_unchanged(tmp_path):
    args = config(tmp_path)
    assert (args.recipe, args.ar_label_smoothing, args.ar_on_prompt) == ("cllm", 0.1, False)
    explicit = config(tmp_path, recipe="jacobi_forcing", ar_label_smoothing=0.1, ar_on_prompt=False)
    assert (explicit.ar_label_smoothing, explicit.ar_on_prompt) == (0.1, False)


def test_jacobi_forcing_training_raises_tpf_and_stays_lossless(
    toy_trajectories, tmp_path, toy_model, toy_tokenizer, toy_prompts, held_out_prompts
):
    """On the toy language the recipe (its defaults: progressive schedule, noisy context, per-pair loss) raises
    held-out TPF clearly, single- and multi-block decoding stay identical to greedy, and greedy still counts on.
    (Against the CLLM recipe on this toy it learns more slowly: docs/results.md has the curves.)"""
    model, tokenizer = toy_model(), toy_tokenizer()
    held_out = collect_trajectories(
        model, tokenizer, toy_prompts(16, seed=99), jacobi_n=N, max_new_tokens=32, output_dir=tmp_path / "held_out",
        chat=False, progress=False,
    )  # fmt: skip
    args = config(
        tmp_path, recipe="jacobi_forcing", max_steps=400, learning_rate=2e-3, lr_scheduler_type="constant",
        eval_strategy="steps", eval_steps=400, eval_on_start=True, tpf_eval_prompts=16, tpf_eval_max_new_tokens=32,
        tpf_eval_blocks=2, logging_steps=50,
    )  # fmt: skip
    trainer = CLLMTrainer(
        model=model, args=args, train_dataset=toy_trajectories, eval_dataset=held_out, processing_class=tokenizer
    )
    trainer.train()
    before, after = [log for log in trainer.state.log_history if "eval_tpf" in log]
    assert after["eval_tpf"] >= 1.5 * before["eval_tpf"], (before, after)
    assert before["eval_jacobi_identical"] == after["eval_jacobi_identical"] == 1.0  # with 2 blocks in flight
    prompts = held_out_prompts()
    assert jacobi_speed(model, prompts, N, 32, blocks=2)["tpf"] == pytest.approx(after["eval_tpf"])
    assert jacobi_speed(model, prompts, N, 32)["jacobi_identical"] == 1.0
    assert counting_share(model, prompts) >= 0.9
    trainer.save_model()
    assert "the Jacobi Forcing recipe (progressive noise schedule" in (tmp_path / "out" / "README.md").read_text()
