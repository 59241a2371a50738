"""Loader, split protocol, fingerprint, and every bad-input error."""

import shutil
from pathlib import Path

import pytest

from hyperscale.data import (DataError, load_multitask_splits, load_task_splits,
                             protocol_fingerprint, sample_data_dir)
from hyperscale.data.loading import columns_as_lists
from hyperscale.data.sample import SAMPLE_ROWS, SAMPLE_TASKS, build_sample

SAMPLE_SIZES = {
    "rte": (300, 100, 100), "mrpc": (300, 100, 100), "cola": (300, 100, 100),
    "stsb": (300, 100, 100), "sst2": (300, 1000, 200), "cb": (250, 28, 28),
}

FULL_SIZES = {
    "rte": (2490, 138, 139),
    "sst2": (66349, 1000, 872),
    "mrpc": (3668, 204, 204),
    "cola": (8551, 521, 522),
    "stsb": (5749, 750, 750),
    "cb": (250, 28, 28),
}


def sizes(splits):
    return tuple(len(splits[s]) for s in ("train", "validation", "test"))


def ids(ds):
    return set(columns_as_lists(ds, ["id"])["id"])


@pytest.fixture(scope="module")
def full(shared_data):
    return {task: load_task_splits(task, shared_data) for task in FULL_SIZES}


@pytest.mark.parametrize("task", SAMPLE_TASKS)
def test_sample_split_sizes(task):
    splits = load_task_splits(task)  # data_dir=None: the shipped sample
    assert sizes(splits) == SAMPLE_SIZES[task]
    train, val, test = (ids(splits[s]) for s in ("train", "validation", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    assert set(splits["train"].column_names) >= {"id", "task", "source", "target", "label"}
    assert set(splits["train"]["task"]) == {task}


@pytest.mark.parametrize("task", list(FULL_SIZES))
def test_full_split_sizes_and_no_overlap(full, task):
    splits = full[task]
    assert sizes(splits) == FULL_SIZES[task]
    train, val, test = (ids(splits[s]) for s in ("train", "validation", "test"))
    assert len(train) == len(splits["train"])  # ids are unique
    assert not (train & val) and not (train & test) and not (val & test)


def test_small_task_halves_the_dev_set(full):
    rte = full["rte"]
    dev_ids = {f"rte/validation/{i}" for i in range(277)}
    assert ids(rte["validation"]) | ids(rte["test"]) == dev_ids
    assert ids(rte["train"]) == {f"rte/train/{i}" for i in range(2490)}


def test_large_task_holds_out_1000_training_rows(full):
    sst2 = full["sst2"]
    assert all(i.startswith("sst2/train/") for i in ids(sst2["validation"]))
    assert ids(sst2["train"]) | ids(sst2["validation"]) == {f"sst2/train/{i}" for i in range(67349)}
    assert ids(sst2["test"]) == {f"sst2/validation/{i}" for i in range(872)}


def test_reference_permutation(shared_data):
    # The reference's torch.randperm(277, generator seeded 42) halves; first half = validation.
    import torch

    g = torch.Generator()
    g.manual_seed(42)
    perm = torch.randperm(277, generator=g).tolist()
    rte = load_task_splits("rte", shared_data, n_train=1)
    assert rte["validation"]["id"] == [f"rte/validation/{i}" for i in perm[:138]]
    assert rte["test"]["id"] == [f"rte/validation/{i}" for i in perm[138:]]


def test_seed_and_fingerprint(sample_dir):
    a = load_task_splits("rte", sample_dir)
    b = load_task_splits("rte", sample_dir)
    c = load_task_splits("rte", sample_dir, seed=7)
    fa, fb, fc = (protocol_fingerprint(x) for x in (a, b, c))
    assert fa == fb
    assert fa["sizes"] == {"train": 300, "validation": 100, "test": 100}
    assert fa["seed"] == 42 and fc["seed"] == 7
    assert fa["ids_sha256"]["train"] == fc["ids_sha256"]["train"]  # all of train either way
    assert fa["ids_sha256"]["validation"] != fc["ids_sha256"]["validation"]
    assert fa["sha256"] != fc["sha256"]
    assert len(fa["ids_sha256"]["test"]) == 64
    # a copy of the same files elsewhere gives the same fingerprint
    multi = protocol_fingerprint({"rte": a, "cb": load_task_splits("cb")})
    assert multi["tasks"]["rte"] == fa and "sha256" in multi


def test_subsampling_is_seeded_prefix(sample_dir):
    whole = load_task_splits("mrpc", sample_dir, seed=3)
    sub = load_task_splits("mrpc", sample_dir, seed=3, n_train=50, n_val=10, n_test=20)
    assert sizes(sub) == (50, 10, 20)
    for split in ("train", "validation", "test"):
        assert sub[split]["id"] == whole[split]["id"][:len(sub[split])]
    fp = protocol_fingerprint(sub)
    assert (fp["n_train"], fp["n_val"], fp["n_test"]) == (50, 10, 20)
    other = load_task_splits("mrpc", sample_dir, seed=4, n_train=50)
    assert ids(other["train"]) != ids(sub["train"])
    # asking for more than exists keeps everything
    assert len(load_task_splits("cb", n_val=1000)["validation"]) == 28


def test_stsb_grid_and_prefix_settings(sample_dir):
    coarse = load_task_splits("stsb", sample_dir)
    fine = load_task_splits("stsb", sample_dir, stsb_grid=0.1, add_prefix=True)
    assert all(float(t) * 5 == pytest.approx(round(float(t) * 5)) for t in coarse["train"]["target"])
    assert any(round(float(t) * 10) % 2 for t in fine["train"]["target"])
    assert all(s.startswith("stsb sentence1: ") for s in fine["train"]["source"])
    assert isinstance(coarse["train"][0]["label"], float)
    fp_coarse, fp_fine = protocol_fingerprint(coarse), protocol_fingerprint(fine)
    assert fp_fine["stsb_grid"] == 0.1 and fp_coarse["stsb_grid"] == 0.2
    assert fp_fine["ids_sha256"] == fp_coarse["ids_sha256"]  # same examples ...
    assert fp_fine["content_sha256"] != fp_coarse["content_sha256"]  # ... other text


def test_multitask_loading():
    splits = load_multitask_splits(["rte", "cb"], n_train=10)
    assert list(splits) == ["rte", "cb"] and len(splits["cb"]["train"]) == 10
    with pytest.raises(DataError, match="Known tasks"):
        load_multitask_splits(["rte", "nope"])
    with pytest.raises(DataError, match="duplicate"):
        load_multitask_splits(["rte", "RTE"])


def test_multitask_checks_every_file_first(shared_data):
    with pytest.raises(DataError, match=r"BoolQ/train\.jsonl"):
        load_multitask_splits(["sst2", "rte", "boolq"], shared_data)


# ----------------------------------------------------------------------------- errors

def copy_task(src_root: Path, dst_root: Path, rel_dir: str) -> Path:
    shutil.copytree(src_root / rel_dir, dst_root / rel_dir)
    return dst_root / rel_dir


def replace_line(path: Path, lineno: int, new: str):
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[lineno - 1] = new
    path.write_text("\n".join(lines), encoding="utf-8")


def test_missing_file_names_path_and_layout(shared_data, tmp_path):
    for task, rel in [("boolq", "superglue/BoolQ/train.jsonl"), ("qnli", "glue/QNLI/train.tsv")]:
        with pytest.raises(DataError) as err:
            load_task_splits(task, shared_data)
        message = str(err.value)
        assert str(shared_data / rel) in message
        assert "expected layout" in message
    with pytest.raises(DataError, match=r"glue/RTE/train\.tsv.*expected layout"):
        load_task_splits("rte", tmp_path)
    with pytest.raises(DataError, match="not a directory"):
        load_task_splits("rte", tmp_path / "nowhere")


def test_data_dir_may_point_at_the_glue_folder(sample_dir):
    direct = load_task_splits("rte", sample_dir / "glue")
    assert protocol_fingerprint(direct) == protocol_fingerprint(load_task_splits("rte"))


def test_malformed_tsv_row_names_file_and_line(sample_dir, tmp_path):
    folder = copy_task(sample_dir, tmp_path, "glue/RTE")
    path = folder / "train.tsv"
    replace_line(path, 5, "4\tonly two fields")
    with pytest.raises(DataError) as err:
        load_task_splits("rte", tmp_path)
    assert f"{path}:5:" in str(err.value) and "malformed row" in str(err.value)


def test_malformed_header(sample_dir, tmp_path):
    folder = copy_task(sample_dir, tmp_path, "glue/RTE")
    replace_line(folder / "dev.tsv", 1, "index\tsentence1\tsentence_two\tlabel")
    with pytest.raises(DataError, match=r"dev\.tsv:1: .*sentence2"):
        load_task_splits("rte", tmp_path)


def test_malformed_headerless_tsv(sample_dir, tmp_path):
    folder = copy_task(sample_dir, tmp_path, "glue/CoLA")
    replace_line(folder / "dev.tsv", 7, "gj04\t1\tThe sailors rode.")
    with pytest.raises(DataError, match=r"CoLA/dev\.tsv:7: malformed row: expected 4"):
        load_task_splits("cola", tmp_path)


def test_malformed_jsonl_row(sample_dir, tmp_path):
    folder = copy_task(sample_dir, tmp_path, "superglue/CB")
    replace_line(folder / "val.jsonl", 3, '{"premise": "x", "hypothesis": ')
    with pytest.raises(DataError, match=r"CB/val\.jsonl:3: malformed row: invalid JSON"):
        load_task_splits("cb", tmp_path)
    replace_line(folder / "val.jsonl", 3, '{"premise": "x", "label": "neutral"}')
    with pytest.raises(DataError, match=r"val\.jsonl:3: malformed row: missing key 'hypothesis'"):
        load_task_splits("cb", tmp_path)


def test_label_outside_label_set(sample_dir, tmp_path):
    folder = copy_task(sample_dir, tmp_path, "glue/RTE")
    replace_line(folder / "dev.tsv", 3, "1\tA man.\tA person.\tmaybe")
    with pytest.raises(DataError, match=r"RTE/dev\.tsv:3: label 'maybe' outside the label set"):
        load_task_splits("rte", tmp_path)
    folder = copy_task(sample_dir, tmp_path, "glue/STS-B")
    lines = (folder / "train.tsv").read_text(encoding="utf-8").split("\n")
    fields = lines[1].split("\t")
    fields[-1] = "7.5"
    replace_line(folder / "train.tsv", 2, "\t".join(fields))
    with pytest.raises(DataError, match=r"STS-B/train\.tsv:2: label '7\.5' outside"):
        load_task_splits("stsb", tmp_path)
    folder = copy_task(sample_dir, tmp_path, "superglue/CB")
    replace_line(folder / "train.jsonl", 4,
                 '{"premise": "a", "hypothesis": "b", "label": "unknown", "idx": 3}')
    with pytest.raises(DataError, match=r"train\.jsonl:4: label 'unknown' outside"):
        load_task_splits("cb", tmp_path)


def test_empty_split_after_filtering(sample_dir, tmp_path):
    with pytest.raises(DataError, match="train split is empty"):
        load_task_splits("rte", sample_dir, n_train=0)
    with pytest.raises(DataError, match="test split is empty"):
        load_task_splits("cb", sample_dir, n_test=0)
    # a large task with <= 1000 training rows has nothing left to train on
    folder = copy_task(sample_dir, tmp_path, "glue/SST-2")
    lines = (folder / "train.tsv").read_text(encoding="utf-8").split("\n")
    (folder / "train.tsv").write_text("\n".join(lines[:1001]) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="train split is empty"):
        load_task_splits("sst2", tmp_path)
    # a file with a header and no rows
    (folder / "dev.tsv").write_text("sentence\tlabel\n", encoding="utf-8")
    with pytest.raises(DataError, match="no rows"):
        load_task_splits("sst2", tmp_path)


def test_bad_arguments(sample_dir):
    with pytest.raises(DataError, match="n_train"):
        load_task_splits("rte", sample_dir, n_train=-1)
    with pytest.raises(DataError, match="stsb_grid"):
        load_task_splits("stsb", sample_dir, stsb_grid=0.3)
    with pytest.raises(DataError, match="Known tasks"):
        load_task_splits("wnli", sample_dir)


# ----------------------------------------------------------------------------- other layouts

def test_mnli_official_splits_from_local_layout(tmp_path):
    folder = tmp_path / "glue" / "MNLI"
    folder.mkdir(parents=True)
    header = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tlabel1\tgold_label"
    labels = ["entailment", "neutral", "contradiction"]
    for name, n in [("train.tsv", 30), ("dev_matched.tsv", 8), ("dev_mismatched.tsv", 6)]:
        rows = [f"{i}\t1\t1\tfic\tP {name} {i}.\tH {i}.\tx\t{labels[i % 3]}" for i in range(n)]
        (folder / name).write_text("\n".join([header] + rows) + "\n", encoding="utf-8")
    splits = load_task_splits("mnli", tmp_path)
    assert sizes(splits) == (30, 6, 8)
    assert all(i.startswith("mnli/validation_mismatched/") for i in splits["validation"]["id"])
    assert all(i.startswith("mnli/validation_matched/") for i in splits["test"]["id"])
    row = splits["test"][0]
    assert row["source"].startswith("premise: P dev_matched.tsv ")
    assert " hypothesis: H " in row["source"]
    assert row["target"] == str(labels.index(labels[int(row["id"].rsplit("/", 1)[1]) % 3]))


def test_extra_task_jsonl_layout(tmp_path):
    folder = tmp_path / "extra" / "TREC"
    folder.mkdir(parents=True)
    import json

    for name, n in [("train.jsonl", 20), ("test.jsonl", 10)]:
        with open(folder / name, "w") as fh:
            for i in range(n):
                fh.write(json.dumps({"text": f"Question {i}?", "coarse_label": i % 6}) + "\n")
    splits = load_task_splits("trec", tmp_path)
    assert sizes(splits) == (20, 5, 5)
    assert splits["train"][0]["source"].startswith("sentence: Question ")


def test_hub_path_is_built_lazily(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(*args, split=None, **kwargs):
        calls.append((args, split))
        n = {"train": 1010, "validation": 12}[split]
        return datasets.Dataset.from_dict({
            "question": [f"q{i}?" for i in range(n)], "sentence": [f"s{i}." for i in range(n)],
            "label": [(-1 if i == 0 and split == "validation" else i % 2) for i in range(n)],
            "idx": list(range(n))})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    splits = load_task_splits("qnli", "hub")
    assert sorted(calls) == [(("glue", "qnli"), "train"), (("glue", "qnli"), "validation")]
    assert sizes(splits) == (10, 1000, 11)  # the unlabelled row is dropped
    assert "qnli/validation/0" not in ids(splits["test"])
    assert protocol_fingerprint(splits)["split_kind"] == "large"


# ----------------------------------------------------------------------------- shipped sample

def test_sample_is_small_and_documented():
    root = sample_data_dir()
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert total < 1_000_000
    sources = (root / "SOURCES.md").read_text(encoding="utf-8")
    for word in ("MSR-SSLA", "CC BY-SA", "byte-for-byte", "Apache-2.0"):
        assert word in sources
    assert set(SAMPLE_TASKS) == {"rte", "mrpc", "sst2", "cola", "stsb", "cb"}


def test_sample_is_a_prefix_of_the_shared_files(shared_data, tmp_path):
    root = sample_data_dir()
    for rel, (header, rows) in SAMPLE_ROWS.items():
        sample = (root / rel).read_bytes()
        assert (shared_data / rel).read_bytes().startswith(sample), rel
        assert sample.count(b"\n") == rows + header, rel
    build_sample(shared_data, tmp_path)
    for rel in SAMPLE_ROWS:
        assert (tmp_path / rel).read_bytes() == (root / rel).read_bytes(), rel
