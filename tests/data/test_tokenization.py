"""Tokenizer, on-disk tokenization cache, collator."""

import shutil

import pytest
import torch

from hyperscale.data import (DEFAULT_SPIECE_MODEL, DataError, Seq2SeqCollator, load_task_splits,
                             load_tokenizer, tokenize_splits, tokenizer_fingerprint)
from hyperscale.data import tokenization


def test_default_tokenizer_matches_t5(tokenizer):
    import sentencepiece

    assert len(tokenizer) == 32100
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert tokenizer.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_99>"]) == [32099, 32000]
    sp = sentencepiece.SentencePieceProcessor(model_file=str(DEFAULT_SPIECE_MODEL))
    for text in ["Hello world, this is a test.", "sentence1: A man is dancing. sentence2: No.",
                 "it 's a charming and often affecting journey . "]:
        assert tokenizer(text)["input_ids"] == sp.encode(text) + [1]
    assert tokenizer.convert_ids_to_tokens(tokenizer("Hello world, this is a test.")["input_ids"]) \
        == ["▁Hello", "▁world", ",", "▁this", "▁is", "▁", "a", "▁test", ".", "</s>"]


def test_load_tokenizer_from_file_or_dir(tmp_path, tokenizer):
    copy = tmp_path / "t5.model"
    shutil.copy(DEFAULT_SPIECE_MODEL, copy)
    from_file = load_tokenizer(copy)
    assert len(from_file) == 32100
    assert tokenizer_fingerprint(from_file) == tokenizer_fingerprint(tokenizer)
    from_dir = load_tokenizer(DEFAULT_SPIECE_MODEL.parent)
    assert from_dir("a test")["input_ids"] == tokenizer("a test")["input_ids"]
    assert len(load_tokenizer(DEFAULT_SPIECE_MODEL, extra_ids=0)) == 32000
    assert tokenizer_fingerprint(load_tokenizer(DEFAULT_SPIECE_MODEL, extra_ids=0)) != \
        tokenizer_fingerprint(tokenizer)
    with pytest.raises(DataError, match="does not exist"):
        load_tokenizer(tmp_path / "missing.model")
    with pytest.raises(DataError, match="spiece.model"):
        load_tokenizer(tmp_path)


def test_tokenization_cache_hit_on_second_call(tmp_path, tokenizer, monkeypatch):
    splits = load_task_splits("rte", n_train=40, n_val=10, n_test=10)
    calls = []
    original = tokenization._encode_batch

    def counting(batch, **kwargs):
        calls.append(len(batch["source"]))
        return original(batch, **kwargs)

    monkeypatch.setattr(tokenization, "_encode_batch", counting)
    first = tokenize_splits(splits, tokenizer, cache_dir=tmp_path)
    assert sum(calls) == 60
    assert first.cache_hits == {"train": False, "validation": False, "test": False}
    assert len(list(tmp_path.glob("rte-*.arrow"))) == 3

    calls.clear()
    again = load_task_splits("rte", n_train=40, n_val=10, n_test=10)  # a fresh run
    second = tokenize_splits(again, tokenizer, cache_dir=tmp_path)
    assert calls == []  # no work at all
    assert second.cache_hits == {"train": True, "validation": True, "test": True}
    for split in ("train", "validation", "test"):
        assert second[split]["input_ids"] == first[split]["input_ids"]
        assert second[split]["labels"] == first[split]["labels"]
        assert second[split].cache_files[0]["filename"].startswith(str(tmp_path))
    assert second.protocol == splits.protocol

    # other settings or other content: a new entry
    third = tokenize_splits(again, tokenizer, max_source_length=32, cache_dir=tmp_path)
    assert sum(calls) == 60 and not any(third.cache_hits.values())
    calls.clear()
    tokenize_splits(load_task_splits("rte", n_train=41, n_val=10, n_test=10), tokenizer,
                    cache_dir=tmp_path)
    assert sum(calls) == 41  # validation/test unchanged: cached


def test_saved_tokenizer_reuses_the_cache(tmp_path, tokenizer):
    tokenizer.save_pretrained(str(tmp_path / "tok"))
    reloaded = load_tokenizer(tmp_path / "tok")
    assert len(reloaded) == 32100
    assert tokenizer_fingerprint(reloaded) == tokenizer_fingerprint(tokenizer)
    splits = load_task_splits("cb", n_train=5, n_val=3, n_test=3)
    tokenize_splits(splits, tokenizer, cache_dir=tmp_path / "cache")
    again = tokenize_splits(splits, reloaded, cache_dir=tmp_path / "cache")
    assert all(again.cache_hits.values())


def test_tokenized_columns_and_truncation(tmp_path, tokenizer):
    splits = tokenize_splits(load_task_splits("mrpc", n_train=20, n_val=4, n_test=4), tokenizer,
                             max_source_length=16, max_target_length=4, cache_dir=tmp_path)
    train = splits["train"]
    assert {"input_ids", "labels", "id", "task", "source", "target", "label"} <= set(
        train.column_names)
    for ids in train["input_ids"]:
        assert len(ids) <= 16 and ids[-1] == 1
    for labels, target in zip(train["labels"], train["target"]):
        assert labels == tokenizer(target)["input_ids"]
    with pytest.raises(DataError, match="max_source_length"):
        tokenize_splits(load_task_splits("cb", n_train=2), tokenizer, max_source_length=0,
                        cache_dir=tmp_path)


def test_collator_pads_dynamically():
    collate = Seq2SeqCollator(pad_token_id=0, task_to_id={"rte": 0, "cola": 3})
    batch = collate([
        {"input_ids": [5, 6, 7, 1], "labels": [209, 1], "task": "rte"},
        {"input_ids": [8, 1], "labels": [3, 632, 1], "task": "cola", "extra": "ignored"},
    ])
    assert set(batch) == {"input_ids", "attention_mask", "labels", "task_ids"}
    assert batch["input_ids"].tolist() == [[5, 6, 7, 1], [8, 1, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[209, 1, -100], [3, 632, 1]]
    assert batch["task_ids"].tolist() == [0, 3]
    assert all(t.dtype == torch.long for t in batch.values())

    padded = Seq2SeqCollator(task_to_id={"rte": 0}, pad_to_multiple_of=8)(
        [{"input_ids": [5, 1], "labels": [1], "task": "rte"}])
    assert padded["input_ids"].shape == (1, 8) and padded["labels"].shape == (1, 8)

    with pytest.raises(DataError, match="known"):
        collate([{"input_ids": [1], "labels": [1], "task": "mnli"}])


def test_collator_on_tokenized_examples(tmp_path, tokenizer):
    splits = tokenize_splits(load_task_splits("cola", n_train=8, n_val=2, n_test=2), tokenizer,
                             cache_dir=tmp_path)
    examples = [splits["train"][i] for i in range(8)]
    batch = Seq2SeqCollator(tokenizer.pad_token_id, {"cola": 1})(examples)
    longest = max(len(e["input_ids"]) for e in examples)
    assert batch["input_ids"].shape == (8, longest)
    assert batch["attention_mask"].sum().item() == sum(len(e["input_ids"]) for e in examples)
    assert (batch["labels"] == -100).sum().item() == sum(
        batch["labels"].shape[1] - len(e["labels"]) for e in examples)
    assert batch["task_ids"].tolist() == [1] * 8
