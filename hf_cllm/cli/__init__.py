"""The `hf-cllm` command line: one module per subcommand, each with `HELP`, `add_arguments(parser)`, `run(args)`.

Subcommand modules import torch/transformers only inside `run`, so `hf-cllm --help` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .common import CLIError


# name -> module; later subcommands (collect, train, bench, push) register here.
SUBCOMMANDS = {
    "demo": "hf_cllm.cli.demo",
    "generate": "hf_cllm.cli.generate",
    "collect": "hf_cllm.cli.collect",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-cllm",
        description="Consistency LLMs on the Hugging Face stack: lossless Jacobi decoding, collection, training.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(
            name, help=module.HELP, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
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
