"""T5 SentencePiece tokenizer, disk-cached tokenization, and the batch collator.

* :func:`load_tokenizer` builds a ``transformers.T5Tokenizer`` from a local
  ``spiece.model`` (no network): 32,000 pieces + 100 ``<extra_id_*>`` = 32,100
  tokens, ``pad=0``, ``eos=1``, ``unk=2``, exactly as Hugging Face ``t5-small``.
  :func:`default_tokenizer` loads the copy shipped in ``hyperscale/resources/t5``.
* :func:`tokenize_splits` adds ``input_ids`` and ``labels`` (both ending in
  ``</s>``, truncated to the max lengths) through ``datasets.Dataset.map``
  with an explicit cache file ``<cache_dir>/<task>-<split>-<key>.arrow``. The
  key hashes the tokenizer (:func:`tokenizer_fingerprint`: its vocabulary and
  pipeline, i.e. what ``spiece.model`` defines, plus the extra ids), both max
  lengths and the split's content (ids, sources, targets), so a second run
  with the same inputs loads the file and does no work.
* :class:`Seq2SeqCollator` pads dynamically to the longest sequence of the batch.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..modeling.io import cache_root
from .errors import DataError
from .loading import TaskSplits, columns_as_lists

RESOURCES_DIR = Path(__file__).resolve().parents[1] / "resources"
DEFAULT_SPIECE_MODEL = RESOURCES_DIR / "t5" / "spiece.model"
T5_VOCAB_SIZE = 32100
TOKENIZE_CACHE_VERSION = 1
LABEL_PAD_ID = -100


def _sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fingerprint_parts(tokenizer, base: str) -> str:
    parts = [type(tokenizer).__name__, base, len(tokenizer), tokenizer.pad_token_id,
             tokenizer.eos_token_id]
    return hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """Stable hash of a tokenizer: its whole vocabulary and pipeline (the
    serialized ``tokenizers`` backend minus runtime truncation/padding
    settings), class, size and special ids. A tokenizer built from
    ``spiece.model`` and its ``save_pretrained`` copy hash the same; the value
    is memoized on the tokenizer (recomputed if its size changes)."""
    known = getattr(tokenizer, "_hyperscale_fingerprint", None)
    if known and known[0] == len(tokenizer):
        return known[1]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)  # runtime settings, not the vocabulary
        state.pop("padding", None)
        base = hashlib.sha256(json.dumps(state, sort_keys=True).encode("utf-8")).hexdigest()
    else:
        vocab_file = getattr(tokenizer, "vocab_file", None)
        if not (vocab_file and os.path.isfile(vocab_file)):
            raise DataError(f"cannot fingerprint tokenizer of type {type(tokenizer).__name__}")
        base = _sha256_file(vocab_file)
    value = _fingerprint_parts(tokenizer, base)
    try:
        tokenizer._hyperscale_fingerprint = (len(tokenizer), value)
    except AttributeError:
        pass
    return value


def load_tokenizer(path_or_name=None, extra_ids: int = 100):
    """A ``transformers.T5Tokenizer`` with ``extra_ids`` sentinel tokens.

    ``path_or_name``: a SentencePiece ``.model`` file, a directory holding
    ``spiece.model`` (or saved tokenizer files), ``None`` for the shipped T5
    model, or a hub name such as ``"t5-small"`` (needs network or a warm cache).
    Local paths never touch the network.
    """
    from transformers import T5Tokenizer

    if path_or_name is None:
        path_or_name = DEFAULT_SPIECE_MODEL
    path = Path(path_or_name).expanduser()
    if path.is_file():
        tokenizer = T5Tokenizer.from_pretrained(str(path.parent), vocab_file=str(path),
                                                extra_ids=extra_ids, local_files_only=True)
    elif path.is_dir():
        if not ((path / "spiece.model").is_file() or (path / "tokenizer.json").is_file()):
            raise DataError(f"tokenizer directory {str(path)!r} has neither spiece.model nor "
                            "tokenizer.json")
        tokenizer = T5Tokenizer.from_pretrained(str(path), extra_ids=extra_ids,
                                                local_files_only=True)
    elif isinstance(path_or_name, Path) or os.sep in str(path_or_name) or \
            str(path_or_name).endswith(".model"):
        raise DataError(f"tokenizer file {str(path)!r} does not exist (give a SentencePiece "
                        ".model file, a directory with spiece.model, or a hub name)")
    else:
        tokenizer = T5Tokenizer.from_pretrained(str(path_or_name), extra_ids=extra_ids)
    tokenizer_fingerprint(tokenizer)  # computed once, memoized on the tokenizer
    return tokenizer


@functools.lru_cache(maxsize=1)
def default_tokenizer():
    """The shipped T5 tokenizer (cached; loads offline, vocab 32,100)."""
    return load_tokenizer(DEFAULT_SPIECE_MODEL)


# ----------------------------------------------------------------------------- tokenization

def default_cache_dir() -> Path:
    """``$HYPERSCALE_CACHE/tokenized`` or ``~/.cache/hyperscale/tokenized``."""
    return cache_root() / "tokenized"


def _encode_batch(batch: Mapping, tokenizer, max_source_length: int,
                  max_target_length: int) -> dict:
    sources = tokenizer(list(batch["source"]), truncation=True, max_length=max_source_length)
    targets = tokenizer(list(batch["target"]), truncation=True, max_length=max_target_length)
    return {"input_ids": sources["input_ids"], "labels": targets["input_ids"]}


def _content_digest(dataset) -> str:
    names = ("id", "source", "target")
    for column in names:
        if column not in dataset.column_names:
            raise DataError(f"dataset lacks column {column!r} (columns: {dataset.column_names})")
    data = columns_as_lists(dataset, names)
    digest = hashlib.sha256(str(len(dataset)).encode())
    for column in names:
        digest.update(b"\x1d" + column.encode() + b"\x1d")
        digest.update("\x1f".join(data[column]).encode("utf-8"))
    return digest.hexdigest()


def tokenization_key(dataset, tokenizer, max_source_length: int, max_target_length: int) -> str:
    """Cache key of one split: tokenizer + settings + content."""
    record = {"version": TOKENIZE_CACHE_VERSION, "tokenizer": tokenizer_fingerprint(tokenizer),
              "max_source_length": int(max_source_length),
              "max_target_length": int(max_target_length), "content": _content_digest(dataset)}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode("utf-8")).hexdigest()


def _is_nested(splits: Mapping) -> bool:
    values = list(splits.values())
    return bool(values) and all(isinstance(v, Mapping) for v in values)


def tokenize_splits(splits: Mapping, tokenizer=None, max_source_length: int = 128,
                    max_target_length: int = 128, cache_dir=None):
    """Tokenize every split (``source`` -> ``input_ids``, ``target`` -> ``labels``).

    ``splits`` is a mapping split -> ``datasets.Dataset`` (e.g. the result of
    :func:`~hyperscale.data.loading.load_task_splits`), or task -> such a
    mapping. Each result is a ``TaskSplits`` (keeping the input's
    ``protocol``); its ``cache_hits`` attribute tells, per split, whether the
    tokenized file was loaded from ``cache_dir`` instead of computed.
    """
    if _is_nested(splits):
        return {name: tokenize_splits(s, tokenizer, max_source_length, max_target_length,
                                      cache_dir) for name, s in splits.items()}
    for name, value in (("max_source_length", max_source_length),
                        ("max_target_length", max_target_length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise DataError(f"{name} must be an integer >= 2, got {value!r}")
    tokenizer = tokenizer if tokenizer is not None else default_tokenizer()
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    hits = {}
    for split, dataset in splits.items():
        key = tokenization_key(dataset, tokenizer, max_source_length, max_target_length)
        task = dataset[0]["task"] if "task" in dataset.column_names and len(dataset) else "data"
        cache_file = cache_dir / f"{task}-{split}-{key[:24]}.arrow"
        hits[split] = cache_file.is_file()
        encode = functools.partial(_call_encode, tokenizer=tokenizer,
                                   max_source_length=max_source_length,
                                   max_target_length=max_target_length)
        out[split] = dataset.map(encode, batched=True, batch_size=1000,
                                 cache_file_name=str(cache_file), load_from_cache_file=True,
                                 new_fingerprint=key[:32], desc=f"tokenize {task}/{split}")
    result = TaskSplits(out, getattr(splits, "protocol", None))
    result.cache_hits = hits
    return result


def _call_encode(batch, **kwargs):
    # looked up at call time so tests can watch the calls
    return _encode_batch(batch, **kwargs)


# ----------------------------------------------------------------------------- collation

@dataclass
class Seq2SeqCollator:
    """Pads a list of tokenized examples to the longest sequence in the batch.

    Returns ``torch`` tensors: ``input_ids`` (padded with ``pad_token_id``),
    ``attention_mask`` (1 on tokens), ``labels`` (padded with -100, ignored by
    the loss) and ``task_ids`` (``LongTensor`` of ``task_to_id[example["task"]]``,
    or an example's own ``task_id``).
    """

    pad_token_id: int = 0
    task_to_id: Mapping[str, int] | None = None
    label_pad_token_id: int = LABEL_PAD_ID
    pad_to_multiple_of: int | None = None

    def _padded_length(self, lengths) -> int:
        longest = max(lengths) if lengths else 0
        m = self.pad_to_multiple_of
        if m:
            longest = -(-longest // m) * m
        return longest

    def _task_id(self, example: Mapping) -> int:
        if "task_id" in example:
            return int(example["task_id"])
        if "task" not in example:
            raise DataError("example has neither 'task' nor 'task_id'")
        if self.task_to_id is None:
            raise DataError("Seq2SeqCollator needs task_to_id to map task names to ids")
        try:
            return int(self.task_to_id[example["task"]])
        except KeyError:
            raise DataError(f"task {example['task']!r} not in task_to_id "
                            f"(known: {sorted(self.task_to_id)})") from None

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict:
        import torch

        if not features:
            raise DataError("cannot collate an empty batch")
        inputs = [list(f["input_ids"]) for f in features]
        width = self._padded_length([len(x) for x in inputs])
        input_ids = torch.full((len(inputs), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(inputs), width), dtype=torch.long)
        for row, ids in enumerate(inputs):
            input_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, :len(ids)] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if all("labels" in f for f in features):
            labels = [list(f["labels"]) for f in features]
            lwidth = self._padded_length([len(x) for x in labels])
            padded = torch.full((len(labels), lwidth), self.label_pad_token_id, dtype=torch.long)
            for row, ids in enumerate(labels):
                padded[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            batch["labels"] = padded
        batch["task_ids"] = torch.tensor([self._task_id(f) for f in features], dtype=torch.long)
        return batch


__all__ = [
    "DEFAULT_SPIECE_MODEL", "T5_VOCAB_SIZE", "load_tokenizer", "default_tokenizer",
    "tokenizer_fingerprint", "tokenize_splits", "tokenization_key", "default_cache_dir",
    "Seq2SeqCollator",
]
