"""``train.compile``: the compiled training step gives the eager losses, resumes exactly, and compiles few graphs.

The compiled runs use the aot_eager backend (Dynamo's graph capture and AOTAutograd's joint forward/backward,
which is what inductor compiles): the same graphs, without inductor's code generation, which takes about a
minute per run on 2 CPU cores. Inductor itself is measured in benchmarks/NOTES.md ("torch.compile on CPU").
The compiled runs pad lengths to multiples of 32 (the default bucket under train.compile), the eager runs do
not: padding is masked, so the losses agree to float rounding. The trainer's compiled runs are ZeRO-2 on 2 ranks
(DeepSpeed's gradient hooks around the compiled graphs, a checkpoint and a resume); one process without DeepSpeed,
across sequence lengths and task mixes, is tests/modeling/test_compile.py's.
"""
from __future__ import annotations

import re

import pytest

from training_helpers import RESUME_STEP

pytestmark = pytest.mark.distributed
TOLERANCE = 1e-5  # relative, per step: float rounding of different (fused, padded) but equal computations
MAX_GRAPHS = 4  # tiny-cpu: sources up to 64 tokens, targets up to 8: at most 2 x 1 length buckets, plus slack


def _graphs(log_text: str) -> int:
    m = re.search(r"torch\.compile \(aot_eager\): (\d+) graph\(s\) compiled", log_text)
    assert m, "the compiled run did not report its graphs"
    return int(m.group(1))


def test_compiled_training_gives_the_eager_losses(runs):
    eager, compiled = "fp32-z2", "fp32-z2-compiled"
    a, b = runs(eager).losses(), runs(compiled).losses()
    assert a.keys() == b.keys() and len(a) == 12
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=TOLERANCE), step
    assert a[12] < a[1]  # and it trains
    assert 1 <= _graphs(runs(compiled).log.read_text()) <= MAX_GRAPHS


def test_a_resumed_compiled_run_matches_the_uninterrupted_one(runs):
    full = runs("fp32-z2-compiled").losses()
    resumed = runs("fp32-z2-compiled-resumed").losses()
    assert sorted(resumed) == list(range(1, 13))
    for step in range(RESUME_STEP + 1, 13):
        assert resumed[step] == pytest.approx(full[step], rel=1e-6), step
