"""Quick start: greedy vs Jacobi decoding on one prompt, with the statistics Jacobi decoding returns.

python examples/quickstart.py                          # the embedded SmolLM2-135M-Instruct, offline
python examples/quickstart.py --model HuggingFaceTB/SmolLM2-135M-Instruct --jacobi-n 16
"""

import argparse
import time

import torch
from transformers import AutoTokenizer

from hf_cllm import AutoCLLMForCausalLM
from hf_cllm.assets import embedded_model_dir


parser = argparse.ArgumentParser()
parser.add_argument("--model", default=None, help="Hub id or folder (default: the embedded SmolLM2-135M-Instruct)")
parser.add_argument("--jacobi-n", type=int, default=16)
parser.add_argument("--max-new-tokens", type=int, default=96)
args = parser.parse_args()

torch.set_num_threads(min(2, torch.get_num_threads()))
path = args.model or embedded_model_dir()  # converts the embedded GGUF once, then reuses the cached folder
tokenizer = AutoTokenizer.from_pretrained(path)
model = AutoCLLMForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

question = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)
inputs = tokenizer.apply_chat_template(
    [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
)

start = time.perf_counter()
greedy = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
greedy_seconds = time.perf_counter() - start

start = time.perf_counter()
out = model.generate(
    **inputs, max_new_tokens=args.max_new_tokens, jacobi_n=args.jacobi_n, return_dict_in_generate=True
)
jacobi_seconds = time.perf_counter() - start

prompt_length = inputs["input_ids"].shape[1]
print(tokenizer.decode(out.sequences[0, prompt_length:], skip_special_tokens=True))
print()
print(f"identical to greedy:     {torch.equal(out.sequences, greedy)}")
print(f"new tokens:              {int(out.num_new_tokens[0])}")
print(f"forward passes:          {int(out.num_forward_passes[0])} (greedy: {int(out.num_new_tokens[0])})")
print(f"tokens per forward (TPF): {float(out.tokens_per_forward[0]):.2f}")
print(f"iterations per block:    {out.iterations_per_block[0]} (n={args.jacobi_n})")
print(f"time, Jacobi / greedy:   {jacobi_seconds:.2f} s / {greedy_seconds:.2f} s")
print()
print(
    "An untrained model accepts about one token per forward pass, so Jacobi decoding is no faster than greedy on\n"
    "it; a consistency-trained model (a CLLM) accepts several. See docs/decoding.md."
)
