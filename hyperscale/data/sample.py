"""The small real GLUE/SuperGLUE sample shipped inside the package.

``hyperscale/resources/glue_sample/`` has the same layout as ``shared/data``
(``glue/<TASK>/{train,dev}.tsv``, ``superglue/CB/{train,val}.jsonl``), so the
one loader reads it (``load_task_splits(task, data_dir=None)`` uses it).

Every file is a byte-for-byte prefix of the full file: the header line (if
any) followed by the first rows, chosen without looking at the content
(:data:`SAMPLE_ROWS`). SST-2 keeps 1,300 training rows so that the
large-task protocol (1,000 rows held out as validation) leaves 300 for
training. :func:`build_sample` regenerates the folder from ``shared/data``;
``SOURCES.md`` in the folder gives the origin and licences.
"""

from __future__ import annotations

from pathlib import Path

RESOURCES_DIR = Path(__file__).resolve().parents[1] / "resources"
SAMPLE_DIR = RESOURCES_DIR / "glue_sample"

SAMPLE_TASKS = ("rte", "mrpc", "sst2", "cola", "stsb", "cb")

#: file (relative to the data root) -> (has a header line, data rows kept).
SAMPLE_ROWS = {
    "glue/RTE/train.tsv": (True, 300),
    "glue/RTE/dev.tsv": (True, 200),
    "glue/MRPC/train.tsv": (True, 300),
    "glue/MRPC/dev.tsv": (True, 200),
    "glue/SST-2/train.tsv": (True, 1300),
    "glue/SST-2/dev.tsv": (True, 200),
    "glue/CoLA/train.tsv": (False, 300),
    "glue/CoLA/dev.tsv": (False, 200),
    "glue/STS-B/train.tsv": (True, 300),
    "glue/STS-B/dev.tsv": (True, 200),
    "superglue/CB/train.jsonl": (False, 250),
    "superglue/CB/val.jsonl": (False, 56),
}


def sample_data_dir() -> Path:
    """Root of the shipped sample (pass it as ``data_dir``)."""
    return SAMPLE_DIR


def _prefix(data: bytes, n_lines: int) -> bytes:
    """The first ``n_lines`` lines of ``data`` (all of it if it has fewer)."""
    end = 0
    for _ in range(n_lines):
        nxt = data.find(b"\n", end)
        if nxt < 0:
            return data
        end = nxt + 1
    return data[:end]


def build_sample(source_dir, out_dir=None) -> list:
    """Write the sample files from the full data in ``source_dir`` (a
    ``shared/data``-like root) into ``out_dir`` (default: the package's sample
    folder). Returns the written paths."""
    source_dir = Path(source_dir)
    out_dir = Path(out_dir) if out_dir is not None else SAMPLE_DIR
    written = []
    for rel, (header, rows) in SAMPLE_ROWS.items():
        data = (source_dir / rel).read_bytes()
        target = out_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(_prefix(data, rows + (1 if header else 0)))
        written.append(target)
    return written


__all__ = ["SAMPLE_DIR", "SAMPLE_TASKS", "SAMPLE_ROWS", "sample_data_dir", "build_sample"]
