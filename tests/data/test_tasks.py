"""Task registry and text-to-text formatting."""

import numpy as np
import pytest

from hyperscale.data import DataError, TASKS, format_example, get_task, parse_label, round_stsb
from hyperscale.data.loading import read_local_split

PAPER_TASKS = ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "boolq", "cb",
               "scitail", "paws", "imdb", "yelp_polarity", "trec"]


def test_registry_has_every_task_of_the_paper():
    assert sorted(TASKS) == sorted(PAPER_TASKS)
    kinds = {name: t.split_kind for name, t in TASKS.items()}
    for name in ["cola", "rte", "mrpc", "stsb", "cb", "boolq", "trec", "imdb"]:
        assert kinds[name] == "small", name
    for name in ["sst2", "qqp", "qnli", "yelp_polarity"]:
        assert kinds[name] == "large", name
    assert kinds["mnli"] == "official"
    assert TASKS["mnli"].split_origins["validation"] == "validation_mismatched"
    assert TASKS["mnli"].split_origins["test"] == "validation_matched"
    assert [n for n, t in TASKS.items() if t.is_regression] == ["stsb"]
    assert TASKS["mrpc"].metrics == ("f1", "acc") and TASKS["qqp"].metrics == ("f1", "acc")
    assert TASKS["cola"].metrics == ("mcc",)
    assert TASKS["stsb"].metrics == ("pearson", "spearman")


def test_unknown_task_lists_known_tasks():
    with pytest.raises(DataError) as err:
        get_task("glue-foo")
    assert isinstance(err.value, ValueError)
    message = str(err.value)
    assert "glue-foo" in message
    for name in PAPER_TASKS:
        assert name in message
    assert get_task("superglue-cb") is TASKS["cb"]  # reference names work
    assert get_task(" RTE ") is TASKS["rte"]


def test_max_target_length_covers_every_target(tokenizer):
    for task in TASKS.values():
        for target in task.label_strings(0.1):
            n = len(tokenizer(target)["input_ids"])
            assert n <= task.max_target_length, (task.name, target, n)


# (task, file relative to shared/data, row index, expected source, expected target)
REAL_ROWS = [
    ("rte", "glue/RTE/dev.tsv", 0,
     "sentence1: Dana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer "
     "at age 44, according to the Christopher Reeve Foundation. sentence2: Christopher Reeve "
     "had an accident.", "1"),
    ("rte", "glue/RTE/dev.tsv", 1, None, "0"),
    ("mrpc", "glue/MRPC/dev.tsv", 0,
     "sentence1: He said the foodservice pie business doesn't fit the company's long-term "
     "growth strategy. sentence2: \"The foodservice pie business does not fit our long-term "
     "growth strategy.", "1"),
    ("mrpc", "glue/MRPC/dev.tsv", 1, None, "0"),
    ("cola", "glue/CoLA/dev.tsv", 0, "sentence: The sailors rode the breeze clear of the rocks.",
     "1"),
    ("sst2", "glue/SST-2/dev.tsv", 0, "sentence: it 's a charming and often affecting journey .",
     "1"),
    ("sst2", "glue/SST-2/dev.tsv", 1, "sentence: unflinchingly bleak and desperate", "0"),
    ("stsb", "glue/STS-B/dev.tsv", 0,
     "sentence1: A man with a hard hat is dancing. sentence2: A man wearing a hard hat is "
     "dancing.", "5.0"),
    ("stsb", "glue/STS-B/dev.tsv", 1,
     "sentence1: A young child is riding a horse. sentence2: A child is riding a horse.", "4.8"),
    ("qnli", "glue/QNLI/dev.tsv", 0,
     "question: What came into force after the new constitution was herald? sentence: As of "
     "that day, the new constitution heralding the Second Republic came into force.", "0"),
    ("qnli", "glue/QNLI/dev.tsv", 1, None, "1"),
    ("cb", "superglue/CB/val.jsonl", 0,
     "premise: Valence the void-brain, Valence the virtuous valet. Why couldn't the figger "
     "choose his own portion of titanic anatomy to shaft? Did he think he was helping? "
     "hypothesis: Valence was helping", "1"),
    ("cb", "superglue/CB/val.jsonl", 1, None, "2"),
    ("boolq", "superglue/BoolQ/val.jsonl", 0, None, None),
]


@pytest.mark.parametrize("task,rel,index,source,target", REAL_ROWS,
                         ids=[f"{r[0]}-{r[2]}" for r in REAL_ROWS])
def test_format_real_row(shared_data, task, rel, index, source, target):
    rows = read_local_split(task, shared_data / rel)
    row = rows[index]
    src, tgt = format_example(task, row)
    if source is not None:
        assert src == source
    if target is not None:
        assert tgt == target
    keys = [f"{key}:" for key, _ in TASKS[task].fields]
    assert src.startswith(keys[0] + " ")
    for key in keys:
        assert f"{key} " in src
    assert src == src.strip() and "  " not in src[:20]
    prefixed, tgt2 = format_example(task, row, add_prefix=True)
    assert prefixed == f"{task} {src}" and tgt2 == tgt
    assert tgt in TASKS[task].label_strings()


def test_format_boolq_real_row(shared_data):
    row = read_local_split("boolq", shared_data / "superglue/BoolQ/val.jsonl")[0]
    src, tgt = format_example("boolq", row)
    assert src.startswith("question: does ethanol take more energy make that produces passage: "
                          "Ethanol fuel -- All biomass goes through")
    # the first BoolQ val row is labelled false -> id 0
    assert tgt == "0"


# Tasks without local data: the hub column names.
SYNTHETIC = [
    ("qqp", {"question1": "How old?", "question2": "What age?", "label": 1},
     "question1: How old? question2: What age?", "1"),
    ("mnli", {"premise": "A man sleeps.", "hypothesis": "Nobody sleeps.", "label": 2},
     "premise: A man sleeps. hypothesis: Nobody sleeps.", "2"),
    ("scitail", {"sentence1": "A.", "sentence2": "B.", "label": "neutral"},
     "sentence1: A. sentence2: B.", "1"),
    ("paws", {"sentence1": "A.", "sentence2": "B.", "label": 0}, "sentence1: A. sentence2: B.",
     "0"),
    ("imdb", {"text": " Great film. ", "label": 1}, "Great film.", "1"),
    ("yelp_polarity", {"text": "Bad food.", "label": 0}, "sentence: Bad food.", "0"),
    ("trec", {"text": "Who wrote it?", "label": 3}, "sentence: Who wrote it?", "3"),
    ("boolq", {"question": "is it?", "passage": "It is.", "label": True},
     "question: is it? passage: It is.", "1"),
]


@pytest.mark.parametrize("task,row,source,target", SYNTHETIC, ids=[s[0] for s in SYNTHETIC])
def test_format_hub_style_rows(task, row, source, target):
    assert format_example(task, row) == (source, target)
    assert format_example(task, row, add_prefix=True) == (f"{task} {source}", target)


def test_stsb_grid_rounding():
    assert round_stsb(3.77) == "3.8"
    assert round_stsb(2.333) == "2.4" and round_stsb(2.333, 0.1) == "2.3"
    assert round_stsb(1.13) == "1.2" and round_stsb(1.13, 0.1) == "1.1"
    assert round_stsb(0.0) == "0.0" and round_stsb(5.0) == "5.0"
    assert round_stsb(0.04) == "0.0"
    assert round_stsb(2.6, 0.5) == "2.5" and round_stsb(2.6, 0.25) == "2.50"
    assert len(TASKS["stsb"].label_strings(0.2)) == 26
    assert len(TASKS["stsb"].label_strings(0.1)) == 51
    for bad in (0.3, 0.0, -0.2, float("nan")):
        with pytest.raises(DataError):
            round_stsb(1.0, bad)


def test_stsb_grid_01_reproduces_reference_rounding(shared_data):
    rows = read_local_split("stsb", shared_data / "glue/STS-B/dev.tsv")
    for row in rows:
        # the reference: str(np.round((label * 5) / 5, decimals=1))
        assert round_stsb(row["label"], 0.1) == str(np.round((row["label"] * 5) / 5, decimals=1))


def test_parse_label_rejects_values_outside_label_set():
    assert parse_label("rte", "not_entailment") == 1
    assert parse_label("rte", "1") == 1
    assert parse_label("boolq", False) == 0
    assert parse_label("boolq", "true") == 1
    for task, bad in [("rte", "maybe"), ("rte", 2), ("rte", "-1"), ("cb", 3), ("trec", 6),
                      ("stsb", 5.5), ("stsb", -0.1), ("cola", True), ("mrpc", "")]:
        if task == "cola" and bad is True:
            assert parse_label(task, bad) == 1  # bools are 0/1 for binary tasks
            continue
        with pytest.raises(DataError, match="outside the label set"):
            parse_label(task, bad)
    with pytest.raises(DataError, match="malformed"):
        parse_label("stsb", "n/a")


def test_format_example_needs_columns():
    with pytest.raises(DataError, match="sentence2"):
        format_example("rte", {"sentence1": "a", "label": 0})
    with pytest.raises(DataError, match="label"):
        format_example("rte", {"sentence1": "a", "sentence2": "b"})
