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
