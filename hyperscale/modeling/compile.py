"""``torch.compile`` support: counting graph breaks, and keeping the number of compiled graphs bounded.

What makes the hooked forward traceable (see ``context.py``, ``inject.py`` and ``HyperscaleModel``):
the hooks read the active context from a plain attribute while Dynamo traces (it cannot trace
``ContextVar``); ``AdapterHooks.attached`` is a plain bool (Dynamo cannot represent the hook handles);
task ids given as a tensor are never read on the host while compiling (``HyperscaleModel._traced_context``:
one id -> the single-task path, else weights for every task, picked per example), so neither a graph
break nor a recompile per batch composition. Task ids given as Python values (``"rte"``, ``[0, 2, 1]``)
also trace, but Dynamo specialises on their values: a graph per distinct value. Pass a tensor.

Recompilation: Dynamo compiles a graph per distinct input shape until it marks a changed size dynamic
(``torch.compile(dynamic=None)``, the default: a static graph, then one with the changed lengths
symbolic, measured 3 graphs for 6 batches of 5 different (source, target) lengths). Two bounded
alternatives:

- ``mark_lengths_dynamic(batch)`` before the first compiled call: one graph for every length;
- ``pad_to_bucket(batch, multiple)`` with ``torch.compile(dynamic=False)``: one static graph per
  (source bucket, target bucket) pair, which must stay under ``torch._dynamo.config.recompile_limit``
  (8 by default) or Dynamo falls back to eager for new shapes. Static graphs suit CUDA graphs
  (``mode="reduce-overhead"``) and give inductor fixed sizes to tune for.

Under DeepSpeed, ``engine.compile()`` compiles ``engine.module`` (this model's forward, hooks included); the
loss and ``shift_right`` stay eager outside it, so mark ``decoder_input_ids`` too (every tensor the module
receives). Checked on CPU (t5-tiny, fp32, 3 steps): ZeRO-0 and ZeRO-2, one graph, no break, no recompile,
with task ids on the host, on the device or 0-dim. ZeRO-3: DeepSpeed's per-module fetch hooks are
``torch.compiler.disable``d, a break at every module (41 graphs on t5-tiny): that needs DeepSpeed's
DeepCompile, not something this model can change.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, NamedTuple, Optional

import torch
import torch.nn.functional as F

LABEL_PAD_ID = -100
LENGTH_KEYS = ("input_ids", "attention_mask", "labels", "decoder_input_ids", "decoder_attention_mask")


class GraphBreakReport(NamedTuple):
    graphs: int  # graphs Dynamo compiled for one call
    breaks: int  # graph breaks (graphs - 1, as torch._dynamo.explain counts them)
    reasons: list[str]  # one line per break: the reason and the user frame it happened in


def training_loss(model: Any, batch: dict, task_ids: Any) -> torch.Tensor:
    """The default step for ``count_graph_breaks``: forward with ``labels``, the backbone's own loss."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                 task_ids=task_ids).loss


def _reason_line(reason: Any) -> str:
    text = str(getattr(reason, "reason", reason)).strip().splitlines()
    stack = getattr(reason, "user_stack", None) or []
    where = f" @ {stack[-1].filename}:{stack[-1].lineno} in {stack[-1].name}" if stack else ""
    return (text[0] if text else "?") + where


def count_graph_breaks(model: Any, batch: dict, task_ids: Any,
                       step: Optional[Callable[[Any, dict, Any], Any]] = None) -> GraphBreakReport:
    """Trace ``step(model, batch, task_ids)`` (default ``training_loss``) once with ``torch._dynamo.explain``.

    Runs the step once (eagerly, through Dynamo's tracing; gradients are not computed). Note that
    ``explain`` calls ``torch._dynamo.reset()`` before and after: compiled graphs of anything else are
    dropped, so call it before compiling, not between training steps. For the full training step pass
    e.g. ``step=lambda m, b, t: engine.forward_loss(m, b, t)[0]``. Backward graph breaks do not exist as
    such (AOTAutograd traces the backward of each forward graph); compile with ``fullgraph=True`` to make
    any forward break an error instead.
    """
    fn = step or training_loss
    out = torch._dynamo.explain(lambda b, t: fn(model, b, t))(batch, task_ids)
    return GraphBreakReport(out.graph_count, out.graph_break_count, [_reason_line(r) for r in out.break_reasons])


def _uses_reentrant(fn: Any) -> bool:
    keywords = getattr(fn, "keywords", None) or {}
    return bool(keywords.get("use_reentrant", False))


def prepare_for_compile(model: Any) -> list[str]:
    """Make a checkpointing backbone traceable in one graph; returns what it changed (empty: nothing to do).

    Activation checkpointing (``gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant":
    False})``, what ``model.gradient_checkpointing`` does) traces under Dynamo (``torch.utils.checkpoint`` is a
    higher-order op), but transformers 5.x adds two things that break the graph, both there only for
    *reentrant* checkpointing, whose recomputation needs an input that requires grad:

    - a forward hook on the input embeddings that calls ``output.requires_grad_(True)``
      (``enable_input_require_grads``): removed with ``disable_input_require_grads()``;
    - ``position_bias.requires_grad = True`` in every T5 attention without a relative-position table while
      checkpointing: the ``gradient_checkpointing`` flag of the ``T5Attention`` modules (read only there)
      is cleared; the blocks' own flags, which do the checkpointing, stay.

    Losses and gradients stay the same (non-reentrant checkpointing needs neither: the trainable weights
    inside each block carry the gradient); eager saves the input-embedding gradient it no longer computes.
    The third cause, transformers' ``logger.warning_once`` when it turns ``use_cache`` off, is avoided by
    ``HyperscaleModel.forward`` itself while compiling. Call this after enabling checkpointing (and again
    after re-enabling it). Refuses reentrant checkpointing (``use_reentrant=True``), which Dynamo cannot trace.
    """
    backbone = getattr(model, "backbone", model)
    modules = list(backbone.modules())
    active = [m for m in modules if getattr(m, "gradient_checkpointing", False)]
    if not active:
        return []
    if any(_uses_reentrant(getattr(m, "_gradient_checkpointing_func", None)) for m in active):
        raise ValueError("reentrant activation checkpointing (use_reentrant=True) cannot be compiled without graph "
                         "breaks; enable it with gradient_checkpointing_kwargs={'use_reentrant': False}")
    changed = []
    if getattr(backbone, "_require_grads_hooks", None) or hasattr(backbone, "_require_grads_hook"):
        backbone.disable_input_require_grads()
        changed.append("removed the input-embedding requires_grad hook (disable_input_require_grads)")
    attention = [m for m in active if type(m).__name__ in ("T5Attention", "MT5Attention")]
    for m in attention:
        m.gradient_checkpointing = False
    if attention:
        changed.append(f"cleared gradient_checkpointing on {len(attention)} attention modules")
    return changed


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pad_to_bucket(batch: dict, multiple: int, pad_token_id: int = 0, label_pad_id: int = LABEL_PAD_ID,
                  max_length: Optional[int] = None) -> dict:
    """A copy of ``batch`` whose sequence lengths are rounded up to a multiple of ``multiple`` (at most
    ``max_length`` when given and larger than the longest row): a bounded set of shapes, so a bounded
    number of compiled graphs.

    Pads ``input_ids``/``decoder_input_ids`` with ``pad_token_id``, masks with 0 and ``labels`` with
    ``label_pad_id``; other entries are kept as they are. The loss does not change: padded source
    positions are masked out of attention, padded targets come after every real one (the decoder is
    causal) and are ignored by the loss. ``Seq2SeqCollator(pad_to_multiple_of=...)`` does the same at
    collation time.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    pads = {"input_ids": pad_token_id, "decoder_input_ids": pad_token_id, "attention_mask": 0,
            "decoder_attention_mask": 0, "labels": label_pad_id}
    out = dict(batch)
    for key, value in pads.items():
        t = batch.get(key)
        if not isinstance(t, torch.Tensor) or t.dim() < 2:
            continue
        length = t.shape[1]
        target = _round_up(length, multiple)
        if max_length is not None and length <= max_length:
            target = min(target, max_length)
        if target > length:
            out[key] = F.pad(t, (0, target - length), value=value)
    return out


def mark_lengths_dynamic(batch: dict, keys: Iterable[str] = LENGTH_KEYS) -> dict:
    """Mark the sequence dimension of the batch's tensors dynamic for Dynamo (in place; returns ``batch``).

    Call it on each batch before the compiled call: Dynamo then compiles one graph whose lengths are
    symbolic instead of one per length. ``maybe_mark_dynamic``: a length Dynamo must specialise (0 or 1)
    does not raise.
    """
    for key in keys:
        t = batch.get(key)
        if isinstance(t, torch.Tensor) and t.dim() >= 2:
            torch._dynamo.maybe_mark_dynamic(t, 1)
    return batch


__all__ = ["GraphBreakReport", "count_graph_breaks", "training_loss", "prepare_for_compile", "pad_to_bucket",
           "mark_lengths_dynamic", "LENGTH_KEYS"]
