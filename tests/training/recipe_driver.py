"""Run the training recipe exactly as ``python -m hyperscale.train`` does, plus a probe for the tests.

    torchrun --standalone --nproc_per_node 2 tests/training/recipe_driver.py CONFIG [overrides] \
        [--resume auto] --probe OUT.pt

After ``train()`` and before ``finish()`` every rank runs the training engine's module (all ranks
together, so ZeRO-3's gathers line up) on a fixed batch per task: decoder logits for given labels
and greedy generations. Rank 0 saves inputs and outputs to ``--probe``; the tests compare them with
what the exported weights compute. This is the engine's view of the weights at the end of
training, independent of the checkpoint and export code paths.
"""
from __future__ import annotations

import sys

import torch

from hyperscale.train import build_arg_parser
from hyperscale.training.config import load_config
from hyperscale.training.logging import quiet_known_noise
from hyperscale.training.recipe import Recipe

N_PROBE = 4  # examples per task
MAX_NEW_TOKENS = 4


@torch.no_grad()
def probe(recipe: Recipe) -> dict:
    module = recipe.engine.module
    module.eval()
    sharded = recipe.cfg.deepspeed.zero_stage == 3 and recipe.world > 1
    out: dict = {"step": recipe.state.step, "tasks": {}}
    for task in recipe.tasks:
        rows = recipe.data[task]["validation"]
        sources = list(rows["source"][:N_PROBE])
        targets = list(rows["target"][:N_PROBE])
        enc = recipe.tokenizer(sources, max_length=recipe.cfg.data.max_source_length, truncation=True,
                               padding=True, return_tensors="pt")
        lab = recipe.tokenizer(targets, padding=True, return_tensors="pt")
        labels = lab["input_ids"].masked_fill(lab["attention_mask"] == 0, -100)
        decoder_input_ids = module.backbone._shift_right(labels)
        logits = module(input_ids=enc["input_ids"].to(recipe.device),
                        attention_mask=enc["attention_mask"].to(recipe.device),
                        decoder_input_ids=decoder_input_ids.to(recipe.device), task_ids=task).logits
        generated = module.generate(input_ids=enc["input_ids"].to(recipe.device),
                                    attention_mask=enc["attention_mask"].to(recipe.device), task_ids=task,
                                    max_new_tokens=MAX_NEW_TOKENS, do_sample=False, num_beams=1,
                                    synced_gpus=sharded)
        out["tasks"][task] = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                              "decoder_input_ids": decoder_input_ids, "logits": logits.float().cpu(),
                              "generated": generated.cpu()}
    module.train()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_arg_parser("recipe_driver.py")
    parser.add_argument("--probe", required=True, help="where rank 0 writes the probe (torch.save)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    with quiet_known_noise():  # as the trainer's entry points run a recipe
        recipe = Recipe(cfg, resume=args.resume)
        recipe.setup()
        recipe.train()
        result = probe(recipe)
        if recipe.rank == 0:
            torch.save(result, args.probe)
        recipe.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
