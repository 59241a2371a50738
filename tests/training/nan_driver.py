"""Train exactly as ``python -m hyperscale.train`` does, with non-finite losses injected at chosen steps.

    [torchrun --standalone --nproc_per_node 2] tests/training/nan_driver.py --nan-steps 3,4 [--nan-ranks 1] \
        CONFIG [overrides]

On the listed optimizer steps (1-based, as ``train_log.jsonl`` counts them) and ranks (default: all), the loss
of every micro-batch is multiplied by NaN before the backward pass: the gradients become NaN as they do when a
run diverges, or when one rank meets a bad batch. The tests use it to check ``train.nonfinite``.
"""
from __future__ import annotations

import sys

from hyperscale.errors import run_main
from hyperscale.train import build_arg_parser
from hyperscale.training import engine as eng
from hyperscale.training.config import load_config
from hyperscale.training.recipe import Recipe


def _steps(text: str) -> set[int]:
    return {int(x) for x in text.split(",") if x}


def main(argv: list[str] | None = None) -> int:
    parser = build_arg_parser("nan_driver.py")
    parser.add_argument("--nan-steps", type=_steps, required=True, help="steps whose loss becomes NaN, e.g. 3,4")
    parser.add_argument("--nan-ranks", type=_steps, default=None, help="only on these ranks (default: all)")
    args = parser.parse_intermixed_args(argv)
    forward_loss = eng.forward_loss

    def run() -> int:
        recipe = Recipe(load_config(args.config, args.overrides), resume=args.resume)

        def poisoned(engine, batch, task_ids):
            loss, per_example = forward_loss(engine, batch, task_ids)
            if recipe.state.step + 1 in args.nan_steps and (args.nan_ranks is None or recipe.rank in args.nan_ranks):
                return loss * float("nan"), per_example * float("nan")
            return loss, per_example

        eng.forward_loss = poisoned
        recipe.setup()
        recipe.train()
        recipe.finish()
        return 0

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
