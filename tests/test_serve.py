"""`hf-cllm serve`: the real server (transformers serve) in a subprocess on localhost, called with the real openai
client. At temperature 0 every answer must be the model's own greedy output, token for token (float32)."""

from __future__ import annotations

import concurrent.futures
import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch
from tiny import tiny_tokenizer


openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

TEXTS = (
    "the quick brown fox jumps over the lazy dog and the dog sleeps",
    "Jacobi decoding guesses a block of tokens and keeps the longest prefix",
    "stop here. the fox jumps over the quick dog. stop here.",
)
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
NAME = "memorizing-llama"
PROMPTS = ["the quick", "the quick brown fox", "Jacobi decoding", "Jacobi decoding guesses a", "stop here.",
           "the fox", "the lazy dog", "a block of"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, memorizing_model):
    """A tiny Llama that has memorised TEXTS, saved with its tokenizer (and a chat template) as a local folder."""
    folder = tmp_path_factory.mktemp("models") / NAME
    memorizing_model(TEXTS).save_pretrained(folder)
    tokenizer = copy.deepcopy(tiny_tokenizer())  # a cached object other tests use without a chat template
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


def start_serving(folder, cache, log, *options):
    """`hf-cllm serve FOLDER` in a subprocess on a free port, its output in `log`; returned once it answers /health:
    (process, port)."""
    port = free_port()
    env = {**os.environ, "HF_CLLM_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    with open(log, "w") as handle:
        process = subprocess.Popen([sys.executable, "-m", "hf_cllm", "serve", str(folder), "--port", str(port),
                                    *options], stdout=handle, stderr=subprocess.STDOUT, env=env)  # fmt: skip
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(f"http://localhost:{port}/health", timeout=2)
            return process, port
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError(f"the server did not start:\n{log.read_text()[-3000:]}") from None
            time.sleep(0.5)


@pytest.fixture(scope="module")
def server(model_folder, tmp_path_factory):
    """`hf-cllm serve` on the folder: yields (openai client, its log file); stopped with SIGINT at the end."""
    log = tmp_path_factory.mktemp("serve") / "server.log"
    process, port = start_serving(model_folder, tmp_path_factory.mktemp("cache"), log,
                                  "--dtype", "float32", "--device", "cpu", "--jacobi-n", "4")  # fmt: skip
    try:
        client = openai.OpenAI(base_url=f"http://localhost:{port}/v1", api_key="unused", max_retries=0, timeout=120)
        yield client, log, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="module")
def greedy(model_folder):
    """The local reference: greedy `generate` of the same folder in float32, decoded as the server decodes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_folder)

    def answer(prompt: str | None = None, messages: list | None = None, max_tokens: int = 24) -> str:
        if messages is None:
            inputs = tokenizer(prompt, return_tensors="pt")
        else:
            inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                   return_dict=True)  # fmt: skip
        out = model.generate(**inputs, do_sample=False, max_new_tokens=max_tokens)
        return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    return answer


def complete(client, prompt, **kwargs):
    return client.completions.create(model=NAME, prompt=prompt, max_tokens=24, temperature=0, **kwargs)


def test_completions_streamed_or_not_are_greedy_and_log_tpf(server, greedy):
    client, log, _ = server
    for prompt in PROMPTS[:3]:
        expected = greedy(prompt)
        assert expected.strip(), "the reference answer should not be empty"
        assert complete(client, prompt).choices[0].text == expected
        chunks = complete(client, prompt, stream=True)
        assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices) == expected
    logged = [line for line in log.read_text().splitlines() if "Jacobi decoding (jacobi_n=4)" in line]
    assert len(logged) >= 6 and all("TPF" in line for line in logged)


def test_chat_streamed_or_not_is_greedy(server, greedy):
    client, _, _ = server
    messages = [{"role": "user", "content": "the quick brown"}]
    expected = greedy(messages=messages)
    reply = client.chat.completions.create(model=NAME, messages=messages, max_tokens=24, temperature=0)
    assert reply.choices[0].message.content == expected
    chunks = client.chat.completions.create(model=NAME, messages=messages, max_tokens=24, temperature=0, stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == expected


def test_per_request_generation_config_changes_the_block_size(server, greedy, model_folder):
    client, log, _ = server
    for jacobi_n in ("auto", 1, 8):
        config = json.dumps({"jacobi_n": jacobi_n, "max_new_tokens": 24})
        text = complete(client, PROMPTS[1], extra_body={"generation_config": config}).choices[0].text
        assert text == greedy(PROMPTS[1])
        assert f"Jacobi decoding (jacobi_n={jacobi_n})" in log.read_text()


def test_stop_ends_the_answer_at_the_stop_string(server, greedy):
    client, _, _ = server
    expected = greedy(PROMPTS[0])
    stop = expected.strip().split()[2]  # a word in the middle of the answer
    text = complete(client, PROMPTS[0], stop=[stop]).choices[0].text
    assert len(text) < len(expected) and expected.startswith(text)
    assert stop in text or expected[len(text) :].startswith(stop)


def test_a_bad_jacobi_n_is_a_400_with_the_reason_and_the_server_keeps_serving(server, greedy):
    client, _, process = server
    with pytest.raises(openai.BadRequestError, match="jacobi_n"):
        complete(client, PROMPTS[0], extra_body={"generation_config": json.dumps({"jacobi_n": 0})})
    with pytest.raises(openai.BadRequestError, match="jacobi_n"):
        complete(client, PROMPTS[0], extra_body={"generation_config": json.dumps({"jacobi_n": "fast"})})
    with pytest.raises(openai.BadRequestError, match="jacobi_init"):  # refused inside generate
        complete(client, PROMPTS[0], extra_body={"generation_config": '{"jacobi_n": 4, "jacobi_init": "nope"}'})
    with pytest.raises(openai.BadRequestError, match="jacobi_n"):  # streamed: refused before the answer starts
        list(complete(client, PROMPTS[0], stream=True, extra_body={"generation_config": '{"jacobi_n": -2}'}))
    assert process.poll() is None
    assert complete(client, PROMPTS[2]).choices[0].text == greedy(PROMPTS[2])


def test_only_a_bad_jacobi_n_is_judged_before_the_server():
    from hf_cllm.serving import check_request

    with pytest.raises(ValueError, match="jacobi_n"):
        check_request(json.dumps({"generation_config": json.dumps({"jacobi_n": 0})}).encode())
    for body in (b"", b"--multipart-boundary--", b'{"prompt": "hi"}', b'{"generation_config": "{not json"}',
                 json.dumps({"generation_config": json.dumps({"jacobi_n": "auto"})}).encode()):
        check_request(body)  # left to the server


def test_eight_concurrent_requests_are_all_answered_correctly(server, greedy):
    client, _, _ = server
    with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
        answers = list(pool.map(lambda prompt: complete(client, prompt).choices[0].text, PROMPTS))
    assert answers == [greedy(prompt) for prompt in PROMPTS]


def test_the_server_shuts_down_cleanly(model_folder, tmp_path):
    """SIGINT (Ctrl-C) stops a serving process with exit status 0, and quickly."""
    log = tmp_path / "server.log"
    process, _ = start_serving(model_folder, tmp_path / "cache", log, "--device", "cpu")
    process.send_signal(signal.SIGINT)
    process.wait(timeout=30)
    output = log.read_text()
    assert process.returncode == 0, output[-3000:]
    assert f"model='{NAME}'" in output


def test_continuous_batching_is_refused_in_one_line(capsys):
    from hf_cllm.cli import main

    assert main(["serve", "--continuous-batching"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("hf-cllm serve: error: --continuous-batching") and "\n" not in error
