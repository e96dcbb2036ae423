"""The fast path: the dtype chosen for the device, windows of one width (`jacobi_width`, a static cache), and compiled
decoding with frozen weights on a CPU (`hf_cllm.fast.compile_config`)."""

import copy

import pytest
import torch
from tiny import random_prompts

from hf_cllm import enable_jacobi, fast
from hf_cllm.decoding import CPU_WINDOW, reuse_frozen_cache
from hf_cllm.speed import count_forwards


# --- the dtype ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_dtype_is_bfloat16_only_where_the_cpu_computes_it(monkeypatch, native, expected):
    monkeypatch.setattr(fast, "cpu_computes_bf16", lambda: native)
    assert fast.resolve_dtype("auto", "cpu") == fast.fast_dtype("cpu") == expected
    assert fast.resolve_dtype("float32", "cpu") == torch.float32  # forced, whatever the CPU
    assert fast.resolve_dtype(torch.float16) == torch.float16


def test_cpu_bf16_is_detected_not_assumed(monkeypatch):
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: False, raising=False)
    monkeypatch.setattr(fast.Path, "read_text", lambda self: "flags : fpu sse avx2 avx512f")
    assert not fast.cpu_computes_bf16()
    monkeypatch.setattr(fast.Path, "read_text", lambda self: "flags : fpu avx512f avx512_bf16")
    assert fast.cpu_computes_bf16()
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    monkeypatch.setattr(fast.Path, "read_text", lambda self: "")
    assert fast.cpu_computes_bf16()


def test_a_bad_dtype_names_the_choices():
    with pytest.raises(ValueError, match="dtype must be one of .*'float32' for results exactly identical"):
        fast.resolve_dtype("fp32")


def test_compile_config_compiles_on_a_cpu_with_frozen_weights():
    config = fast.compile_config("cpu")
    assert config._compile_all_devices and config.options == {"freezing": True} and config.dynamic is False
    assert config == fast.compile_config("cpu")  # equal configs: `generate` keeps its compiled call
    assert not fast.compile_config("cuda")._compile_all_devices


# --- windows of one width ------------------------------------------------------------------------------------------


def forward_widths(model, **kwargs):
    """The output of `generate` and the width of every forward after the prefill."""
    widths = []
    handle = model.register_forward_pre_hook(lambda module, args, kw: widths.append(kw["input_ids"].shape[1]),
                                             with_kwargs=True)  # fmt: skip
    try:
        return model.generate(**kwargs), widths[1:]
    finally:
        handle.remove()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize(("jacobi_n", "width"), [(1, 8), (4, 8), ("auto", 8), ("auto", 5)])
def test_jacobi_width_pads_every_forward_and_stays_identical(arch, jacobi_n, width, tiny_model):
    model = enable_jacobi(tiny_model(arch))
    input_ids, attention_mask = random_prompts(2, [7, 4], seed=3)
    common = dict(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=24, do_sample=False)
    expected = model.generate(**common)
    got, widths = forward_widths(model, **common, jacobi_n=jacobi_n, jacobi_width=width)
    assert torch.equal(got, expected)
    assert set(widths[:-3]) == {width}  # the last steps may not have room for a padded window before max_length


@pytest.mark.parametrize(("jacobi_n", "jacobi_blocks", "width"), [(4, 1, 4), (4, 2, 8), ("auto", 1, CPU_WINDOW)])
def test_a_static_cache_gives_every_window_one_width(jacobi_n, jacobi_blocks, width, tiny_model):
    model = enable_jacobi(tiny_model("llama"))
    input_ids, attention_mask = random_prompts(1, [6], seed=1)
    common = dict(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=40, do_sample=False)
    expected = model.generate(**common)
    got, widths = forward_widths(model, **common, jacobi_n=jacobi_n, jacobi_blocks=jacobi_blocks,
                                 cache_implementation="static", max_cache_len=64)  # fmt: skip
    assert torch.equal(got, expected)
    assert set(widths) == {width}  # auto's default widest window on a CPU, where every window costs the same


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(jacobi_n=4, jacobi_width=3), "narrower than the widest window"),
        (dict(jacobi_n=4, jacobi_blocks=2, jacobi_width=6), r"`jacobi_width` ≥ 8"),
        (dict(jacobi_n=4, jacobi_width=0), "`jacobi_width` must be a positive integer"),
        (dict(jacobi_n="auto", jacobi_width="8"), "`jacobi_width` must be a positive integer"),
    ],
)
def test_bad_jacobi_width_is_refused(options, message, tiny_model):
    model = enable_jacobi(tiny_model("llama"))
    with pytest.raises(ValueError, match=message):
        model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4, **options)


def test_bfloat16_jacobi_equals_greedy_at_its_width(tiny_model):
    """In bfloat16, one width makes every token's logits independent of what else the window held: Jacobi decoding
    (fixed n and "auto") equals greedy decoding computed at the same width, token for token."""
    model = enable_jacobi(copy.deepcopy(tiny_model("llama")).to(torch.bfloat16))
    for seed in range(4):
        input_ids, attention_mask = random_prompts(1, [5 + seed], seed=seed)
        common = dict(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=48, do_sample=False,
                      cache_implementation="static", max_cache_len=80)  # fmt: skip
        reference = model.generate(**common, jacobi_n=1, jacobi_width=8)
        for jacobi_n in (4, 8, "auto"):
            assert torch.equal(model.generate(**common, jacobi_n=jacobi_n, jacobi_width=8), reference)


# --- compiled, frozen weights ----------------------------------------------------------------------------------------


def test_frozen_cache_is_reused_reset_and_replaced(tiny_model, monkeypatch):
    model = enable_jacobi(copy.deepcopy(tiny_model("llama")))
    resets = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(1))
    frozen = dict(cache_implementation="static", compile_config=fast.compile_config("cpu"), max_new_tokens=20)
    first = reuse_frozen_cache(model, torch.ones(1, 10, dtype=torch.long), None, frozen)
    assert first["cache"].layers[0].max_cache_len == 256 and first["cache_implementation"] is None
    again = reuse_frozen_cache(model, torch.ones(1, 30, dtype=torch.long), None, frozen, margin=8)
    assert again["cache"] is first["cache"] and resets == []  # the same tensors a frozen graph holds
    longer = reuse_frozen_cache(model, torch.ones(1, 250, dtype=torch.long), None, frozen)
    assert longer["cache"] is not first["cache"] and longer["cache"].layers[0].max_cache_len == 512
    assert resets == [1]  # graphs holding the old cache are dropped
    plain = dict(cache_implementation="static", max_new_tokens=20)  # no frozen weights: `generate` as usual
    assert reuse_frozen_cache(model, torch.ones(1, 10, dtype=torch.long), None, plain) is plain


def test_compiled_frozen_decoding_stays_exact_across_calls(tiny_model):
    """With inductor and frozen weights (compiled here, ~30 s), a graph keeps the static cache it was traced with:
    every call must decode from its own prompt (before the reused cache, the second call read the first's)."""
    torch._dynamo.reset()
    model = enable_jacobi(copy.deepcopy(tiny_model("llama")))
    compiled = dict(cache_implementation="static", compile_config=fast.compile_config("cpu"), max_new_tokens=24,
                    do_sample=False, max_cache_len=64)  # fmt: skip  (one cache size: no recompilation between calls)
    try:
        for seed in (1, 2, 3):
            input_ids, attention_mask = random_prompts(1, [6 + seed], seed=seed)
            inputs = dict(input_ids=input_ids, attention_mask=attention_mask)
            expected = model.generate(**inputs, max_new_tokens=24, do_sample=False)
            with count_forwards(model) as calls:
                got = model.generate(**inputs, **compiled, jacobi_n=4, return_dict_in_generate=True)
            assert torch.equal(got.sequences, expected)
            assert calls[0] == int(got.num_forward_passes[0])
    finally:
        torch._dynamo.reset()


def test_collection_records_the_teacher_dtype_and_keeps_one_per_folder(tiny_model, tiny_tokenizer, tmp_path):
    from hf_cllm import collect_trajectories
    from hf_cllm.trajectories import read_settings

    model = copy.deepcopy(tiny_model("llama"))
    settings = dict(jacobi_n=4, max_new_tokens=8, chat=False, progress=False)
    prompts = ["the quick brown fox", "hello world"]
    collect_trajectories(model, tiny_tokenizer(), prompts, output_dir=tmp_path / "fp32", **settings)
    assert "teacher_dtype" not in read_settings(tmp_path / "fp32")  # float32 folders read as they always did
    model.to(torch.bfloat16)
    collect_trajectories(model, tiny_tokenizer(), prompts, output_dir=tmp_path / "bf16", **settings)
    assert read_settings(tmp_path / "bf16")["teacher_dtype"] == "bfloat16"
    with pytest.raises(ValueError, match=r"other settings \(teacher_dtype differ\)"):
        collect_trajectories(model, tiny_tokenizer(), prompts, output_dir=tmp_path / "fp32", **settings)
    model.to(torch.float32)
    with pytest.raises(ValueError, match=r"other settings \(teacher_dtype differ\)"):
        collect_trajectories(model, tiny_tokenizer(), prompts, output_dir=tmp_path / "bf16", **settings)


# --- the command line -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "native", "environment", "added"),
    [
        ([], True, {}, True),  # nothing chosen, bfloat16 native: autocast on
        ([], False, {}, False),  # no native bfloat16: float32
        (["--bf16", "false"], True, {}, False),  # the user's choice stands
        (["--fp16=true"], True, {}, False),
        ([], True, {"ACCELERATE_MIXED_PRECISION": "no"}, False),  # so does `accelerate launch --mixed_precision`
    ],
)
def test_train_turns_on_bf16_autocast_only_where_nothing_was_chosen(monkeypatch, arguments, native, environment,
                                                                     added):  # fmt: skip
    from hf_cllm.cli.train import with_native_precision

    monkeypatch.setattr(fast, "computes_bf16", lambda device: native)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    got = with_native_precision(["--output_dir", "out", *arguments])
    assert got == ["--output_dir", "out", *arguments] + (["--bf16", "true"] if added else [])


def test_train_reads_the_precision_chosen_in_the_config_file(monkeypatch, tmp_path):
    from hf_cllm.cli.train import with_native_precision

    monkeypatch.setattr(fast, "computes_bf16", lambda device: True)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    (tmp_path / "chosen.yaml").write_text("output_dir: out\nbf16: false\n")
    (tmp_path / "silent.yaml").write_text("output_dir: out\n")
    chosen = ["--config", str(tmp_path / "chosen.yaml")]
    assert with_native_precision(chosen) == chosen
    assert with_native_precision(["--config", str(tmp_path / "silent.yaml")])[-2:] == ["--bf16", "true"]


@pytest.mark.skipif(torch.accelerator.current_accelerator() is not None, reason="a machine with only a CPU")
def test_train_parses_bf16_on_a_machine_with_only_a_cpu(tmp_path):
    """What a user types on a CPU-only machine (no --use_cpu) parses into bf16 autocast on the CPU, instead of
    TrainingArguments' "Your setup doesn't support bf16/gpu"."""
    from hf_cllm.cli.train import parser

    _, config, _ = parser().parse_args_and_config(["--output_dir", str(tmp_path), "--bf16", "true"])
    assert config.bf16 and config.use_cpu and config.device.type == "cpu"


def test_compile_flag_gives_a_static_cache_and_the_fast_compile_config():
    import argparse

    from hf_cllm.cli.common import add_model_arguments, decoding_options

    parser = argparse.ArgumentParser()
    add_model_arguments(parser, compile=True)
    model = torch.nn.Linear(1, 1)
    model.device = torch.device("cpu")
    assert decoding_options(parser.parse_args([]), model) == {}
    options = decoding_options(parser.parse_args(["--compile"]), model)
    assert options == {"cache_implementation": "static", "compile_config": fast.compile_config("cpu")}
    assert parser.parse_args([]).dtype == "auto"
