"""Your own tasks: task specs in YAML, and the task registry a run builds from them.

A spec (one YAML mapping; a spec file holds one spec or a list of them)::

    name: ticket_route                          # [a-z][a-z0-9_]*, not a built-in task's name
    source: "subject: {subject} body: {body}"   # a template over the columns below, or a field list
                                                # [subject, body] = the paper's "subject: ... body: ..."
    labels: [billing, technical, account]       # classification (exactly one of labels / regression / generation)
    targets: ids                                # ids (default: "0", "1", ... as the built-in tasks) | names
    # regression: {min: 0, max: 5, grid: 0.2}   # targets: the score rounded to the grid ("3.8")
    # generation: {max_target_length: 32}       # free text; greedy generation of at most that many tokens
    metrics: [accuracy, f1_macro]               # from the menu of the target kind (METRIC_MENU)
    split: small                                # small | large | official (the paper's protocol)
    data:
      train: data/train.jsonl                   # jsonl, csv, tsv or parquet (by extension, or data.format)
      validation: data/dev.csv                  # small/large: train + validation (the official dev set);
      test: data/test.parquet                   # official: train + validation + test
      # hub: {path: user/dataset, name: null, splits: {train: train, validation: validation}}   instead of files
      columns: {subject: Subject, body: Body, label: category}   # every source field and label -> file column

Relative data paths are relative to the spec file's folder (inline specs: to the working directory); a spec's
record (:attr:`SpecTask.record`, what runs and exports keep) holds them absolute. Every mistake is a
:class:`~hyperscale.errors.ConfigError` of one line that names the spec (its file, or ``data.task_specs[i]``) and
the key.

:class:`TaskRegistry` is the built-in tasks plus some specs; a run builds one from its config
(:func:`registry_from_config`) and hands it along; there is no global registry to change.
"""
from __future__ import annotations

import csv
import difflib
import hashlib
import json
import math
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import yaml

from .. import hub
from ..errors import ConfigError
from .errors import DataError
from .tasks import LARGE, OFFICIAL, SMALL, SPLIT_KINDS, TASKS, Task, get_task

CLASSIFICATION, REGRESSION, GENERATION = "classification", "regression", "generation"
KINDS = (CLASSIFICATION, REGRESSION, GENERATION)

SPEC_KEYS = ("name", "source", "labels", "targets", "regression", "generation", "metrics", "split", "data")
DATA_KEYS = ("train", "validation", "test", "format", "hub", "columns")
HUB_KEYS = ("path", "name", "splits")
REGRESSION_KEYS = ("min", "max", "grid")
GENERATION_KEYS = ("max_target_length",)
FORMATS = ("jsonl", "csv", "tsv", "parquet")
EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}

#: metrics each target kind may use (values in percent, see hyperscale.data.metrics)
METRIC_MENU = {
    CLASSIFICATION: ("accuracy", "f1_macro", "f1_binary", "mcc"),
    REGRESSION: ("pearson", "spearman"),
    GENERATION: ("exact_match", "rouge_l"),
}
DEFAULT_METRICS = {CLASSIFICATION: ("accuracy",), REGRESSION: ("pearson", "spearman"), GENERATION: ("exact_match",)}
#: the files each split protocol reads (origin split names, as the hub's)
SPLIT_FILES = {SMALL: ("train", "validation"), LARGE: ("train", "validation"),
               OFFICIAL: ("train", "validation", "test")}
_SPLIT_ORIGINS = {SMALL: {"train": "train", "dev": "validation"}, LARGE: {"train": "train", "test": "validation"},
                  OFFICIAL: {"train": "train", "validation": "validation", "test": "test"}}
DEFAULT_GRID = 0.1
NAME_RE = re.compile(r"[a-z][a-z0-9_]*")


def _hint(key: str, known: Iterable[str]) -> str:
    known = list(known)
    close = difflib.get_close_matches(str(key), known, n=1)
    return f" (did you mean '{close[0]}'?)" if close else f"; known keys: {', '.join(known)}"


# ---------------------------------------------------------------------------------------------- the task
@dataclass(frozen=True, eq=False)
class SpecTask(Task):
    """A task defined by a spec. Everything :class:`~hyperscale.data.tasks.Task` has, plus its target kind,
    template, files and the spec's full record (``record``: what a run keeps and an export carries)."""

    spec_kind: str = CLASSIFICATION
    template: str = ""
    target_names: bool = False
    value_range: tuple = (0.0, 1.0)
    grid: float = DEFAULT_GRID
    files: Mapping[str, str] = field(default_factory=dict)  # origin split -> absolute path
    formats: Mapping[str, str] = field(default_factory=dict)  # origin split -> file format
    column_map: Mapping[str, str] = field(default_factory=dict)  # our column (and "label") -> the file's column
    hub_splits: Mapping[str, str] = field(default_factory=dict)  # data.hub: origin split -> the hub's split
    origin: str = ""  # where the spec was defined (a file, data.task_specs[i], an export)
    record: Mapping[str, Any] = field(default_factory=dict)

    is_spec = True

    @property
    def is_generation(self) -> bool:
        return self.spec_kind == GENERATION

    def spec_sha256(self) -> str:
        """Digest of the spec without its data paths (the same spec over moved files is the same protocol)."""
        rec = json.loads(json.dumps(self.record))
        data = rec.get("data", {})
        for split in ("train", "validation", "test"):
            data.pop(split, None)
        if isinstance(data.get("hub"), dict) and Path(str(data["hub"].get("path"))).is_absolute():
            data["hub"].pop("path")  # a local dataset folder: where it lies is not the protocol
        return hashlib.sha256(json.dumps(rec, sort_keys=True).encode("utf-8")).hexdigest()

    # ---- targets
    def _decimals(self) -> int:
        text = repr(float(self.grid))
        if "e" in text:
            return 6
        frac = text.split(".")[1].rstrip("0") if "." in text else ""
        return len(frac)

    def format_value(self, value: float) -> str:
        """A score as its target string: rounded to the grid (half to even), with the grid's decimals."""
        steps = round(float(value) / self.grid)
        return f"{steps * self.grid + 0.0:.{self._decimals()}f}"

    def label_strings(self, stsb_grid: float = 0.0) -> tuple:
        if self.spec_kind == REGRESSION:
            lo, hi = self.value_range
            first, last = math.ceil(lo / self.grid - 1e-9), math.floor(hi / self.grid + 1e-9)
            return tuple(self.format_value(k * self.grid) for k in range(first, last + 1))
        if self.spec_kind == GENERATION:
            return ()
        return tuple(self.label_names) if self.target_names else tuple(str(i) for i in range(len(self.label_names)))

    def spec_parse_label(self, raw: Any, where: str = ""):
        prefix = f"{where}: " if where else ""
        if self.spec_kind == GENERATION:
            if raw is None or isinstance(raw, (dict, list, bool)):
                raise DataError(f"{prefix}target {raw!r} is not text ({self.name})")
            text = str(raw).strip()
            if not text:
                raise DataError(f"{prefix}empty target ({self.name})")
            return text
        if self.spec_kind == REGRESSION:
            try:
                value = float(raw) if not isinstance(raw, bool) else math.nan
            except (TypeError, ValueError):
                value = math.nan
            lo, hi = self.value_range
            if not math.isfinite(value) or not lo <= value <= hi:
                raise DataError(f"{prefix}label {raw!r} is not a number in [{lo:g}, {hi:g}] ({self.name})")
            return value
        n = len(self.label_names)
        label_id = None
        if not isinstance(raw, (bool, str)) and (isinstance(raw, int) or hasattr(raw, "__index__") or
                                                 (isinstance(raw, float) and raw.is_integer())):
            raw = str(int(raw))  # a number is read as the text it is written as: a label name first, else an id
        if isinstance(raw, bool):
            label_id = int(raw) if n == 2 else None
        elif isinstance(raw, str):
            text = raw.strip()
            if text in self.label_names:
                label_id = self.label_names.index(text)
            elif re.fullmatch(r"\d+", text):
                label_id = int(text)
        if label_id is None or not 0 <= label_id < n:
            allowed = ", ".join(f"{i}={name}" for i, name in enumerate(self.label_names))
            raise DataError(f"{prefix}label {raw!r} outside the label set of {self.name} ({allowed})")
        return label_id

    def spec_target(self, label) -> str:
        if self.spec_kind == GENERATION:
            return str(label)
        if self.spec_kind == REGRESSION:
            return self.format_value(label)
        return self.label_strings()[int(label)]

    def spec_source(self, row: Mapping, add_prefix: bool = False) -> str:
        values = {}
        for col in self.columns:
            if col not in row or row[col] is None:
                raise DataError(f"{self.name}: row has no value for column {col!r} (columns: {sorted(row)})")
            values[col] = str(row[col]).strip()
        text = self.template.format(**values)
        return f"{self.name} {text}" if add_prefix else text

    def parse_output(self, text: str):
        """Label of a generated string (None when it is invalid)."""
        text = str(text).strip()
        if self.spec_kind == GENERATION:
            return " ".join(text.split())
        if self.spec_kind == REGRESSION:
            try:
                value = float(text)
            except ValueError:
                return None
            return value if math.isfinite(value) else None
        labels = self.label_strings()
        return labels.index(text) if text in labels else None

    # ---- data
    def data_source(self) -> str:
        """Where the rows come from (the protocol record's ``source``)."""
        if self.hub_splits:
            return "hub:" + "/".join(str(x) for x in self.hub if x)
        return "files:" + ",".join(self.files.values())

    def read_split(self, origin: str) -> list:
        """Rows of one file or hub split (our column names, parsed ``label``, ``_index``: the 0-based data row),
        read through ``datasets``. Unlabelled hub rows (label -1, as GLUE's test splits) are left out."""
        if self.hub_splits:
            split = self.hub_splits[origin]
            table = _read_hub_table(self.hub, split, self.name)
            shown, first_row = f"hub {'/'.join(str(x) for x in self.hub if x)} [{split}]", 0
        else:
            path, fmt = Path(self.files[origin]), self.formats[origin]
            if not path.is_file():
                raise DataError(f"{self.origin}: data.{origin}: file {str(path)!r} does not exist")
            table = _read_table(path, fmt)
            shown, first_row = str(path), 1
        missing = [f"{ours} -> {theirs!r}" for ours, theirs in self.column_map.items() if theirs not in table]
        if missing:
            raise DataError(f"{self.origin}: data.columns: {shown} lacks the mapped column(s) {', '.join(missing)} "
                            f"(its columns: {', '.join(sorted(table))})")
        n = len(next(iter(table.values()))) if table else 0
        rows = []
        label_col = self.column_map["label"]
        for i in range(n):
            where = f"{shown}: row {i + first_row}"
            raw = table[label_col][i]
            if self.hub_splits and self.spec_kind == CLASSIFICATION and not isinstance(raw, bool) and raw == -1:
                continue
            row = {}
            for ours in self.columns:
                value = table[self.column_map[ours]][i]
                if value is None or isinstance(value, (dict, list)):
                    raise DataError(f"{where}: malformed row: column {self.column_map[ours]!r} is not text "
                                    f"({value!r})")
                row[ours] = str(value)
            row["label"] = self.spec_parse_label(table[label_col][i], where)
            row["_index"] = i
            rows.append(row)
        return rows


def _read_table(path: Path, fmt: str) -> dict:
    """A whole file as ``{column: list}`` through ``datasets`` (text cells stay text: no type guessing in CSV)."""
    import datasets
    from datasets.utils.logging import disable_progress_bar, enable_progress_bar, is_progress_bar_enabled

    shown = is_progress_bar_enabled()
    disable_progress_bar()  # no "Generating train split" bar per file
    try:
        if fmt == "jsonl":
            ds = datasets.Dataset.from_json(str(path))
        elif fmt == "parquet":
            ds = datasets.Dataset.from_parquet(str(path))
        else:
            header = _file_columns(path, fmt) or []
            features = datasets.Features({c: datasets.Value("string") for c in header}) if header else None
            ds = datasets.Dataset.from_csv(str(path), sep="\t" if fmt == "tsv" else ",", features=features,
                                           keep_default_na=False, na_filter=False,
                                           **({"quoting": csv.QUOTE_NONE} if fmt == "tsv" else {}))
    except Exception as err:  # datasets / pyarrow / pandas raise many types for a malformed file
        first = str(err).splitlines()[0] if str(err) else ""
        raise DataError(f"{path}: malformed {fmt} file: {type(err).__name__}: {first}") from None
    finally:
        if shown:
            enable_progress_bar()
    return ds.to_dict()


def _read_hub_table(source: tuple, split: str, task: str) -> dict:
    """One split of a hub dataset (or of a local dataset folder) as ``{column: list}``. Offline, or with the hub
    out of reach, only the local cache is read, and a dataset missing there is one line naming the way out."""
    import datasets

    path, name = source
    args = (path, name) if name else (path,)
    if Path(path).expanduser().exists():  # a local dataset folder: no network involved
        return datasets.load_dataset(str(Path(path).expanduser()), *args[1:], split=split).to_dict()
    use_network = not hub.offline("HF_DATASETS_OFFLINE") and hub.reachable()
    try:
        with hub.cache_only(not use_network):
            data = datasets.load_dataset(*args, split=split)
    except Exception:  # datasets raises several types for "not cached"
        if use_network:
            raise
        hub.require(f"task {task}: data.hub {'/'.join(str(a) for a in args)} [{split}]",
                    "bring the data as files (data.train, data.validation, ...)", "HF_DATASETS_OFFLINE")
        raise
    return data.to_dict()


def _file_columns(path: Path, fmt: str) -> Optional[list]:
    """The columns of a data file, read from its first line / schema only (None when that cannot tell)."""
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(str(path)).names)
        with open(path, encoding="utf-8-sig", newline="") as fh:
            if fmt == "jsonl":
                for line in fh:
                    if line.strip():
                        record = json.loads(line)
                        return list(record) if isinstance(record, dict) else None
                return []
            first = fh.readline().rstrip("\r\n")
            if fmt == "tsv":
                return first.split("\t")
            return next(csv.reader([first]), [])
    except Exception:  # the full read says what is wrong, with the row
        return None


# ---------------------------------------------------------------------------------------------- parsing
class _Spec:
    """Validation helpers for one spec: every error names the spec's origin and the key."""

    def __init__(self, origin: str):
        self.origin = origin

    def fail(self, key: str, msg: str) -> None:
        raise ConfigError(f"{self.origin}: {key}: {msg}")

    def mapping(self, value: Any, key: str, known: tuple) -> dict:
        if not isinstance(value, dict):
            self.fail(key, f"must be a mapping, got {value!r}")
        for k in value:
            if k not in known:
                self.fail(f"{key}.{k}", f"unknown key{_hint(k, known)}")
        return value

    def number(self, value: Any, key: str) -> float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(key, f"must be a finite number, got {value!r}")
        return float(value)


def parse_spec(tree: Any, origin: str, base_dir: Optional[Path] = None, check_data: bool = True) -> SpecTask:
    """A :class:`SpecTask` from one parsed YAML mapping. ``origin`` names it in errors (a file, or
    ``data.task_specs[0]``); relative data paths are relative to ``base_dir`` (default: the working directory).
    ``check_data``: the files must exist and have the mapped columns (header / schema only)."""
    s = _Spec(origin)
    if not isinstance(tree, dict):
        raise ConfigError(f"{origin}: a task spec must be a mapping (name, source, labels | regression | "
                          f"generation, metrics, split, data), got {type(tree).__name__}")
    name = tree.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        s.fail("name", f"must be a name of lower-case letters, digits and _ starting with a letter, got {name!r}")
    s.origin = f"{origin} (task {name})"
    for key in tree:
        if key not in SPEC_KEYS:
            s.fail(str(key), f"unknown key{_hint(key, SPEC_KEYS)}")
    try:
        get_task(name)
        clash = True
    except DataError:
        clash = False
    if clash:
        s.fail("name", f"{name!r} is a built-in task (built-in: {', '.join(TASKS)}); give the spec another name")

    # ---- source
    source = tree.get("source")
    if isinstance(source, list) and source and all(isinstance(c, str) and c for c in source):
        template = " ".join(f"{c}: {{{c}}}" for c in source)
    elif isinstance(source, str) and source.strip():
        template = source
    else:
        s.fail("source", f"give a template over the data's columns (\"question: {{question}} context: "
                         f"{{passage}}\") or a list of columns, got {source!r}")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as err:
        s.fail("source", f"not a valid template ({err}); write literal braces as {{{{ and }}}}")
    bad = [f for f in fields if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", f)]
    if bad:
        s.fail("source", f"template fields must be plain column names, got {bad}")
    if not fields:
        s.fail("source", "the template names no column ({column})")
    columns = tuple(dict.fromkeys(fields))

    # ---- target kind
    given = [k for k in ("labels", "regression", "generation") if tree.get(k) is not None]
    if len(given) != 1:
        s.fail(" and ".join(given) if given else "labels",
               "give exactly one target kind: labels: [...] (classification), regression: {min, max, grid} or "
               "generation: {max_target_length}" + (f"; this spec gives {len(given)}" if given else ""))
    kind = {"labels": CLASSIFICATION, "regression": REGRESSION, "generation": GENERATION}[given[0]]
    label_names: tuple = ()
    value_range, grid, max_target = (0.0, 1.0), DEFAULT_GRID, 3
    targets = tree.get("targets")
    if targets is not None and (kind != CLASSIFICATION or targets not in ("ids", "names")):
        s.fail("targets", "ids or names, for a labels task only" + f", got {targets!r}")
    target_names = targets == "names"
    record: dict = {"name": name, "source": template}
    if kind == CLASSIFICATION:
        labels = tree["labels"]
        if not isinstance(labels, list):
            s.fail("labels", f"must be a list of label names, got {labels!r}")
        if not labels:
            s.fail("labels", "the label list is empty: name at least two labels")
        if len(labels) < 2:
            s.fail("labels", f"a classification task needs at least two labels, got {labels}")
        label_names = tuple(str(x).strip() for x in labels)
        if any(not x or isinstance(y, (dict, list)) for x, y in zip(label_names, labels)):
            s.fail("labels", f"every label must be a non-empty name, got {labels}")
        if len(set(label_names)) != len(label_names):
            s.fail("labels", f"duplicate label names: {list(label_names)}")
        record.update(labels=list(label_names), targets="names" if target_names else "ids")
        max_target = max(len(x) for x in (label_names if target_names else [str(len(label_names))])) + 1
    elif kind == REGRESSION:
        reg = s.mapping(tree["regression"], "regression", REGRESSION_KEYS)
        for k in ("min", "max"):
            if k not in reg:
                s.fail(f"regression.{k}", "missing: give the range of the scores, e.g. regression: {min: 0, max: 5}")
        lo, hi = s.number(reg["min"], "regression.min"), s.number(reg["max"], "regression.max")
        if not lo < hi:
            s.fail("regression", f"min ({lo:g}) must be below max ({hi:g})")
        grid = s.number(reg.get("grid", DEFAULT_GRID), "regression.grid")
        if grid <= 0 or grid > hi - lo:
            s.fail("regression.grid", f"must be > 0 and at most max - min ({hi - lo:g}), got {grid:g}")
        if (hi - lo) / grid > 10_000:
            s.fail("regression.grid", f"{(hi - lo) / grid:.0f} grid points: use a coarser grid (at most 10,000)")
        value_range = (lo, hi)
        decimals = len(repr(grid).split(".")[1].rstrip("0")) if "." in repr(grid) and "e" not in repr(grid) else 6
        max_target = max(len(f"{v:.{decimals}f}") for v in (lo, hi)) + 2  # tokens <= characters + </s>
        record["regression"] = {"min": lo, "max": hi, "grid": grid}
    else:
        gen = s.mapping(tree["generation"], "generation", GENERATION_KEYS)
        mtl = gen.get("max_target_length")
        if isinstance(mtl, bool) or not isinstance(mtl, int) or mtl < 1:
            s.fail("generation.max_target_length", f"must be an integer >= 1 (tokens), got {mtl!r}")
        max_target = mtl
        record["generation"] = {"max_target_length": mtl}

    # ---- metrics
    metrics = tree.get("metrics", list(DEFAULT_METRICS[kind]))
    if isinstance(metrics, str):
        metrics = [metrics]
    if not isinstance(metrics, list) or not metrics:
        s.fail("metrics", f"a non-empty list from {', '.join(METRIC_MENU[kind])}, got {metrics!r}")
    every = [m for menu in METRIC_MENU.values() for m in menu]
    for m in metrics:
        if m not in every:
            s.fail("metrics", f"unknown metric {m!r}{_hint(m, every).replace('known keys', 'the menu')}")
        if m not in METRIC_MENU[kind]:
            s.fail("metrics", f"{m} does not fit a {kind} task (its metrics: {', '.join(METRIC_MENU[kind])})")
    if "f1_binary" in metrics and len(label_names) != 2:
        s.fail("metrics", f"f1_binary needs exactly two labels, this task has {len(label_names)}; use f1_macro")
    if len(set(metrics)) != len(metrics):
        s.fail("metrics", f"duplicate metrics: {metrics}")
    if "rouge_l" in metrics:
        try:
            import rouge_score  # noqa: F401
        except ImportError:
            s.fail("metrics", "rouge_l needs the rouge-score package: pip install rouge-score (or "
                              "pip install -e '.[rouge]')")
    record["metrics"] = list(metrics)

    # ---- split
    split = tree.get("split", SMALL)
    if split not in SPLIT_KINDS:
        s.fail("split", f"must be small, large or official, got {split!r}")
    record["split"] = split

    # ---- data
    data = s.mapping(tree.get("data"), "data", DATA_KEYS) if tree.get("data") is not None else \
        s.fail("data", "missing: give the files (data: {train: ..., validation: ..., columns: {...}})")
    needed = SPLIT_FILES[split]
    hub_source, hub_splits = (), {}
    if data.get("hub") is not None:  # a hub dataset (or a local dataset folder) instead of files
        given = [k for k in ("train", "validation", "test", "format") if data.get(k) is not None]
        if given:
            s.fail(f"data.{given[0]}", "give files (data.train, data.validation, ...) or data.hub, not both")
        h = s.mapping(data["hub"], "data.hub", HUB_KEYS)
        if not isinstance(h.get("path"), str) or not h["path"]:
            s.fail("data.hub.path", f"missing: the dataset's hub id or a local dataset folder, got {h.get('path')!r}")
        name_ = h.get("name")
        if name_ is not None and not isinstance(name_, str):
            s.fail("data.hub.name", f"must be the dataset's configuration name, got {name_!r}")
        splits_ = s.mapping(h.get("splits") or {}, "data.hub.splits", needed)
        for origin_split in needed:
            if not isinstance(splits_.get(origin_split), str):
                s.fail(f"data.hub.splits.{origin_split}", f"missing: split {split} reads the hub splits "
                                                          f"{' and '.join(needed)}, e.g. splits: {{train: train, "
                                                          "validation: validation}}")
        hub_path = h["path"]
        local = (Path(base_dir) if base_dir is not None else Path.cwd()) / Path(hub_path).expanduser()
        if local.is_dir():  # a local dataset folder (relative like data files): recorded absolute
            hub_path = str(local.resolve())
        hub_source, hub_splits = (hub_path, name_), {o: splits_[o] for o in needed}
    for origin_split in ("train", "validation", "test"):
        if hub_splits:
            break
        if origin_split in needed and not data.get(origin_split):
            s.fail(f"data.{origin_split}", f"missing: split {split} reads {' and '.join(needed)} files")
        if origin_split not in needed and data.get(origin_split):
            s.fail(f"data.{origin_split}", f"split {split} reads only {' and '.join(needed)} files (the "
                                           "validation file is the official dev set); use split: official to "
                                           "give your own test file")
    fmt = data.get("format")
    if fmt is not None and fmt not in FORMATS:
        s.fail("data.format", f"must be one of {', '.join(FORMATS)}, got {fmt!r}")
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    files, formats = {}, {}
    for origin_split in () if hub_splits else needed:
        raw = data[origin_split]
        if not isinstance(raw, str):
            s.fail(f"data.{origin_split}", f"must be a file path, got {raw!r}")
        path = Path(raw).expanduser()
        path = (path if path.is_absolute() else base / path).resolve()
        ext_fmt = EXTENSIONS.get(path.suffix.lower())
        this_fmt = fmt or ext_fmt
        if this_fmt is None:
            s.fail(f"data.{origin_split}", f"cannot tell the format of {path.name} (.jsonl, .csv, .tsv, .parquet); "
                                           "set data.format")
        files[origin_split], formats[origin_split] = str(path), this_fmt
    column_map = data.get("columns")
    if not isinstance(column_map, dict) or not column_map:
        s.fail("data.columns", "missing: map every column of the source template and label to the file's column "
                               f"names, e.g. columns: {{{', '.join(f'{c}: {c}' for c in columns)}, label: label}}")
    for ours, theirs in column_map.items():
        if not isinstance(theirs, str) or not theirs:
            s.fail(f"data.columns.{ours}", f"must name a column of the data files, got {theirs!r}")
    for col in columns:
        if col not in column_map:
            s.fail("source", f"the template names column {col!r}, which data.columns does not map (mapped: "
                             f"{', '.join(column_map)})")
    if "label" not in column_map:
        s.fail("data.columns.label", "missing: name the file's column holding the "
                                     + ("target text" if kind == GENERATION else "label"))
    for ours in column_map:
        if ours != "label" and ours not in columns:
            s.fail(f"data.columns.{ours}", f"not used by the source template (it names {', '.join(columns)})")
    if check_data:
        for origin_split, path in files.items():
            if not Path(path).is_file():
                s.fail(f"data.{origin_split}", f"file {path!r} does not exist")
            found = _file_columns(Path(path), formats[origin_split])
            if found is not None:
                lacking = [f"{ours} -> {theirs!r}" for ours, theirs in column_map.items() if theirs not in found]
                if lacking:
                    key = next(ours for ours, theirs in column_map.items() if theirs not in found)
                    s.fail(f"data.columns.{key}", f"{path} lacks the mapped column(s) {', '.join(lacking)} (its "
                                                  f"columns: {', '.join(found)})")
    record["data"] = {**files, "format": fmt, "columns": dict(column_map)} if fmt else \
        {**files, "columns": dict(column_map)}
    if hub_splits:
        record["data"] = {"hub": {"path": hub_source[0], "name": hub_source[1], "splits": dict(hub_splits)},
                          "columns": dict(column_map)}

    return SpecTask(
        name=name, fields=tuple((c, c) for c in columns), label_names=label_names, metrics=tuple(metrics),
        split_kind=split, local_dir="", local_files=dict(files) or {o: f"hub:{hub_splits[o]}" for o in needed},
        split_origins=_SPLIT_ORIGINS[split], hub=hub_source, hub_splits=hub_splits,
        is_regression=kind == REGRESSION, max_target_length=max_target, spec_kind=kind, template=template,
        target_names=target_names, value_range=value_range, grid=grid, files=files, formats=formats,
        column_map=dict(column_map), origin=origin, record=record)


def load_spec_file(path, check_data: bool = True) -> list:
    """The specs of one YAML file (one mapping, or a list of mappings)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"data.task_files: spec file {str(path)!r} does not exist")
    try:
        tree = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
    trees = tree if isinstance(tree, list) else [tree]
    if not trees:
        raise ConfigError(f"{path}: holds no task spec")
    base = path.resolve().parent
    return [parse_spec(t, f"{path}" + (f"[{i}]" if isinstance(tree, list) else ""), base, check_data)
            for i, t in enumerate(trees)]


# ---------------------------------------------------------------------------------------------- the registry
class TaskRegistry:
    """The built-in tasks plus some :class:`SpecTask` s; ``get(name)`` works for both."""

    def __init__(self, specs: Iterable[SpecTask] = ()):
        self.specs: dict = {}
        for spec in specs:
            if spec.name in self.specs:
                raise ConfigError(f"{spec.origin}: name: task {spec.name!r} is defined twice (also in "
                                  f"{self.specs[spec.name].origin})")
            self.specs[spec.name] = spec

    def get(self, name) -> Task:
        if isinstance(name, Task):
            return name
        key = str(name).strip()
        if key in self.specs:
            return self.specs[key]
        try:
            return get_task(key)
        except DataError:
            raise DataError(f"Unknown task {name!r}. Known tasks: {', '.join(sorted([*TASKS, *self.specs]))}"
                            + ("" if self.specs else " (tasks of your own: data.task_specs or data.task_files)")
                            + ".") from None

    def records(self, names: Optional[Iterable[str]] = None) -> dict:
        """``{name: full spec}`` of the spec tasks among ``names`` (all when None)."""
        wanted = self.specs if names is None else [n for n in names if n in self.specs]
        return {n: json.loads(json.dumps(self.specs[n].record)) for n in wanted}

    def merged(self, other: "TaskRegistry") -> "TaskRegistry":
        """This registry plus ``other``'s specs that it lacks."""
        return TaskRegistry([*self.specs.values(), *(s for n, s in other.specs.items() if n not in self.specs)])

    @classmethod
    def from_records(cls, records: Optional[Mapping], origin: str = "export.json") -> "TaskRegistry":
        """A registry from recorded specs (an export's ``task_specs``); the data files are not checked."""
        if not records:
            return cls()
        if not isinstance(records, Mapping):
            raise ConfigError(f"{origin}: task_specs must be a mapping of task name -> spec")
        return cls(parse_spec(dict(rec), f"{origin} task_specs.{name}", check_data=False)
                   for name, rec in records.items())


def build_registry(task_specs: Optional[list] = None, task_files: Optional[list] = None,
                   check_data: bool = True) -> TaskRegistry:
    """A registry of the built-in tasks plus the specs of a run config's ``data.task_specs`` and
    ``data.task_files``."""
    specs = []
    for key, value in (("data.task_specs", task_specs), ("data.task_files", task_files)):
        if value is not None and not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
    for i, tree in enumerate(task_specs or []):
        specs.append(parse_spec(tree, f"data.task_specs[{i}]", None, check_data))
    for path in task_files or []:
        if not isinstance(path, str):
            raise ConfigError(f"data.task_files: {path!r} is not a file path")
        specs.extend(load_spec_file(path, check_data))
    return TaskRegistry(specs)


def registry_from_config(data_cfg: Any, check_data: bool = True) -> TaskRegistry:
    """The registry of a run config's ``data`` section (a ``DataConfig`` or its dict)."""
    get = data_cfg.get if isinstance(data_cfg, Mapping) else (lambda k, d=None: getattr(data_cfg, k, d))
    return build_registry(get("task_specs", None), get("task_files", None), check_data)


def registry_for_export(path) -> TaskRegistry:
    """The registry of an export: the built-in tasks plus the specs its ``export.json`` records."""
    try:
        info = json.loads((Path(path) / "export.json").read_text())
    except (OSError, ValueError):
        return TaskRegistry()
    return TaskRegistry.from_records(info.get("task_specs") if isinstance(info, dict) else None,
                                     f"{Path(path) / 'export.json'}")


__all__ = ["SpecTask", "TaskRegistry", "parse_spec", "load_spec_file", "build_registry", "registry_from_config",
           "registry_for_export", "METRIC_MENU", "KINDS", "CLASSIFICATION", "REGRESSION", "GENERATION", "FORMATS"]
