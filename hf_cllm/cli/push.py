"""Push to the Hugging Face Hub, in one commit each:

  hf-cllm push MODEL_FOLDER --repo-id user/name     a trained CLLM: weights, config, generation_config.jacobi_n,
                                                   custom_generate/ (Jacobi decoding with transformers alone) and a
                                                   model card
  hf-cllm push --decoder --repo-id user/name        a standalone decoder repo, for any model:
                                                   generate(..., custom_generate="user/name", trust_remote_code=True)
  hf-cllm push --trajectories DIR --repo-id user/name   collected trajectories as a dataset, with a dataset card

Needs a token (`hf auth login`, HF_TOKEN or --token); offline (HF_HUB_OFFLINE=1) nothing is sent.
"""

from __future__ import annotations

from .common import CLIError, positive_int


HELP = "push a trained CLLM, the standalone Jacobi decoder, or trajectories to the Hub"


def add_arguments(parser) -> None:
    parser.add_argument("folder", nargs="?", help="a saved model folder (save_pretrained / hf-cllm train output)")
    parser.add_argument("--repo-id", required=True, help="user-or-org/name")
    parser.add_argument("--decoder", action="store_true", help="push the decoder alone (custom_generate/ + card)")
    parser.add_argument("--trajectories", metavar="DIR", help="push a `hf-cllm collect` folder as a dataset")
    parser.add_argument("--jacobi-n", type=positive_int, default=None, help="block size, if the model has none saved")
    parser.add_argument("--private", action="store_true", default=None)
    parser.add_argument("--token", default=None)
    parser.add_argument("--commit-message", default=None)


def run(args) -> int:
    from ..hub import push_decoder, push_model, push_trajectories

    if sum(bool(x) for x in (args.folder, args.decoder, args.trajectories)) != 1:
        raise CLIError("give a model folder, --decoder or --trajectories DIR (exactly one)")
    try:
        if args.decoder:
            url = push_decoder(
                args.repo_id, token=args.token, private=args.private, commit_message=args.commit_message
            )
        elif args.trajectories:
            url = push_trajectories(args.trajectories, args.repo_id, token=args.token, private=bool(args.private))
        else:
            url = push_model(
                args.folder,
                args.repo_id,
                token=args.token,
                private=args.private,
                commit_message=args.commit_message,
                jacobi_n=args.jacobi_n,
            )
    except ValueError as error:
        raise CLIError(str(error)) from None
    print(f"Pushed: {url}")
    return 0
