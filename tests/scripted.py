"""A tiny Llama that has memorised given texts, so a benchmark on it has outputs, hence scores, known in advance."""

from __future__ import annotations

import functools

import torch
import transformers
from tiny import EOS, PAD, VOCAB, tiny_tokenizer


@functools.cache
def memorizing_model(texts: tuple[str, ...], steps: int = 400):
    """Trained (plain torch) until greedy decoding of each text's prefix reproduces the text and then EOS."""
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=PAD, bos_token_id=1, eos_token_id=EOS,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config)
    encoded = [tokenizer(text)["input_ids"] + [EOS] for text in texts]
    width = max(map(len, encoded))
    batch = torch.full((len(encoded), width), PAD)
    labels = torch.full((len(encoded), width), -100)
    for i, ids in enumerate(encoded):
        batch[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(ids)] = torch.tensor(ids)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        model(input_ids=batch, attention_mask=(labels != -100).long(), labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.generation_config.pad_token_id = PAD
    model.generation_config.eos_token_id = EOS
    return model.eval()


class RuleModel(transformers.LlamaForCausalLM):
    """A tiny Llama whose greedy choice is a fixed rule, so how well guesses can do is known in advance.

    `rule(tokens, positions) -> next tokens`: from each input token and its position in the sequence. The Llama
    underneath still runs, so the cache, masks and `generate` bookkeeping are real.
    """

    def __init__(self, config, rule):
        super().__init__(config)
        self.rule = rule

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        cache = out.get("past_key_values") or out.get("cache")
        width = cache.get_seq_length() if cache is not None else input_ids.shape[1]  # the window included
        positions = torch.arange(width - input_ids.shape[1], width).expand_as(input_ids)
        if attention_mask is not None:  # left padding: a row's position counts its real tokens only
            positions = positions - (attention_mask.shape[1] - attention_mask.sum(-1, keepdim=True))
        choice = self.rule(input_ids, positions) % (VOCAB - 3) + 3  # never a special token
        out.logits = torch.nn.functional.one_hot(choice, VOCAB).float() * 10
        return out


def rule_model(rule):
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=1024, pad_token_id=PAD, bos_token_id=1, eos_token_id=EOS,
    )  # fmt: skip
    torch.manual_seed(0)
    model = RuleModel(config, rule).eval()
    model.generation_config.pad_token_id = PAD
    model.generation_config.eos_token_id = EOS
    return model
