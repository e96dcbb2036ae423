"""The `hf-cllm` command line: one module per subcommand, each with `HELP`, `add_arguments(parser)`, `run(args)`.

Subcommand modules import torch/transformers only inside `run`, so `hf-cllm --help` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .common import CLIError


# name -> module, in the order `hf-cllm --help` lists them.
SUBCOMMANDS = {
    "demo": "hf_cllm.cli.demo",
    "generate": "hf_cllm.cli.generate",
    "collect": "hf_cllm.cli.collect",
    "train": "hf_cllm.cli.train",
    "push": "hf_cllm.cli.push",
    "bench": "hf_cllm.cli.bench",
    "serve": "hf_cllm.cli.serve",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-cllm",
        description="Consistency LLMs on the Hugging Face stack: lossless Jacobi decoding, collection, training.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        # A PASSTHROUGH subcommand hands its arguments (--help included) to its own parser, e.g. TRL's.
        sub = subparsers.add_parser(
            name,
            help=module.HELP,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            add_help=not getattr(module, "PASSTHROUGH", False),
        )
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    module = importlib.import_module(SUBCOMMANDS[argv[0]]) if argv and argv[0] in SUBCOMMANDS else None
    if getattr(module, "PASSTHROUGH", False):
        args = argparse.Namespace(command=argv[0], arguments=argv[1:], run=module.run)
    else:
        args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except CLIError as error:
        print(f"hf-cllm {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hf-cllm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
