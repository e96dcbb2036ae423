"""A toy language in which continuations are partly predictable, and a tiny Llama that learns it in seconds.

Symbols s0..s{K-1}; each next symbol is the previous one + 1 (mod K) with probability 0.85, otherwise any symbol.
A model trained on it predicts "previous + 1" greedily, so its greedy answers count on from the prompt: every token
of a block follows from the block's first token, but the plain model only ever looks at the token before, so Jacobi
decoding accepts about one token per forward. Consistency training should teach it to look further back.
"""

from __future__ import annotations

import copy
import functools

import torch
import transformers


SYMBOLS = 24
JACOBI_N = 8  # the block size the trainer tests collect and train the toy model with
SPECIALS = ["<pad>", "<s>", "</s>"]


@functools.cache
def toy_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(SPECIALS + [f"s{i}" for i in range(SYMBOLS)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


def toy_sequences(count: int, length: int, seed: int, jump: float = 0.15) -> torch.Tensor:
    """Token ids (count, length) of the toy language."""
    generator = torch.Generator().manual_seed(seed)
    symbols = torch.empty(count, length, dtype=torch.long)
    symbols[:, 0] = torch.randint(SYMBOLS, (count,), generator=generator)
    for t in range(1, length):
        jumps = torch.rand(count, generator=generator) < jump
        symbols[:, t] = torch.where(
            jumps, torch.randint(SYMBOLS, (count,), generator=generator), (symbols[:, t - 1] + 1) % SYMBOLS
        )
    return symbols + len(SPECIALS)


def toy_prompts(count: int, seed: int, length: int = 8) -> list[str]:
    tokenizer = toy_tokenizer()
    return [tokenizer.decode(ids) for ids in toy_sequences(count, length, seed).tolist()]


@functools.cache
def _trained_state(steps: int, seed: int):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=len(SPECIALS) + SYMBOLS,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = transformers.LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(steps):
        batch = toy_sequences(64, 48, seed=1000 + step)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return config, {k: v.clone() for k, v in model.state_dict().items()}


def toy_model(steps: int = 300, seed: int = 0):
    """A fresh copy of a tiny Llama trained (AR, plain torch) on the toy language; eval mode, fp32."""
    config, state = _trained_state(steps, seed)
    model = transformers.LlamaForCausalLM(copy.deepcopy(config))
    model.load_state_dict(state)
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 2
    return model.eval()


def counting_share(model, prompts):
    """Share of consecutive greedy answer tokens that follow the toy rule "previous + 1"."""
    follows = total = 0
    for ids in prompts:
        answer = model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False)[0, len(ids) - 1 :] - 3
        follows += int(((answer[:-1] + 1) % SYMBOLS == answer[1:]).sum())
        total += len(answer) - 1
    return follows / total
