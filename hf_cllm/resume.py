"""Output folders of long jobs (collection, benchmarks) that resume: a settings file records what the folder holds,
so a rerun with the same settings continues it and one with other settings is refused instead of mixing results."""

from __future__ import annotations

import json
import os
from pathlib import Path


def resume_or_refuse(output_dir, settings: dict, filename: str, *, what: str, write: bool = True) -> None:
    """Refuse `output_dir` when it holds `what` made with settings other than `settings`; in a new folder, record
    them (written to a temporary file and renamed, so the file is complete or absent). `write=False` only checks
    (the non-main processes of a distributed run)."""
    output_dir = Path(output_dir)
    path = output_dir / filename
    if path.exists():
        try:
            recorded = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path} is damaged ({error.msg}, line {error.lineno}); it records what {output_dir} holds: restore "
                "it, or use a new output dir"
            ) from None
        if recorded != settings:
            changed = sorted(k for k in settings.keys() | recorded.keys() if recorded.get(k) != settings.get(k))
            raise ValueError(
                f"{output_dir} holds {what} made with other settings ({', '.join(changed)} differ): use a new "
                "output dir, or the same settings to resume"
            )
    elif write:
        output_dir.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{filename}.tmp")
        temporary.write_text(json.dumps(settings, indent=2))
        os.replace(temporary, path)
