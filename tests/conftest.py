"""Tests run offline, on tiny models built in code, with every Hugging Face cache in a temporary folder."""

import os
import tempfile


_HF_HOME = tempfile.mkdtemp(prefix="hf_cllm_tests_hf_home_")
for _name, _value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_EVALUATE_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ[_name] = _value

from hf_cllm.assets import cache_root  # noqa: E402  (light: no torch)


# The embedded model converts once into the user's own cache and is reused from there, like any HF cache;
# everything else goes to a throw-away HF_HOME.
os.environ.setdefault("HF_CLLM_CACHE", str(cache_root()))
os.environ["HF_HOME"] = _HF_HOME

import torch  # noqa: E402


torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need CUDA: skipped, with the reason, where there is none."""
    import pytest

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# --- the in-code models and tokenizers, as fixtures ------------------------------------------------------------------
# Each is the builder itself (cached where it says so), so a test asks for what it builds with its own arguments,
# e.g. `def test_x(tiny_model): model = tiny_model("gpt2")`. Module-level constants (ARCHITECTURES, PAD, EOS, VOCAB,
# SYMBOLS) and data helpers (random_prompts) are imported from tests/tiny.py and tests/toy.py.

import pytest  # noqa: E402
import scripted  # noqa: E402
import tiny  # noqa: E402
import toy  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model():
    """`tiny_model(arch="llama", seed=0)`: a random fp32 model of a test architecture, cached (do not modify it)."""
    return tiny.tiny_model


@pytest.fixture(scope="session")
def tiny_config():
    """`tiny_config(arch="llama")`: a new config of a test architecture."""
    return tiny.tiny_config


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """`tiny_tokenizer()`: a byte-level BPE tokenizer trained in code, matching the tiny models' vocabulary."""
    return tiny.tiny_tokenizer


@pytest.fixture(scope="session")
def toy_model():
    """`toy_model(steps=300, seed=0)`: a fresh copy of a tiny Llama trained on the toy language."""
    return toy.toy_model


@pytest.fixture(scope="session")
def toy_tokenizer():
    """`toy_tokenizer()`: the toy language's word-level tokenizer."""
    return toy.toy_tokenizer


@pytest.fixture(scope="session")
def toy_prompts():
    """`toy_prompts(count, seed, length=8)`: prompts in the toy language."""
    return toy.toy_prompts


@pytest.fixture(scope="session")
def memorizing_model():
    """`memorizing_model(texts, steps=400)`: a tiny Llama that greedily reproduces the given texts (cached)."""
    return scripted.memorizing_model


@pytest.fixture(scope="session")
def rule_model():
    """`rule_model(rule)`: a tiny Llama whose greedy choice is `rule(tokens, positions)`."""
    return scripted.rule_model


# --- the toy model's own Jacobi trajectories (training data of the trainer tests) ------------------------------------


@pytest.fixture(scope="session")
def toy_trajectory_dir(tmp_path_factory, toy_model, toy_tokenizer, toy_prompts):
    """The toy model's trajectories on 128 toy prompts (n = toy.JACOBI_N, 32 new tokens), collected once."""
    from hf_cllm import collect_trajectories

    model, tokenizer = toy_model(), toy_tokenizer()
    folder = tmp_path_factory.mktemp("toy") / "trajectories"
    collect_trajectories(
        model, tokenizer, toy_prompts(128, seed=7), jacobi_n=toy.JACOBI_N, max_new_tokens=32, output_dir=folder,
        batch_size=32, chat=False, progress=False,
    )  # fmt: skip
    return folder


@pytest.fixture(scope="session")
def toy_trajectories(toy_trajectory_dir):
    from hf_cllm import load_trajectories

    return load_trajectories(toy_trajectory_dir)


@pytest.fixture(scope="session")
def held_out_prompts(toy_tokenizer, toy_prompts):
    """`held_out_prompts(count=16)`: token ids of toy prompts no trajectory was collected on."""

    def held_out_prompts(count=16):
        tokenizer = toy_tokenizer()
        return [tokenizer(text)["input_ids"] for text in toy_prompts(count, seed=99)]

    return held_out_prompts


@pytest.fixture(scope="session")
def consistency_toy_model(toy_trajectories, toy_model, toy_tokenizer, tmp_path_factory):
    """The toy model after 400 steps of consistency training on its own trajectories (TPF ~3 at n = toy.JACOBI_N)."""
    from hf_cllm import CLLMConfig, CLLMTrainer

    model = toy_model()
    args = CLLMConfig(
        output_dir=str(tmp_path_factory.mktemp("consistency_toy")), jacobi_n=toy.JACOBI_N, use_cpu=True,
        report_to="none", save_strategy="no", disable_tqdm=True, per_device_train_batch_size=8, max_steps=400,
        learning_rate=2e-3, lr_scheduler_type="constant", logging_steps=100, seed=0,
    )  # fmt: skip
    CLLMTrainer(model=model, args=args, train_dataset=toy_trajectories, processing_class=toy_tokenizer()).train()
    return model.eval()
