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


def _hf_cllm_imports() -> dict[str, set[str]]:
    """module -> the hf_cllm modules it imports (relative imports resolved), read from the source."""
    import ast

    graph = {}
    for path in sorted((ROOT / "hf_cllm").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        package = parts[:-1]  # what relative imports start from
        module = ".".join(package if path.name == "__init__.py" else parts)
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[: len(package) - node.level + 1]
                if node.module:
                    imported.add(".".join([*base, node.module]))
                else:
                    imported.update(".".join([*base, alias.name]) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hf_cllm"):
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names if alias.name.startswith("hf_cllm"))
        graph[module] = {name for name in imported if name != module}
    return graph


def test_what_may_import_what():
    """The rules of docs/architecture.md, checked on the source."""
    graph = _hf_cllm_imports()
    short = {module: {name.removeprefix("hf_cllm.") for name in names} for module, names in graph.items()}
    shipped = {"decoding", "verify", "windows", "routing", "hub_generate"}  # copied into custom_generate/
    contracts = {"trajectories", "prompts", "resume", "losses", "assets", "visualize"}
    training = {"config", "losses", "packing", "trainer"}
    for name in shipped:
        assert short[f"hf_cllm.{name}"] <= shipped, name  # torch and transformers only, and each other
    for name in contracts:
        assert short[f"hf_cllm.{name}"] == set(), name
    for module, names in short.items():
        inside = module.removeprefix("hf_cllm.")
        if not inside.startswith(("cli", "hf_cllm")) and inside != "__main__":
            assert not {n for n in names if n.startswith("cli")}, f"{module} imports the CLI"
        if not inside.startswith(("cli", "bench")) and module != "hf_cllm":
            assert not {n for n in names if n.startswith("bench")}, f"{module} imports the benchmarks"
        if inside not in training and not inside.startswith("cli") and module != "hf_cllm":
            assert not names & training, f"{module} imports training code"
        if inside.startswith("bench.tasks."):
            assert names <= {"bench.data", "bench.sandbox", "bench.spider_sql", "bench.task"}, module
    assert "collection" not in short["hf_cllm.trainer"] | short["hf_cllm.packing"]  # they read the contract only
