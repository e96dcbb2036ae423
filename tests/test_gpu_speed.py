"""The speed benchmarks at CI size: gpu_speed.py's controlled-acceptance guesses give exactly the TPF they are set
to and stay identical to greedy; batch_speed.py runs AR, shared and per-row progress losslessly."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import torch


def load_benchmark():
    path = Path(__file__).parents[1] / "benchmarks" / "gpu_speed.py"
    spec = importlib.util.spec_from_file_location("gpu_speed", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_oracle_guesses_are_right_for_the_first_k():
    gpu_speed = load_benchmark()
    answer = torch.tensor([[5, 6, 7, 8, 9, 10]])
    guesses = gpu_speed.oracle_guesses(answer, right=2, vocab_size=11)(answer[:, :2], 3)
    assert guesses.tolist() == [[7, 8, 10]]  # 7, 8 right; 9 made wrong


def test_the_benchmark_sets_tpf_and_stays_lossless(tmp_path, capsys):
    gpu_speed = load_benchmark()
    out = tmp_path / "speed.json"
    argv = "--shapes tiny --device cpu --new-tokens 25 --prompt-length 8 --context 32 --windows 1 4 --tpfs 1 3 4"
    argv = argv.split() + ["--batches", "1", "3", "--repeats", "1", "--json", str(out)]
    argv += "--compiled-batches 2 --compiled-tpfs 1 4 --compile-backend eager".split()  # (c): the path, uncompiled
    assert gpu_speed.main(argv) == 0
    rows = json.loads(out.read_text())["shapes"]["tiny"]["speed"]
    jacobi = [row for row in rows if not row["method"].startswith("greedy")]
    assert len(jacobi) == 3 * 2 + 2 and all(row["identical"] for row in rows)
    for row in jacobi:  # the prefill gives the first token, then every forward accepts n
        n = row["window"]
        assert row["tpf"] == 25 / (1 + math.ceil(24 / n)), row
    printed = capsys.readouterr().out
    assert "| 3 | jacobi n=4 |" in printed and "| 2 | jacobi n=4, compiled |" in printed and "× 1 token" in printed


def test_the_batch_benchmark_runs_every_method_losslessly(tmp_path, capsys):
    """benchmarks/batch_speed.py at CI size (a toy model trained for a few steps)."""
    path = Path(__file__).parents[1] / "benchmarks" / "batch_speed.py"
    spec = importlib.util.spec_from_file_location("batch_speed", path)
    batch_speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(batch_speed)
    out = tmp_path / "batch.json"
    argv = "--model toy --toy-steps 20 --batches 1 4 --num-prompts 4 --max-new-tokens 8 --threads 1".split()
    assert batch_speed.main([*argv, "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    for batch in ("1", "4"):
        assert {name: figures["identical"] for name, figures in results[batch].items()} == {
            "AR greedy": 4, "Jacobi, shared progress": 4, "Jacobi, per-row progress": 4}  # fmt: skip
    assert "| 4 | Jacobi, per-row progress |" in capsys.readouterr().out
