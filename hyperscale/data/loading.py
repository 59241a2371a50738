"""One loader for every task: local GLUE/SuperGLUE files or the Hugging Face hub.

Local layout (exactly the layout of ``shared/data`` and of the shipped sample)::

    <data_dir>/glue/<GLUE dir>/train.tsv, dev.tsv        CoLA SST-2 MRPC QQP STS-B QNLI RTE
    <data_dir>/glue/MNLI/train.tsv, dev_matched.tsv, dev_mismatched.tsv
    <data_dir>/superglue/<dir>/train.jsonl, val.jsonl     BoolQ CB
    <data_dir>/extra/<dir>/<split>.jsonl                  SciTail PAWS IMDB YelpPolarity TREC
                                                          (hub column names, one JSON object a line)

``data_dir`` may also point straight at the ``glue/`` (or ``superglue/``)
folder: ``<data_dir>/RTE/train.tsv`` is tried second. ``Task.local_dir`` and
``Task.local_files`` give each task's folder and file names.

``data_dir=None`` reads the small sample shipped with the package
(:func:`hyperscale.data.sample.sample_data_dir`); ``data_dir="hub"`` calls
``datasets.load_dataset(*task.hub, split=...)`` (needs network or a warm HF cache).

Split protocol (the paper's, with its data leak fixed), all permutations from
``torch.randperm`` with a generator seeded by ``seed`` as in the reference:

* ``small`` tasks: train = all of train (shuffled); the official dev set is
  permuted and split in halves: validation = first ``n // 2``, test = the rest
  (RTE: 277 -> 138 / 139).
* ``large`` tasks: train is permuted; its first 1000 rows are validation and
  are *removed* from train; the official dev set is test.
* ``official`` tasks: the dataset's own splits (MNLI: validation = dev
  mismatched, test = dev matched).
* ``n_train`` / ``n_val`` / ``n_test`` keep the first ``n`` rows of the (already
  seeded-permuted) split: the low-resource protocol.

Every example gets a stable id ``"<task>/<origin split>/<row>"`` where ``row``
is the 0-based data row of the original file (or hub split), so ids never
collide between splits and do not depend on the seed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from .. import hub
from .errors import DataError
from .sample import sample_data_dir
from .tasks import (
    DEFAULT_STSB_GRID,
    LARGE,
    LARGE_VALIDATION_SIZE,
    OFFICIAL,
    SMALL,
    Task,
    _grid_steps,
    format_source,
    get_task,
    label_to_target,
    parse_label,
)

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
HUB = "hub"


class TaskSplits(dict):
    """``{"train", "validation", "test"} -> datasets.Dataset`` plus ``.protocol``.

    ``protocol`` records the settings that produced the splits (task, seed,
    split kind, data source, subsampling, STS-B grid, prefix flag); it feeds
    :func:`protocol_fingerprint`.
    """

    def __init__(self, splits: Mapping, protocol: Mapping | None = None):
        super().__init__(splits)
        self.protocol = dict(protocol or {})


# ----------------------------------------------------------------------------- files

def _expected_layout(task: Task) -> str:
    files = ", ".join(f"<data_dir>/{task.local_dir}/{name}" for name in task.local_files.values())
    return (f"expected layout for {task.name}: {files} (data_dir holds glue/, superglue/ and "
            f"extra/ folders like shared/data; or point data_dir at the {task.local_dir.split('/')[0]}/ "
            f"folder itself)")


def resolve_local_files(task, data_dir, origins: Sequence[str] | None = None) -> dict:
    """Map each origin split of ``task`` to its file under ``data_dir``.

    Checks every needed file before anything is parsed; a missing one raises a
    :class:`DataError` naming the path(s) tried and the expected layout.
    """
    task = get_task(task)
    root = Path(data_dir).expanduser()
    if origins is None:
        origins = sorted(set(task.split_origins.values()), key=list(task.local_files).index)
    if not root.is_dir():
        raise DataError(f"{task.name}: data_dir {str(root)!r} is not a directory; "
                        + _expected_layout(task))
    leaf = task.local_dir.split("/")[-1]
    found = {}
    for origin in origins:
        name = task.local_files[origin]
        candidates = [root / task.local_dir / name, root / leaf / name]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise DataError(
                f"{task.name}: missing {origin} file {str(candidates[0])!r} (also tried "
                f"{str(candidates[1])!r}); " + _expected_layout(task))
        found[origin] = path
    return found


def _read_text_lines(path: Path) -> list:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: malformed row: not valid UTF-8 ({err.reason})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _make_row(task: Task, values: Mapping, raw_label: Any, where: str, index: int) -> dict:
    row = {col: values[col] for col in task.columns}
    for col, text in row.items():
        if not isinstance(text, str):
            raise DataError(f"{where}: malformed row: column {col!r} is not text ({text!r})")
    row["label"] = parse_label(task, raw_label, where)
    row["_index"] = index
    return row


def read_tsv(task, path) -> list:
    """Parse one GLUE TSV file of ``task`` into row dicts (text columns, parsed
    ``label``, ``_index`` = 0-based data row). Tabs split fields; no quoting."""
    task = get_task(task)
    fmt = task.tsv
    path = Path(path)
    lines = _read_text_lines(path)
    rows = []
    first = 0
    if fmt.header:
        if not lines:
            raise DataError(f"{path}:1: malformed file: no header line")
        header = lines[0].split("\t")
        missing = [c for c in fmt.columns.values() if c not in header]
        if missing:
            raise DataError(f"{path}:1: malformed header: missing column(s) {missing} "
                            f"(header: {header})")
        positions = {ours: header.index(theirs) for ours, theirs in fmt.columns.items()}
        n_fields = len(header)
        first = 1
    else:
        positions = dict(fmt.columns)
        n_fields = fmt.n_fields
    for lineno in range(first + 1, len(lines) + 1):
        line = lines[lineno - 1]
        if not line.strip():
            continue
        fields = line.split("\t")
        where = f"{path}:{lineno}"
        if len(fields) != n_fields:
            raise DataError(f"{where}: malformed row: expected {n_fields} tab-separated fields, "
                            f"got {len(fields)}")
        values = {ours: fields[pos] for ours, pos in positions.items()}
        rows.append(_make_row(task, values, values["label"], where, len(rows)))
    return rows


def _lookup(task: Task, record: Mapping, column: str, where: str):
    for name in (column,) + tuple(task.column_aliases.get(column, ())):
        if name in record:
            return record[name]
    raise DataError(f"{where}: malformed row: missing key {column!r} (keys: {sorted(record)})")


def read_jsonl(task, path) -> list:
    """Parse one JSON-lines file of ``task`` into row dicts (see :func:`read_tsv`)."""
    task = get_task(task)
    path = Path(path)
    rows = []
    for lineno, line in enumerate(_read_text_lines(path), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: malformed row: invalid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{where}: malformed row: expected a JSON object")
        values = {col: _lookup(task, record, col, where) for col in task.columns}
        rows.append(_make_row(task, values, _lookup(task, record, "label", where), where, len(rows)))
    return rows


def read_local_split(task, path) -> list:
    task = get_task(task)
    return read_tsv(task, path) if task.tsv is not None else read_jsonl(task, path)


def _read_hub_split(task: Task, origin: str) -> list:
    """Rows of one hub split. Unlabelled rows (label -1) are dropped."""
    import datasets  # lazy: only online users pay for it

    path, config = task.hub
    args = (path, config) if config else (path,)
    use_network = not hub.offline("HF_DATASETS_OFFLINE") and hub.reachable()
    try:
        with hub.cache_only(not use_network):  # unreachable: the cache only, no half minute of retries
            data = datasets.load_dataset(*args, split=origin)
    except Exception:  # datasets raises several types for "not cached"
        if use_network:
            raise
        hub.require(f"data.data_dir=hub: {task.name} ({'/'.join(args)})",
                    "use data.data_dir=sample (the shipped sample) or a local GLUE-layout directory",
                    "HF_DATASETS_OFFLINE")
        raise
    columns = data.column_names
    table = data.to_dict()
    n = len(data)
    rows = []
    for i in range(n):
        record = {name: table[name][i] for name in columns}
        where = f"hub {path}/{config or ''} [{origin}] row {i}"
        raw = _lookup(task, record, "label", where)
        if not isinstance(raw, bool) and isinstance(raw, int) and raw == -1:
            continue  # unlabelled (GLUE test splits)
        values = {col: _lookup(task, record, col, where) for col in task.columns}
        rows.append(_make_row(task, values, raw, where, i))
    return rows


# ----------------------------------------------------------------------------- protocol

def _permutation(n: int, seed: int) -> list:
    """The reference's seeded permutation: ``torch.randperm`` with a fresh
    ``torch.Generator().manual_seed(seed)``."""
    import torch

    gen = torch.Generator()
    gen.manual_seed(int(seed))
    return torch.randperm(n, generator=gen).tolist()


def split_indices(task, origin_sizes: Mapping[str, int], seed: int = 42) -> dict:
    """Protocol split -> ``(origin, [row indices])`` for the task's split kind."""
    task = get_task(task)
    o = task.split_origins
    if task.split_kind == SMALL:
        dev = _permutation(origin_sizes[o["dev"]], seed)
        half = len(dev) // 2
        return {"train": (o["train"], _permutation(origin_sizes[o["train"]], seed)),
                "validation": (o["dev"], dev[:half]),
                "test": (o["dev"], dev[half:])}
    if task.split_kind == LARGE:
        train = _permutation(origin_sizes[o["train"]], seed)
        return {"train": (o["train"], train[LARGE_VALIDATION_SIZE:]),
                "validation": (o["train"], train[:LARGE_VALIDATION_SIZE]),
                "test": (o["test"], _permutation(origin_sizes[o["test"]], seed))}
    if task.split_kind == OFFICIAL:
        return {split: (o[split], _permutation(origin_sizes[o[split]], seed)) for split in SPLITS}
    raise DataError(f"{task.name}: unknown split kind {task.split_kind!r}")


def _check_n(name: str, value, task_name: str):
    if value is None:
        return None
    if isinstance(value, Mapping):
        value = value.get(task_name)
        if value is None:
            return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DataError(f"{name} must be a non-negative integer or None, got {value!r}")
    return value


def load_task_splits(task, data_dir=None, n_train=None, n_val=None, n_test=None, seed: int = 42,
                     stsb_grid: float = DEFAULT_STSB_GRID, add_prefix: bool = False,
                     subset_seed: Optional[int] = None) -> TaskSplits:
    """Load ``task`` and split it by the paper's protocol.

    Args:
        task: task name (see :data:`hyperscale.data.tasks.TASKS`) or ``Task``.
        data_dir: root of the local layout (module docstring), ``None`` for the
            shipped sample, or ``"hub"`` for ``datasets.load_dataset``.
        n_train, n_val, n_test: keep only the first ``n`` rows of each seeded
            permuted split (``None``: all). A mapping task -> n is accepted too.
            Asking for more rows than exist keeps them all (with a warning).
        seed: seed of every permutation (splitting and subsampling).
        stsb_grid: STS-B target grid (0.2 default, 0.1 = reference).
        add_prefix: put the task name in front of the source text.
        subset_seed: which ``n_train`` training rows are kept: the train split
            (as ``seed`` made it) is permuted again with this seed before the
            first ``n_train`` are taken. ``None``: no second permutation. The
            validation and test splits never depend on it: a few-shot or
            low-resource experiment varies it across its seeds and evaluates
            every seed on the same test rows; every method given the same
            (seed, subset_seed, n_train) trains on the same rows.

    Returns:
        :class:`TaskSplits`: ``{"train", "validation", "test"}`` ->
        ``datasets.Dataset`` with columns ``id``, ``task``, ``source``,
        ``target``, ``label`` (int, float for STS-B).

    Raises:
        DataError: unknown task, missing file, malformed row (file:line),
        label outside the label set, or an empty split.
    """
    task = get_task(task)
    _grid_steps(stsb_grid)
    limits = {"train": _check_n("n_train", n_train, task.name),
              "validation": _check_n("n_val", n_val, task.name),
              "test": _check_n("n_test", n_test, task.name)}
    origins = [o for o in task.local_files if o in set(task.split_origins.values())]

    if task.is_spec:  # a task of your own: its spec names its files (data_dir is for the built-in tasks)
        source = task.data_source()
        rows_by_origin = {origin: task.read_split(origin) for origin in origins}
    elif isinstance(data_dir, str) and data_dir == HUB:
        source = "hub:" + "/".join(str(x) for x in task.hub if x)
        rows_by_origin = {origin: _read_hub_split(task, origin) for origin in origins}
    else:
        if data_dir is None:
            data_dir = sample_data_dir()
        paths = resolve_local_files(task, data_dir, origins)  # all files checked first
        source = "local:" + str(Path(data_dir).expanduser().resolve())
        rows_by_origin = {origin: read_local_split(task, path) for origin, path in paths.items()}

    for origin, rows in rows_by_origin.items():
        if not rows:
            raise DataError(f"{task.name}: split {origin!r} has no rows ({source})")
    plan = split_indices(task, {o: len(r) for o, r in rows_by_origin.items()}, seed)

    import datasets

    features = datasets.Features({
        "id": datasets.Value("string"), "task": datasets.Value("string"),
        "source": datasets.Value("string"), "target": datasets.Value("string"),
        "label": datasets.Value("string" if task.is_generation else "float64" if task.is_regression else "int64"),
    })
    splits = {}
    for split in SPLITS:
        origin, indices = plan[split]
        limit = limits[split]
        if split == "train" and subset_seed is not None:
            indices = [indices[j] for j in _permutation(len(indices), subset_seed)]
        if limit is not None:
            if limit > len(indices):
                logger.warning("%s: asked for %d %s rows, only %d exist; keeping all",
                               task.name, limit, split, len(indices))
            indices = indices[:limit]
        if not indices:
            raise DataError(f"{task.name}: the {split} split is empty after splitting/subsampling "
                            f"({len(rows_by_origin[origin])} rows in {origin!r}, kind "
                            f"{task.split_kind!r}, limit {limit}); {source}")
        rows = rows_by_origin[origin]
        columns = {name: [] for name in features}
        for i in indices:
            row = rows[i]
            columns["id"].append(f"{task.name}/{origin}/{row['_index']}")
            columns["task"].append(task.name)
            columns["source"].append(format_source(task, row, add_prefix))
            columns["target"].append(label_to_target(task, row["label"], stsb_grid))
            columns["label"].append(row["label"])
        splits[split] = datasets.Dataset.from_dict(columns, features=features)

    protocol = {"task": task.name, "seed": int(seed), "split_kind": task.split_kind,
                "source": source, "n_train": limits["train"], "n_val": limits["validation"],
                "n_test": limits["test"], "add_prefix": bool(add_prefix)}
    if subset_seed is not None:
        protocol["subset_seed"] = int(subset_seed)
    if task.is_spec:  # the spec itself (without its file paths) is part of the protocol
        protocol["spec_sha256"] = task.spec_sha256()
    elif task.is_regression:
        protocol["stsb_grid"] = float(stsb_grid)
    return TaskSplits(splits, protocol)


def load_multitask_splits(tasks: Sequence, data_dir=None, registry=None, **kwargs) -> dict:
    """:func:`load_task_splits` for each task (all loaded, and so all checked,
    before anything is returned). Returns ``{task name: TaskSplits}`` in order.
    ``registry`` (a :class:`hyperscale.data.specs.TaskRegistry`) resolves the names of
    tasks of your own; without it only built-in tasks (or ``Task`` objects) are known."""
    lookup = registry.get if registry is not None else get_task
    resolved = [lookup(t) for t in tasks]
    names = [t.name for t in resolved]
    if len(set(names)) != len(names):
        raise DataError(f"duplicate task in {list(names)!r}")
    if not names:
        raise DataError("no tasks given")
    if not (isinstance(data_dir, str) and data_dir == HUB):
        for task in resolved:  # every file of every task exists before anything is parsed
            if task.is_spec:
                missing = [f"data.{o}: {p}" for o, p in task.files.items() if not Path(p).is_file()]
                if missing:
                    raise DataError(f"{task.origin}: {missing[0].split(':')[0]}: file "
                                    f"{missing[0].split(': ', 1)[1]!r} does not exist")
            else:
                resolve_local_files(task, data_dir if data_dir is not None else sample_data_dir())
    return {task.name: load_task_splits(task, data_dir, **kwargs) for task in resolved}


# ----------------------------------------------------------------------------- fingerprint

def columns_as_lists(ds, names) -> dict:
    """``{name: python list}`` for some columns of a dataset (fast path; a bare
    ``ds[name]`` is a lazy column that is slow to iterate)."""
    return ds.select_columns(list(names))[:]


def _ids_digest(ids) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode("utf-8")).hexdigest()


def _content_digest(ds) -> str:
    names = [c for c in ("id", "source", "target") if c in ds.column_names]
    data = columns_as_lists(ds, names)
    rows = sorted(zip(*(data[c] for c in names)))
    text = "\x1e".join("\x1f".join(row) for row in rows)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def protocol_fingerprint(splits: Mapping) -> dict:
    """Record of a split: sizes, seed and settings, sha256 of the sorted ids
    (``ids_sha256``) and of the sorted ``(id, source, target)`` rows
    (``content_sha256``: also changes when the text or targets change).

    ``splits`` is one task's :class:`TaskSplits` (or any mapping split ->
    dataset with an ``id`` column), or a mapping task -> splits (the result
    of :func:`load_multitask_splits`), which gives ``{"tasks": {...}, "sha256"}``.
    ``sha256`` digests the whole record, for a one-value comparison.
    """
    values = list(splits.values())
    if values and all(isinstance(v, Mapping) for v in values):
        record = {"tasks": {name: protocol_fingerprint(s) for name, s in splits.items()}}
    else:
        record = dict(getattr(splits, "protocol", {}))
        record.pop("source", None)  # the same data read from another path is the same protocol
        record["sizes"] = {name: len(ds) for name, ds in splits.items()}
        record["ids_sha256"] = {name: _ids_digest(columns_as_lists(ds, ["id"])["id"])
                                for name, ds in splits.items()}
        record["content_sha256"] = {name: _content_digest(ds) for name, ds in splits.items()}
    record["sha256"] = hashlib.sha256(
        json.dumps(record, sort_keys=True, default=str).encode("utf-8")).hexdigest()
    return record


__all__ = [
    "TaskSplits", "SPLITS", "HUB", "load_task_splits", "load_multitask_splits",
    "protocol_fingerprint", "resolve_local_files", "columns_as_lists", "read_tsv", "read_jsonl", "read_local_split",
    "split_indices",
]
