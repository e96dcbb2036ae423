"""The package itself: cheap import, declared dependencies."""

import subprocess
import sys
from pathlib import Path

import tomllib


ROOT = Path(__file__).resolve().parents[1]


def test_import_is_cheap():
    heavy = "('torch', 'transformers', 'trl', 'datasets', 'evaluate')"
    code = f"import sys, hf_cllm; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_lazy_names_resolve_and_unknown_names_fail():
    import hf_cllm

    for name in hf_cllm.__all__:
        assert getattr(hf_cllm, name) is not None
    try:
        hf_cllm.not_a_name
    except AttributeError as error:
        assert "not_a_name" in str(error)
    else:
        raise AssertionError("unknown attribute did not raise")


def test_dependencies_are_declared_with_ranges():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {dep.split(">")[0].split("<")[0].split("=")[0].strip() for dep in project["dependencies"]}
    assert {"torch", "transformers", "accelerate", "trl", "datasets", "evaluate"} <= names
    assert all(any(op in dep for op in (">=", "==")) for dep in project["dependencies"])
    assert "test" in project["optional-dependencies"]
