"""The Hub side: custom_generate/ made from the package's own modules, a saved CLLM that Jacobi-decodes in a Python
that cannot import hf_cllm, the decoder repo on a plain model, and pushes captured with mocks (nothing goes out)."""

from __future__ import annotations

import ast
import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import huggingface_hub
import pytest
import tomllib
from huggingface_hub import HfApi

from hf_cllm import enable_jacobi, hub
from hf_cllm.cli import main


ROOT = Path(__file__).parent.parent
N = 4


def test_custom_generate_is_the_package_code(tmp_path):
    folder = hub.write_custom_generate(tmp_path)
    for shipped, module in hub.CUSTOM_GENERATE_FILES.items():
        assert (folder / shipped).read_bytes() == (ROOT / "hf_cllm" / module).read_bytes()
        tree = ast.parse((folder / shipped).read_text())
        imported = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        assert not [name for name in imported if name.startswith("hf_cllm")], shipped
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = {line.split(">")[0].split("<")[0]: line for line in dependencies}
    assert (folder / "requirements.txt").read_text().split() == [pinned["torch"], pinned["transformers"]]


@pytest.fixture(scope="session")
def saved_cllm(tiny_model, tiny_tokenizer):
    """`saved_cllm(folder)`: a tiny CLLM (jacobi_n=N) and its tokenizer saved to `folder`."""

    def saved_cllm(folder: Path) -> Path:
        model = enable_jacobi(copy.deepcopy(tiny_model("llama")), jacobi_n=N)  # a copy: the cached model is shared
        model.save_pretrained(folder)
        tiny_tokenizer().save_pretrained(folder)
        return folder

    return saved_cllm


def run_without_hf_cllm(code: str) -> dict:
    """Run `code` in a fresh Python in which `import hf_cllm` fails; it prints one JSON line."""
    prelude = "import sys; sys.modules['hf_cllm'] = None\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_saved_cllm_jacobi_decodes_with_transformers_alone(tmp_path, saved_cllm):
    folder = saved_cllm(tmp_path / "cllm")
    assert sorted(p.name for p in (folder / "custom_generate").iterdir()) == [
        "decoding.py", "generate.py", "requirements.txt", "routing.py", "verify.py", "windows.py",
    ]  # fmt: skip
    result = run_without_hf_cllm(f"""
        import json, torch
        from transformers import AutoModelForCausalLM
        ids = torch.tensor([[5, 17, 33, 8, 90, 41], [1, 1, 7, 7, 12, 60]]); mask = (ids != 1).long()
        remote = AutoModelForCausalLM.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        plain = AutoModelForCausalLM.from_pretrained({str(folder)!r}).eval()
        common = dict(attention_mask=mask, pad_token_id=0)
        out = remote.generate(ids, max_new_tokens=21, return_dict_in_generate=True, **common)
        auto = remote.generate(ids, max_new_tokens=21, jacobi_n="auto", **common)
        greedy = plain.generate(ids, max_new_tokens=21, do_sample=False, **common)
        sampled = remote.generate(ids, max_new_tokens=5, do_sample=True, **common)
        plain_out = plain.generate(ids, max_new_tokens=2, return_dict_in_generate=True, **common)
        print(json.dumps({{
            "identical": torch.equal(out.sequences, greedy) and torch.equal(auto, greedy),
            "forwards": out.num_forward_passes.tolist(),
            "plain_is_jacobi": hasattr(plain_out, "num_forward_passes"), "sampled": list(sampled.shape),
        }}))
    """)
    assert result["identical"] and len(result["forwards"]) == 2
    assert not result["plain_is_jacobi"]  # without trust_remote_code: the plain model, greedy as usual
    assert result["sampled"] == [2, 11]  # sampling goes through the copied decoder too


def test_the_decoder_repo_works_on_any_model(tmp_path, tiny_model):
    decoder = hub.save_decoder(tmp_path / "decoder")
    model_dir = tmp_path / "plain"
    tiny_model("qwen2").save_pretrained(model_dir)
    result = run_without_hf_cllm(f"""
        import json, torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(model_dir)!r}).eval()
        ids = torch.tensor([[5, 17, 33, 8, 90, 41]])
        out = model.generate(ids, custom_generate={str(decoder)!r}, trust_remote_code=True, jacobi_n={N},
                             max_new_tokens=19, return_dict_in_generate=True)
        greedy = model.generate(ids, max_new_tokens=19, do_sample=False)
        print(json.dumps({{"identical": torch.equal(out.sequences, greedy), "tpf": out.tokens_per_forward.tolist()}}))
    """)
    assert result["identical"] and len(result["tpf"]) == 1


@pytest.fixture
def fake_hub(monkeypatch):
    """Online with a token, but every Hub call is captured: the files of each upload and the repos created."""
    calls = {"repos": [], "uploads": []}
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_fake")

    def create_repo(self, repo_id, **kwargs):
        calls["repos"].append(repo_id)

    def upload_folder(self, *, folder_path, repo_id, **kwargs):
        files = {str(p.relative_to(folder_path)): p.read_bytes() for p in Path(folder_path).rglob("*") if p.is_file()}
        calls["uploads"].append({"repo_id": repo_id, "files": files, **kwargs})

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_push_uploads_weights_config_card_and_custom_generate(tmp_path, fake_hub, saved_cllm):
    folder = saved_cllm(tmp_path / "cllm")
    (folder / "checkpoint-10").mkdir()  # training leftovers stay home
    (folder / "checkpoint-10" / "optimizer.pt").write_text("x")
    hub.push_model(folder, "someone/tiny-cllm")
    (upload,) = fake_hub["uploads"]
    files = upload["files"]
    assert fake_hub["repos"] == ["someone/tiny-cllm"] and upload["repo_id"] == "someone/tiny-cllm"
    for name in ("model.safetensors", "config.json", "generation_config.json", "README.md", "tokenizer.json",
                 "custom_generate/generate.py", "custom_generate/decoding.py", "custom_generate/routing.py",
                 "custom_generate/verify.py", "custom_generate/windows.py",
                 "custom_generate/requirements.txt"):  # fmt: skip
        assert name in files, name
    assert not any(name.startswith("checkpoint-") for name in files)
    assert json.loads(files["generation_config.json"])["jacobi_n"] == N
    card = files["README.md"].decode()
    assert all(f"- {tag}" in card for tag in ("custom_generate", "cllm", "jacobi-decoding"))
    assert 'from_pretrained("someone/tiny-cllm", trust_remote_code=True)' in card and "jacobi_init" in card
    assert "2403.00835" in card


def test_model_push_to_hub_and_decoder_push(tmp_path, fake_hub, tiny_model):
    model = enable_jacobi(copy.deepcopy(tiny_model("llama")), jacobi_n=N)
    model.push_to_hub("someone/from-model")
    hub.push_decoder("someone/jacobi-decoding")
    model_upload, decoder_upload = fake_hub["uploads"]
    assert "custom_generate/generate.py" in model_upload["files"] and "model.safetensors" in model_upload["files"]
    assert sorted(decoder_upload["files"]) == [
        "README.md", "custom_generate/decoding.py", "custom_generate/generate.py", "custom_generate/requirements.txt",
        "custom_generate/routing.py", "custom_generate/verify.py", "custom_generate/windows.py",
    ]  # fmt: skip
    assert 'custom_generate="someone/jacobi-decoding"' in decoder_upload["files"]["README.md"].decode()


def test_bad_pushes_are_refused_before_anything_is_sent(tmp_path, fake_hub, monkeypatch, saved_cllm):
    folder = saved_cllm(tmp_path / "cllm")
    with pytest.raises(ValueError, match="is not a saved model: it has no config.json"):
        hub.push_model(tmp_path, "someone/x")
    with pytest.raises(ValueError, match="repo id 'not a repo' is malformed"):
        hub.push_model(folder, "not a repo")
    with pytest.raises(ValueError, match="must look like 'user-or-org/name'"):
        hub.push_model(folder, "no-namespace")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(ValueError, match="no Hugging Face token: run `hf auth login`"):
        hub.push_model(folder, "someone/x")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="offline .* nothing was pushed"):
        hub.push_decoder("someone/x", token="hf_fake")
    assert fake_hub == {"repos": [], "uploads": []}


def test_push_command_line(tmp_path, fake_hub, capsys, saved_cllm):
    folder = saved_cllm(tmp_path / "cllm")
    assert main(["push", str(folder), "--repo-id", "someone/cli-cllm"]) == 0
    assert main(["push", "--decoder", "--repo-id", "someone/cli-decoder"]) == 0
    assert [u["repo_id"] for u in fake_hub["uploads"]] == ["someone/cli-cllm", "someone/cli-decoder"]
    assert main(["push", str(tmp_path), "--repo-id", "someone/x"]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert main(["push", "--repo-id", "someone/x"]) == 2
    assert "give a model folder, --decoder or --trajectories" in capsys.readouterr().err
