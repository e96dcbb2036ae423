"""Tiny random decoder-only models of several architectures, and a tokenizer, all built in code (no Hub)."""

from __future__ import annotations

import functools

import torch
import transformers


VOCAB = 320
PAD, BOS, EOS = 0, 1, 2
_COMMON = dict(vocab_size=VOCAB, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
_DECODER = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256
)

# name -> (model class, config class, config kwargs). Mistral and the Gemma family use sliding windows smaller than
# the sequences in the tests, so cropping past the window is exercised.
ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", "LlamaConfig", dict(**_DECODER, num_key_value_heads=2)),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", dict(**_DECODER, num_key_value_heads=2)),
    "mistral": ("MistralForCausalLM", "MistralConfig", dict(**_DECODER, num_key_value_heads=2, sliding_window=8)),
    "gemma2": (
        "Gemma2ForCausalLM",
        "Gemma2Config",
        dict(**_DECODER, num_key_value_heads=2, head_dim=8, sliding_window=8),
    ),
    "gemma3": (
        "Gemma3ForCausalLM",
        "Gemma3TextConfig",
        dict(**_DECODER, num_key_value_heads=2, head_dim=8, sliding_window=8, sliding_window_pattern=2),
    ),
    "phi": ("PhiForCausalLM", "PhiConfig", dict(**_DECODER)),
    "gpt2": ("GPT2LMHeadModel", "GPT2Config", dict(n_embd=32, n_layer=2, n_head=4, n_positions=256)),
}


def tiny_config(arch: str = "llama"):
    """A new config object each call (saving or loading a model may change its config)."""
    _, config_cls, kwargs = ARCHITECTURES[arch]
    return getattr(transformers, config_cls)(**_COMMON, **kwargs)


@functools.cache
def tiny_model(arch: str = "llama", seed: int = 0):
    """A randomly initialised fp32 model in eval mode (cached: tests must not modify it)."""
    torch.manual_seed(seed)
    model = getattr(transformers, ARCHITECTURES[arch][0])(tiny_config(arch)).eval()
    model.generation_config.pad_token_id = PAD
    model.generation_config.eos_token_id = EOS
    return model


def random_prompts(batch: int, lengths: list[int], seed: int = 0):
    """Left-padded prompts of the given lengths: (input_ids, attention_mask)."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    input_ids = torch.full((batch, width), PAD, dtype=torch.long)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)
    for row, length in enumerate(lengths):
        input_ids[row, width - length :] = torch.randint(3, VOCAB, (length,), generator=generator)
        attention_mask[row, width - length :] = 1
    return input_ids, attention_mask


@functools.cache
def tiny_tokenizer():
    """A byte-level BPE tokenizer trained in code (byte-level so `stop_strings` work)."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    text = ["the quick brown fox jumps over the lazy dog", "Jacobi decoding guesses a block of tokens", "stop here."]
    bpe.train_from_iterator(text * 20, vocab_size=VOCAB, min_frequency=1, special_tokens=["<pad>", "<s>", "</s>"])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>", eos_token="</s>", padding_side="left"
    )
