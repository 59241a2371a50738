"""Offline backbone presets: the architectures of public T5-family checkpoints as ``T5Config``s.

They need no download: ``build_backbone("preset:t5-base")`` makes a randomly initialised model of
that shape (for benchmarks and tests), and ``hyperscale params`` counts parameters on the meta
device without allocating weights.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import T5Config

from ..errors import ConfigError

_V10 = dict(feed_forward_proj="relu", tie_word_embeddings=True, vocab_size=32128)
_V11 = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False, vocab_size=32128)
_MT5 = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False, vocab_size=250112)


def _shape(d_model: int, d_ff: int, d_kv: int, heads: int, layers: int) -> dict:
    return dict(d_model=d_model, d_ff=d_ff, d_kv=d_kv, num_heads=heads, num_layers=layers, num_decoder_layers=layers)


PRESETS: dict[str, dict] = {
    # tiny: for tests and the embedded default run (real T5 vocabulary size)
    "t5-tiny": {**_V10, **_shape(64, 128, 16, 4, 2)},
    "t5-v1_1-tiny": {**_V11, **_shape(64, 128, 16, 4, 2)},
    "t5-small": {**_V10, **_shape(512, 2048, 64, 8, 6)},
    "t5-base": {**_V10, **_shape(768, 3072, 64, 12, 12)},
    "t5-large": {**_V10, **_shape(1024, 4096, 64, 16, 24)},
    "t5-3b": {**_V10, **_shape(1024, 16384, 128, 32, 24)},
    "t5-11b": {**_V10, **_shape(1024, 65536, 128, 128, 24)},
    "t5-v1_1-small": {**_V11, **_shape(512, 1024, 64, 6, 8)},
    "t5-v1_1-base": {**_V11, **_shape(768, 2048, 64, 12, 12)},
    "t5-v1_1-large": {**_V11, **_shape(1024, 2816, 64, 16, 24)},
    "t5-v1_1-xl": {**_V11, **_shape(2048, 5120, 64, 32, 24)},
    "t5-v1_1-xxl": {**_V11, **_shape(4096, 10240, 64, 64, 24)},
    "mt5-small": {**_MT5, **_shape(512, 1024, 64, 6, 8)},
    "mt5-base": {**_MT5, **_shape(768, 2048, 64, 12, 12)},
    "mt5-large": {**_MT5, **_shape(1024, 2816, 64, 16, 24)},
    "mt5-xl": {**_MT5, **_shape(2048, 5120, 64, 32, 24)},
    "mt5-xxl": {**_MT5, **_shape(4096, 10240, 64, 64, 24)},
}
for _size in ("small", "base", "large", "xl", "xxl"):
    PRESETS[f"flan-t5-{_size}"] = dict(PRESETS[f"t5-v1_1-{_size}"])

def preset_config(name: str) -> T5Config:
    key = name.removeprefix("preset:")
    if key not in PRESETS:
        raise ConfigError(f"unknown backbone preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    cfg = T5Config(**PRESETS[key], decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    if key.startswith("mt5"):
        cfg.model_type = "mt5"
    return cfg


def untie_lm_head(model: nn.Module) -> nn.Module:
    """Give a T5-family model built from a config its own LM head, as v1.1 / flan-t5 / mT5 checkpoints have.

    transformers 5 forces ``tie_word_embeddings=True`` on ``T5Config``/``MT5Config`` (v1.1 keeps only
    ``scale_decoder_outputs=False``), so a model built from a config shares its head with the input
    embedding; loading a real checkpoint unties it again because its head differs. Presets build from
    configs, so they untie explicitly (else v1.1/mT5 sizes are short by vocab_size * d_model).
    """
    if model.lm_head.weight is model.shared.weight:
        emb = model.shared.weight
        head = torch.empty_like(emb)
        if head.device.type != "meta":
            nn.init.normal_(head, std=float(getattr(model.config, "initializer_factor", 1.0)))
        model.lm_head.weight = nn.Parameter(head, requires_grad=emb.requires_grad)
        model.config.tie_word_embeddings = False
    return model


def preset_ties_head(name: str) -> bool:
    return bool(PRESETS[name.removeprefix("preset:")]["tie_word_embeddings"])


def backbone_from_config(config: Any, tied_head: bool) -> nn.Module:
    """A T5-family model built from ``config`` in the current device and dtype context (the meta device for a
    skeleton), with its own LM head unless ``tied_head`` (v1.1, flan-t5 and mT5 checkpoints have one)."""
    from transformers import AutoModelForSeq2SeqLM, MT5ForConditionalGeneration, T5ForConditionalGeneration

    if config.model_type == "mt5":
        model = MT5ForConditionalGeneration(config)
    elif config.model_type == "t5":
        model = T5ForConditionalGeneration(config)
    else:
        model = AutoModelForSeq2SeqLM.from_config(config)
    if not tied_head and hasattr(model, "lm_head") and hasattr(model, "shared"):
        untie_lm_head(model)
    return model
