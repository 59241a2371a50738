"""What a run reports: its environment, the rows' ratios, the table (markdown) and the JSON and table files."""
from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path
from typing import Any, Optional

import torch
import transformers

from ..atomic import write_text_atomic
from .settings import BenchSettings


def environment(s: BenchSettings) -> dict:
    env: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
    }
    for mod in ("deepspeed", "peft"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:
            env[mod] = None
    if s.device == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        env["cuda"] = torch.version.cuda
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env


def add_ratios(rows: list[dict]) -> None:
    """``ratio_to_floor`` against the ``floor`` row of the same run; ``ratio_to_plain`` for DeepSpeed rows
    against the ``hyperformer++`` plain-loop row of the same run."""
    by_name = {r["name"]: r for r in rows if r["status"] == "ok"}
    floor = by_name.get("floor", {}).get("ms_median")
    plain = by_name.get("hyperformer++", {}).get("ms_median")
    for r in rows:
        if r["status"] != "ok":
            continue
        r["ratio_to_floor"] = r["ms_median"] / floor if floor else None
        if r["runner"] == "deepspeed":
            r["ratio_to_plain"] = r["ms_median"] / plain if plain else None


def _fmt(x: Any, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def format_table(result: dict) -> str:
    st, rows = result["settings"], result["rows"]
    env = result["environment"]
    head = (f"hyperscale bench: {st['backbone']} on {st['device']} ({env.get('gpu') or env.get('cpu')}), "
            f"{st['precision']}, plain-mode {st['plain_mode']}, batch {st['batch']}, "
            f"{st['src_len']}+{st['tgt_len']} tokens, "
            f"median of {st['steps']} steps after {st['warmup']} warm-up")
    cols = ("configuration", "runner", "ms/step", "tokens/s", "peak MB", "x floor", "x plain", "trainable", "note")
    if st["rounds"] > 1:
        head += f", {st['rounds']} interleaved rounds pooled"
    if st.get("gradient_checkpointing"):
        head += ", activation checkpointing (HF, non-reentrant) on every row"
    if st.get("fake_mem_limit_mb") is not None:
        head += f", simulated memory limit {st['fake_mem_limit_mb']:g} MB"
    if rows:
        lines = [head, "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    else:
        lines = [f"hyperscale bench: {st['backbone']} on {st['device']} ({env.get('gpu') or env.get('cpu')}), "
                 f"{st['precision']}, plain-mode {st['plain_mode']}"]
    for r in rows:
        runner = r["runner"] or ""
        if r["zero_stage"] is not None:
            runner += f" ZeRO-{r['zero_stage']}"
        note = r["note"] or ""
        if r["status"] == "error":
            note = "ERROR " + (r["error"] or "")[:160]
        elif r["status"] == "skipped":
            note = "skipped: " + note
        if st.get("gradient_checkpointing") and r["status"] == "ok" and not r.get("gradient_checkpointing"):
            note = "checkpointing NOT active; " + note
        lines.append("| " + " | ".join([
            r["name"], runner, _fmt(r["ms_median"], ".1f"), _fmt(r["tokens_per_s"], ",.0f"),
            _fmt(r["peak_mem_mb"], ",.0f"), _fmt(r["ratio_to_floor"], ".2f"), _fmt(r["ratio_to_plain"], ".2f"),
            _fmt(r["trainable_params"], ","), note.replace("|", "/")]) + " |")
    for sr in result.get("max_batch_search") or []:
        lines.append(format_search(sr))
    ev = result.get("eval")
    if ev:
        if "error" in ev:
            lines.append(f"eval: ERROR {ev['error']}")
        else:
            agree = "-" if ev["agreement_on_valid"] is None else f"{100 * ev['agreement_on_valid']:.1f} %"
            lines.append(
                f"eval ({ev['task']}, {ev['n']} examples, batch {ev['batch']}): rank classification "
                f"{ev['rank_ms_per_example']:.2f} ms/example, generation {ev['generate_ms_per_example']:.2f} "
                f"ms/example ({_fmt(ev['speedup'], '.1f')}x); valid generations {ev['valid_generations']}/{ev['n']}, "
                f"agreement with rank classification on those {agree}")
    return "\n".join(lines)


def format_search(sr: dict) -> str:
    """One line per largest-batch search: the largest batch that fit, its timing and memory, the bracket."""
    if not sr:
        return "max batch: not started"
    name = sr.get("row", "?")
    if sr.get("status") == "error" and not sr.get("tries"):
        return f"max batch ({name}): ERROR {str(sr.get('error'))[:200]}"
    tries = sr.get("tries") or []
    fits = ", ".join(f"{t['batch']}{'' if t['status'] == 'ok' else ' ' + t['status'].upper()}" for t in tries)
    lim = sr.get("limit_mb")
    text = f"max batch ({name}, {sr.get('status')}"
    text += f", limit {lim:,.0f} MB" if lim else ""
    text += f", {sr['elapsed_s']:.0f} s" if sr.get("elapsed_s") is not None else ""
    text += "): "
    best = sr.get("best")
    if sr.get("max_batch") and best:
        text += (f"{sr['max_batch']} fits: {_fmt(best.get('ms_median'), '.1f')} ms/step, "
                 f"{_fmt(best.get('tokens_per_s'), ',.0f')} tokens/s, {_fmt(best.get('peak_mem_mb'), ',.0f')} MB peak")
    elif sr.get("status") == "running":
        text += "running"
    else:
        text += "no batch fits"
    if sr.get("first_failing_batch"):
        text += f"; {sr['first_failing_batch']} does not ({sr.get('failure')})"
    elif sr.get("status") == "cap":
        text += f"; cap {sr.get('cap')} reached"
    if sr.get("predicted_max_batch") is not None:
        text += f"; linear extrapolation of the peaks: {sr['predicted_max_batch']:,}"
    return text + f"; tries: {fits}"


def write_result(result: dict, json_out: Optional[str], table_out: Optional[str]) -> None:
    """Write the result as JSON (atomically: a reader never sees half a file) and the table, where asked."""
    if json_out:
        out = Path(json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, json.dumps(result, indent=2) + "\n")
    if table_out:
        Path(table_out).parent.mkdir(parents=True, exist_ok=True)
        Path(table_out).write_text(format_table(result) + "\n")
