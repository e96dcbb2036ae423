"""The built-in benchmark tasks, one module per task, named after it (see `hf_cllm.bench.task`)."""
