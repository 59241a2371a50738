"""Helpers for the modeling tests: tiny T5 backbones built from configs (no downloads)."""
from __future__ import annotations

import torch

from transformers import MT5Config, MT5ForConditionalGeneration, T5Config, T5ForConditionalGeneration

from hyperscale.modeling import HyperscaleModel
from hyperscale.modeling.presets import untie_lm_head

ADAPTER_METHODS = ("hyperformer++", "hyperformer", "adapters", "adapters-shared-norm")
ALL_METHODS = ADAPTER_METHODS + ("finetune",)
TASKS = ["rte", "sst2", "cola"]
VOCAB = 64
D_MODEL = 32
RF = 8  # bottleneck 4

def tiny_config(version: str = "v1.0", **kw) -> T5Config:
    """A tiny T5 (v1.0: relu, tied head; v1.1: gated-gelu, untied head; mt5: MT5Config)."""
    base = dict(vocab_size=VOCAB, d_model=D_MODEL, d_ff=48, d_kv=8, num_heads=4, num_layers=2, num_decoder_layers=2,
                dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                relative_attention_num_buckets=8)
    if version == "v1.0":
        base.update(feed_forward_proj="relu", tie_word_embeddings=True)
    elif version in ("v1.1", "mt5"):
        base.update(feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    else:
        raise ValueError(version)
    base.update(kw)
    return MT5Config(**base) if version == "mt5" else T5Config(**base)


def tiny_backbone(version: str = "v1.0", seed: int = 0, **kw) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    cfg = tiny_config(version, **kw)
    model = MT5ForConditionalGeneration(cfg) if version == "mt5" else T5ForConditionalGeneration(cfg)
    if version != "v1.0":
        untie_lm_head(model)  # transformers 5 ties every head built from a config; v1.1/mT5 checkpoints do not
    return model.eval()


def clone_backbone(backbone: T5ForConditionalGeneration) -> T5ForConditionalGeneration:
    """An independent copy without any hooks (for 'bare backbone' comparisons)."""
    fresh = type(backbone)(backbone.config)
    if backbone.lm_head.weight is not backbone.shared.weight:
        untie_lm_head(fresh)
    fresh.load_state_dict(backbone.state_dict())
    for mod in fresh.modules():
        assert not mod._forward_hooks
    return fresh.eval()


def build(method: str = "hyperformer++", version: str = "v1.0", tasks=TASKS, seed: int = 0,
          perturb: bool = True, init_factor: float = 1.0, **kw) -> HyperscaleModel:
    """A wrapped tiny model; ``perturb`` makes every task's adapters large and distinct.

    ``init_factor`` scales the backbone's initialisation (2.0 gives varied, input-dependent greedy
    generations while fp32 stays well conditioned; much larger makes the random net chaotic)."""
    backbone = tiny_backbone(version, seed, initializer_factor=init_factor)
    model = HyperscaleModel.from_backbone(backbone, list(tasks), method=method, reduction_factor=RF, **kw).eval()
    if perturb and model.bank is not None:
        perturb_bank(model, seed + 1)
    return model


@torch.no_grad()
def perturb_bank(model: HyperscaleModel, seed: int = 1, scale: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    for _, p in sorted(model.bank.named_parameters()):
        p.add_(torch.randn(p.shape, generator=g) * scale)


def batch(n: int = 4, src_len: int = 7, tgt_len: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    """Padded inputs with distinct lengths, labels with -100 padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (n, src_len), generator=g)
    mask = torch.ones(n, src_len, dtype=torch.long)
    labels = torch.randint(2, VOCAB, (n, tgt_len), generator=g)
    for i in range(n):
        cut = src_len - (i % 3)
        ids[i, cut:] = 0
        mask[i, cut:] = 0
        labels[i, tgt_len - (i % 2):] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def gen_rows(d: int, m: int) -> dict[str, slice]:
    """Row ranges of the fused generator output (layout documented in hypernet.py)."""
    sizes = {"down_w": m * d, "down_b": m, "up_w": d * m, "up_b": d, "gamma": d, "beta": d}
    out, start = {}, 0
    for name, n in sizes.items():
        out[name] = slice(start, start + n)
        start += n
    return out


@torch.no_grad()
def make_identity(model) -> None:
    """Zero the up-projection (weight and bias) and beta of every adapter: A(y) = LN(0)*gamma + 0 + y = y."""
    method = model.config.method
    if method in ("adapters", "adapters-shared-norm"):
        for stack in model.bank.stacks.values():
            stack.up_w.zero_()
            stack.up_b.zero_()
            stack.beta.zero_()
        return
    rows = gen_rows(D_MODEL, D_MODEL // RF)
    for stack in model.bank.stacks.values():
        for name in ("up_w", "up_b", "beta"):
            if method == "hyperformer++":
                stack.generator.weight[rows[name]] = 0
                stack.generator.bias[rows[name]] = 0
            else:
                stack.gen_weight[:, rows[name]] = 0
                stack.gen_bias[:, rows[name]] = 0


__all__ = ["ADAPTER_METHODS", "ALL_METHODS", "TASKS", "tiny_config", "tiny_backbone", "clone_backbone", "build",
           "perturb_bank", "batch", "gen_rows",
           "make_identity"]
