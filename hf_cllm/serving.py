"""Serve a CLLM with Jacobi decoding on transformers' own OpenAI-compatible server (`transformers serve`).

Nothing of transformers is patched. `transformers serve --trust-remote-code` loads a model folder with
`from_pretrained(..., trust_remote_code=True)`, which makes the folder's `custom_generate/generate.py` the model's
`generate`; the server calls `model.generate(**inputs, generation_config=..., streamer=..., tokenizer=...)` one
request at a time. So serving with Jacobi decoding needs only a folder transformers can load that has

- the model's files (linked, not copied),
- a `generation_config.json` with `jacobi_n` (the block size, or "auto"),
- hf_cllm's `custom_generate/` (the same files `hf_cllm.write_custom_generate` puts beside a trained CLLM).

`serving_folder` builds that overlay for any model folder or Hub id; `serve` runs the server on it, answering
requests that `generate` refuses (a bad `jacobi_n`, say) with HTTP 400 and the message instead of a bare 500.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from .hub import CUSTOM_GENERATE_DIR, write_custom_generate


GENERATION_CONFIG = "generation_config.json"
DEFAULT_SERVE_JACOBI_N = "auto"


def model_files(model: str) -> Path:
    """A local folder as it is; a Hub id downloaded (or found in the cache when offline) by `huggingface_hub`."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path.resolve()
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model))


def served_name(model: str) -> str:
    """The name requests use for `model`: a Hub id (or the embedded model's name) as given, a local folder's name."""
    path = Path(model).expanduser()
    return path.resolve().name if path.is_dir() else model


def serving_folder(model: str, jacobi_n: int | str | None = None, root: str | os.PathLike | None = None,
                   name: str | None = None) -> Path:  # fmt: skip
    """An overlay folder of `model` (a folder or Hub id) that decodes with Jacobi under `transformers serve
    --trust-remote-code`, at `root / name`.

    `jacobi_n`: the block size requests get by default (a request's `generation_config` may change it); None keeps
    the model's own `generation_config.jacobi_n` (a CLLM saved by hf_cllm has one), else "auto".
    `root`: where overlays live (default: hf_cllm's cache folder, `serve/`); `name`: `served_name(model)` unless
    given. Rebuilt on every call, so it always mirrors the model and this version of hf_cllm.
    """
    from transformers import AutoConfig, GenerationConfig

    from .assets import cache_root
    from .decoding import validate_jacobi_n

    source = model_files(model)
    if jacobi_n is not None:
        validate_jacobi_n(jacobi_n)
    folder = Path(root or cache_root() / "serve") / (name or served_name(model))
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for item in source.iterdir():
        if item.name not in (GENERATION_CONFIG, CUSTOM_GENERATE_DIR) and not item.name.startswith("."):
            (folder / item.name).symlink_to(item.resolve())
    if (source / GENERATION_CONFIG).is_file():
        config = GenerationConfig.from_pretrained(source)
    else:
        config = GenerationConfig.from_model_config(AutoConfig.from_pretrained(source))
    if jacobi_n is not None or getattr(config, "jacobi_n", None) is None:
        config.jacobi_n = jacobi_n if jacobi_n is not None else DEFAULT_SERVE_JACOBI_N
        config._from_model_config = False  # else reloading drops the custom key (as `set_default_jacobi_n` does)
    config.save_pretrained(folder)
    write_custom_generate(folder)
    return folder


def check_request(body: bytes) -> None:
    """Refuse (ValueError) a request whose `generation_config` field sets an invalid `jacobi_n`. Anything else (not
    JSON, no such field, a field that is not valid JSON) is left to the server, which answers it itself."""
    from .decoding import validate_jacobi_n

    try:
        request = json.loads(body or b"{}")
        settings = request.get("generation_config") if isinstance(request, dict) else None
        settings = json.loads(settings) if isinstance(settings, str) else None
    except ValueError:  # e.g. an audio upload (multipart), or a malformed field: not ours to judge
        return
    if isinstance(settings, dict) and settings.get("jacobi_n") is not None:
        validate_jacobi_n(settings["jacobi_n"])


def serve(folder: str | os.PathLike, name: str, *, host: str = "localhost", port: int = 8000, dtype: str = "auto",
          device: str = "auto", log_level: str = "info") -> None:  # fmt: skip
    """Run `transformers serve` on `folder` (a `serving_folder` at `root / name`) until interrupted; requests name
    the model `name` (or leave it out). Logs one line per request with its TPF.

    Works from `root`: the server takes a model id that is an existing path as a local folder, and pins every
    request to that id, so the id requests use must be the folder's path — relative to `root`, it is `name`."""
    from fastapi.responses import JSONResponse
    from transformers.cli.serve import Serve

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     hf_cllm: %(message)s"))
    decoding_log = logging.getLogger("hf_cllm.decoding")
    decoding_log.addHandler(handler)
    decoding_log.setLevel(logging.INFO)

    class _Server(Serve):
        """`transformers serve`, built but not started, so hf_cllm's error handling joins the app first."""

        def start_server(self):
            pass

    folder = Path(folder).resolve()
    if folder.parts[-len(Path(name).parts) :] != Path(name).parts:
        raise ValueError(f"serve: the folder {folder} does not end in the served name {name!r}")
    os.chdir(folder.parents[len(Path(name).parts) - 1])
    server = _Server(force_model=name, trust_remote_code=True, dtype=dtype, device=device, host=host,
                     port=port, log_level=log_level, non_blocking=True)  # fmt: skip
    app = server.server.config.app

    def invalid_request(error: ValueError):
        message = " ".join(str(error).split())
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, status_code=400)

    @app.exception_handler(ValueError)
    async def _refused_by_generate(_request, error: ValueError):
        # `generate`'s refusals (hf_cllm's and transformers' own) are the request's fault: say so, and keep serving.
        return invalid_request(error)

    @app.middleware("http")
    async def _check_jacobi_n(request, call_next):
        # Checked before the server answers: a streamed answer has sent its 200 when `generate` starts, and
        # transformers then reports a refusal inside the stream (as JSON that breaks on a quote in the message).
        if request.method == "POST":
            try:
                check_request(await request.body())
            except ValueError as error:
                return invalid_request(error)
        return await call_next(request)

    server.server.run()
