"""Task registry: every task of the paper in text-to-text form.

Conventions (kept identical to the reference implementation, rabeehk/hyperformer,
so that checkpoints trained there generate the strings we score here):

* **Source text** is ``"<key1>: <text1> <key2>: <text2>"`` (e.g. RTE:
  ``"sentence1: ... sentence2: ..."``). Each field is stripped of surrounding
  whitespace (SST-2 sentences end with a space in the GLUE files; the
  SentencePiece tokenizer ignores it anyway). With ``add_prefix=True`` (the
  ``finetune`` method) the task name is put in front: ``"rte sentence1: ..."``.
  One deliberate difference: the reference writes MNLI as
  ``"premise: ... hypothesis ..."`` (no colon, a typo); we write ``"hypothesis:"``.
* **Targets** are the integer label ids as strings (``"0"``, ``"1"``, ...), in the
  label order of the Hugging Face hub datasets (e.g. RTE/QNLI ``entailment=0,
  not_entailment=1``; MNLI ``entailment=0, neutral=1, contradiction=2``; CB
  ``entailment=0, contradiction=1, neutral=2``; BoolQ ``False=0, True=1``).
  ``Task.label_names[i]`` is the human-readable name of id ``i``.
* **STS-B** targets are the score rounded to a grid (default 0.2, as T5) and
  written with one decimal, e.g. ``"3.8"``; ``stsb_grid=0.1`` reproduces the
  reference (whose rounding helper effectively rounds to 0.1).
* **Split kinds** (see :mod:`hyperscale.data.loading`):
  ``small``: the official dev set is split in halves (validation / test), train
  is all of train; ``large``: 1000 training rows are held out as validation
  and removed from train, the official dev set is test; ``official``: the
  dataset's own train / validation / test (MNLI: validation = dev mismatched,
  test = dev matched; SciTail and PAWS: their official splits).
* **Metrics** names: ``acc``, ``f1``, ``mcc``, ``pearson``, ``spearman``
  (see :mod:`hyperscale.data.metrics`; values in percent).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import DataError

SMALL = "small"
LARGE = "large"
OFFICIAL = "official"
SPLIT_KINDS = (SMALL, LARGE, OFFICIAL)

#: Number of training rows held out as validation for ``large`` tasks.
LARGE_VALIDATION_SIZE = 1000

#: STS-B scores lie in [0, 5].
STSB_RANGE = (0.0, 5.0)
DEFAULT_STSB_GRID = 0.2


@dataclass(frozen=True, eq=False)
class TsvFormat:
    """How to read a GLUE-style TSV file (no quoting; fields split on tabs).

    ``columns`` maps our column name to the header name (``header=True``) or the
    0-based field index (``header=False``). ``n_fields`` is the exact number of
    tab-separated fields per row for headerless files; with a header, every row
    must have as many fields as the header.
    """

    header: bool
    columns: Mapping[str, Any]
    n_fields: int | None = None


@dataclass(frozen=True, eq=False)
class Task:
    """One task of the paper in text-to-text form.

    Attributes:
        name: registry name (``"rte"``).
        fields: ``(key, column)`` pairs building the source text; ``key=None``
            writes the column's text without a key (IMDB, as the reference).
        label_names: human-readable name of each label id (empty for regression).
        metrics: metric names, see :mod:`hyperscale.data.metrics`.
        split_kind: ``"small"``, ``"large"`` or ``"official"``.
        is_regression: ``True`` for STS-B (float label, rounded string target).
        max_target_length: tokens (with ``</s>``) of the longest target under
            the T5 vocabulary; a safe ``max_length`` for generation.
        local_dir: folder of the task's files relative to ``data_dir``
            (``"glue/RTE"``, ``"superglue/CB"``, ``"extra/IMDB"``).
        local_files: origin split name -> file name inside ``local_dir``.
        tsv: TSV layout, or ``None`` for JSON-lines files.
        split_origins: protocol role -> origin split. ``small``: ``train`` and
            ``dev`` (halved); ``large``: ``train`` (1000 held out) and ``test``;
            ``official``: ``train``, ``validation``, ``test``.
        hub: ``(path, config)`` for ``datasets.load_dataset``.
        column_aliases: our column -> alternative column names on the hub.
        label_aliases: extra accepted raw label spellings (lower case) -> id.
    """

    name: str
    fields: tuple
    label_names: tuple
    metrics: tuple
    split_kind: str
    local_dir: str
    local_files: Mapping[str, str]
    split_origins: Mapping[str, str]
    hub: tuple
    tsv: TsvFormat | None = None
    is_regression: bool = False
    max_target_length: int = 3
    column_aliases: Mapping[str, tuple] = field(default_factory=dict)
    label_aliases: Mapping[str, int] = field(default_factory=dict)

    #: a task defined by a spec (hyperscale.data.specs.SpecTask) overrides these
    is_spec = False

    @property
    def is_generation(self) -> bool:
        """Free-text targets (spec tasks with ``generation:``): no label set, greedy generation."""
        return False

    def rank_labels(self) -> tuple | None:
        """The target strings rank classification scores, or None where the task has no label set to rank
        (regression and generation: they are evaluated by greedy generation)."""
        return None if self.is_regression or self.is_generation else tuple(self.label_strings())

    @property
    def columns(self) -> tuple:
        """Text columns the source is built from."""
        return tuple(col for _, col in self.fields)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def label_strings(self, stsb_grid: float = DEFAULT_STSB_GRID) -> tuple:
        """Every valid target string (STS-B: every grid point)."""
        if self.is_regression:
            steps = _grid_steps(stsb_grid)
            lo, hi = STSB_RANGE
            return tuple(_format_grid_value(k / steps, steps)
                         for k in range(int(round(lo * steps)), int(round(hi * steps)) + 1))
        return tuple(str(i) for i in range(len(self.label_names)))


def _glue(dir_name: str, dev_file: str = "dev.tsv") -> dict:
    return {"local_dir": f"glue/{dir_name}",
            "local_files": {"train": "train.tsv", "validation": dev_file}}


_SMALL_ORIGINS = {"train": "train", "dev": "validation"}
_LARGE_ORIGINS = {"train": "train", "test": "validation"}
_JSONL_TVT = {"train": "train.jsonl", "validation": "validation.jsonl", "test": "test.jsonl"}

_TASK_LIST = [
    Task(
        name="cola", fields=(("sentence", "sentence"),),
        label_names=("unacceptable", "acceptable"), metrics=("mcc",), split_kind=SMALL,
        tsv=TsvFormat(header=False, columns={"sentence": 3, "label": 1}, n_fields=4),
        split_origins=_SMALL_ORIGINS, hub=("glue", "cola"), **_glue("CoLA"),
    ),
    Task(
        name="sst2", fields=(("sentence", "sentence"),),
        label_names=("negative", "positive"), metrics=("acc",), split_kind=LARGE,
        tsv=TsvFormat(header=True, columns={"sentence": "sentence", "label": "label"}),
        split_origins=_LARGE_ORIGINS, hub=("glue", "sst2"), **_glue("SST-2"),
    ),
    Task(
        name="mrpc", fields=(("sentence1", "sentence1"), ("sentence2", "sentence2")),
        label_names=("not_equivalent", "equivalent"), metrics=("f1", "acc"), split_kind=SMALL,
        tsv=TsvFormat(header=True, columns={"sentence1": "#1 String", "sentence2": "#2 String",
                                            "label": "Quality"}),
        split_origins=_SMALL_ORIGINS, hub=("glue", "mrpc"), **_glue("MRPC"),
    ),
    Task(
        name="qqp", fields=(("question1", "question1"), ("question2", "question2")),
        label_names=("not_duplicate", "duplicate"), metrics=("f1", "acc"), split_kind=LARGE,
        tsv=TsvFormat(header=True, columns={"question1": "question1", "question2": "question2",
                                            "label": "is_duplicate"}),
        split_origins=_LARGE_ORIGINS, hub=("glue", "qqp"), **_glue("QQP"),
    ),
    Task(
        name="stsb", fields=(("sentence1", "sentence1"), ("sentence2", "sentence2")),
        label_names=(), metrics=("pearson", "spearman"), split_kind=SMALL, is_regression=True,
        tsv=TsvFormat(header=True, columns={"sentence1": "sentence1", "sentence2": "sentence2",
                                            "label": "score"}),
        split_origins=_SMALL_ORIGINS, hub=("glue", "stsb"), **_glue("STS-B"),
    ),
    Task(
        name="mnli", fields=(("premise", "premise"), ("hypothesis", "hypothesis")),
        label_names=("entailment", "neutral", "contradiction"), metrics=("acc",),
        split_kind=OFFICIAL,
        tsv=TsvFormat(header=True, columns={"premise": "sentence1", "hypothesis": "sentence2",
                                            "label": "gold_label"}),
        local_dir="glue/MNLI",
        local_files={"train": "train.tsv", "validation_matched": "dev_matched.tsv",
                     "validation_mismatched": "dev_mismatched.tsv"},
        split_origins={"train": "train", "validation": "validation_mismatched",
                       "test": "validation_matched"},
        hub=("glue", "mnli"),
    ),
    Task(
        name="qnli", fields=(("question", "question"), ("sentence", "sentence")),
        label_names=("entailment", "not_entailment"), metrics=("acc",), split_kind=LARGE,
        tsv=TsvFormat(header=True, columns={"question": "question", "sentence": "sentence",
                                            "label": "label"}),
        split_origins=_LARGE_ORIGINS, hub=("glue", "qnli"), **_glue("QNLI"),
    ),
    Task(
        name="rte", fields=(("sentence1", "sentence1"), ("sentence2", "sentence2")),
        label_names=("entailment", "not_entailment"), metrics=("acc",), split_kind=SMALL,
        tsv=TsvFormat(header=True, columns={"sentence1": "sentence1", "sentence2": "sentence2",
                                            "label": "label"}),
        split_origins=_SMALL_ORIGINS, hub=("glue", "rte"), **_glue("RTE"),
    ),
    Task(
        name="boolq", fields=(("question", "question"), ("passage", "passage")),
        label_names=("False", "True"), metrics=("acc",), split_kind=SMALL,
        local_dir="superglue/BoolQ",
        local_files={"train": "train.jsonl", "validation": "val.jsonl"},
        split_origins=_SMALL_ORIGINS, hub=("super_glue", "boolq"),
        label_aliases={"false": 0, "true": 1},
    ),
    Task(
        name="cb", fields=(("premise", "premise"), ("hypothesis", "hypothesis")),
        label_names=("entailment", "contradiction", "neutral"), metrics=("acc",),
        split_kind=SMALL, local_dir="superglue/CB",
        local_files={"train": "train.jsonl", "validation": "val.jsonl"},
        split_origins=_SMALL_ORIGINS, hub=("super_glue", "cb"),
    ),
    Task(
        name="scitail", fields=(("sentence1", "sentence1"), ("sentence2", "sentence2")),
        label_names=("entailment", "neutral"), metrics=("acc",), split_kind=OFFICIAL,
        local_dir="extra/SciTail", local_files=_JSONL_TVT,
        split_origins={"train": "train", "validation": "validation", "test": "test"},
        hub=("scitail", "snli_format"), column_aliases={"label": ("gold_label",)},
    ),
    Task(
        name="paws", fields=(("sentence1", "sentence1"), ("sentence2", "sentence2")),
        label_names=("not_paraphrase", "paraphrase"), metrics=("acc",), split_kind=OFFICIAL,
        local_dir="extra/PAWS", local_files=_JSONL_TVT,
        split_origins={"train": "train", "validation": "validation", "test": "test"},
        hub=("paws", "labeled_final"),
    ),
    Task(
        name="imdb", fields=((None, "text"),),
        label_names=("neg", "pos"), metrics=("acc",), split_kind=SMALL,
        local_dir="extra/IMDB", local_files={"train": "train.jsonl", "test": "test.jsonl"},
        split_origins={"train": "train", "dev": "test"}, hub=("imdb", None),
    ),
    Task(
        name="yelp_polarity", fields=(("sentence", "text"),),
        label_names=("negative", "positive"), metrics=("acc",), split_kind=LARGE,
        local_dir="extra/YelpPolarity", local_files={"train": "train.jsonl", "test": "test.jsonl"},
        split_origins={"train": "train", "test": "test"}, hub=("yelp_polarity", None),
    ),
    Task(
        name="trec", fields=(("sentence", "text"),),
        label_names=("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"), metrics=("acc",),
        split_kind=SMALL, local_dir="extra/TREC",
        local_files={"train": "train.jsonl", "test": "test.jsonl"},
        split_origins={"train": "train", "dev": "test"}, hub=("trec", None),
        column_aliases={"label": ("coarse_label", "label-coarse")},
    ),
]

#: Registry of all tasks, in the order GLUE, SuperGLUE, transfer sets.
TASKS: dict = {t.name: t for t in _TASK_LIST}

#: Names used by the reference implementation or the GLUE folders.
_ALIASES = {
    "superglue-boolq": "boolq", "superglue-cb": "cb", "sst-2": "sst2", "sts-b": "stsb",
    "yelp": "yelp_polarity",
}


def get_task(name) -> Task:
    """Return the :class:`Task` called ``name`` (a ``Task`` is returned as is).

    Raises :class:`DataError` (a ``ValueError``) listing the known tasks.
    """
    if isinstance(name, Task):
        return name
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in TASKS:
        raise DataError(f"Unknown task {name!r}. Known tasks: {', '.join(sorted(TASKS))}.")
    return TASKS[key]


# --------------------------------------------------------------------------- labels

def _grid_steps(grid: float) -> int:
    """Number of grid points per unit; ``1/grid`` must be a whole number."""
    if not isinstance(grid, (int, float)) or not math.isfinite(grid) or grid <= 0:
        raise DataError(f"stsb_grid must be a positive number, got {grid!r}")
    steps = round(1.0 / grid)
    if steps < 1 or abs(steps * grid - 1.0) > 1e-9:
        raise DataError(f"stsb_grid must divide 1 (e.g. 0.1, 0.2, 0.25, 0.5, 1), got {grid!r}")
    return int(steps)


def _format_grid_value(value: float, steps: int) -> str:
    decimals = 1
    while (10 ** decimals) % steps and decimals < 4:
        decimals += 1
    return f"{value:.{decimals}f}"


def round_stsb(score: float, grid: float = DEFAULT_STSB_GRID) -> str:
    """Round an STS-B score to ``grid`` and format it (``3.77 -> "3.8"``).

    Rounding is ``numpy.round(score * (1/grid)) / (1/grid)`` (half to even), so
    ``grid=0.1`` gives exactly the reference's ``numpy.round(score, 1)``.
    """
    import numpy as np

    steps = _grid_steps(grid)
    value = float(np.round(float(score) * steps) / steps)
    return _format_grid_value(value + 0.0, steps)  # + 0.0 turns -0.0 into 0.0


def parse_label(task, raw, where: str = ""):
    """Convert a raw label (file string, bool, int, float) to the task's label.

    Classification: the label id (int). Accepted: the id itself (int or digit
    string), a label name (``"entailment"``), a bool for BoolQ. STS-B: the float
    score, which must lie in [0, 5]. Raises :class:`DataError` otherwise;
    ``where`` (e.g. ``"path:12"``) is put in front of the message.
    """
    task = get_task(task)
    if task.is_spec:
        return task.spec_parse_label(raw, where)
    prefix = f"{where}: " if where else ""
    if task.is_regression:
        if isinstance(raw, bool):
            raise DataError(f"{prefix}malformed STS-B score {raw!r} ({task.name})")
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise DataError(f"{prefix}malformed row: STS-B score {raw!r} is not a number "
                            f"({task.name})") from None
        lo, hi = STSB_RANGE
        if not math.isfinite(value) or not lo <= value <= hi:
            raise DataError(f"{prefix}label {raw!r} outside the label set of {task.name} "
                            f"(scores in [{lo:g}, {hi:g}])")
        return value
    n = len(task.label_names)
    label_id = None
    if isinstance(raw, bool):
        label_id = int(raw) if n == 2 else None
    elif isinstance(raw, int):
        label_id = raw
    elif isinstance(raw, str):
        text = raw.strip()
        if text in task.label_names:
            label_id = task.label_names.index(text)
        elif text.lower() in task.label_aliases:
            label_id = task.label_aliases[text.lower()]
        elif text.isdigit():
            label_id = int(text)
    elif hasattr(raw, "__index__"):  # numpy integers
        label_id = int(raw)
    if label_id is None or not 0 <= label_id < n:
        allowed = ", ".join(f"{i}={name}" for i, name in enumerate(task.label_names))
        raise DataError(f"{prefix}label {raw!r} outside the label set of {task.name} ({allowed})")
    return label_id


def label_to_target(task, label, stsb_grid: float = DEFAULT_STSB_GRID) -> str:
    """Target string of a parsed label: ``"1"`` or, for STS-B, ``"3.8"``."""
    task = get_task(task)
    if task.is_spec:
        return task.spec_target(label)
    if task.is_regression:
        return round_stsb(label, stsb_grid)
    return str(int(label))


def format_source(task, row: Mapping, add_prefix: bool = False) -> str:
    """Source text of ``row`` (a mapping with the task's columns)."""
    task = get_task(task)
    if task.is_spec:
        return task.spec_source(row, add_prefix)
    parts = [task.name] if add_prefix else []
    for key, column in task.fields:
        try:
            text = row[column]
        except KeyError:
            raise DataError(f"{task.name}: row has no column {column!r} "
                            f"(columns: {sorted(row)})") from None
        if text is None:
            raise DataError(f"{task.name}: column {column!r} is empty (None)")
        text = str(text).strip()
        parts.extend([f"{key}:", text] if key is not None else [text])
    return " ".join(parts)


def format_example(task, row: Mapping, add_prefix: bool = False,
                   stsb_grid: float = DEFAULT_STSB_GRID) -> tuple:
    """``(source, target)`` for one row.

    ``row`` holds the task's text columns and ``label`` (raw or parsed; it is
    parsed with :func:`parse_label`). ``add_prefix`` puts the task name in front
    of the source (used by the ``finetune`` method).
    """
    task = get_task(task)
    if "label" not in row:
        raise DataError(f"{task.name}: row has no 'label' column (columns: {sorted(row)})")
    label = parse_label(task, row["label"])
    return format_source(task, row, add_prefix), label_to_target(task, label, stsb_grid)


__all__ = [
    "Task", "TsvFormat", "TASKS", "SMALL", "LARGE", "OFFICIAL", "SPLIT_KINDS",
    "LARGE_VALIDATION_SIZE", "DEFAULT_STSB_GRID", "get_task", "parse_label",
    "label_to_target", "round_stsb", "format_source", "format_example",
]
