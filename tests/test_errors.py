"""Bad input meets one handler everywhere: ``hyperscale train`` and ``python -m hyperscale.train`` (one process,
and two ranks started as srun starts them: plain processes with RANK/WORLD_SIZE set) print the same single
``hyperscale: error: ...`` line, once, with no traceback, and exit with status 2. The inputs are what a new user
gets wrong: config keys and values, config files, task names, data and backbone paths, run directories.

The one-process cases of each entry point run one after another in one process (its ``main(argv)``, see
helpers.run_cases): the handler is under test, not the interpreter's start-up; the two-rank cases are real
launches."""
from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers import REPO, TINY, rank_envs, run_cases

pytestmark = pytest.mark.distributed

# (id, arguments after the command, text the one error line must contain); {tmp} is a scratch directory
CASES = [
    ("unknown-key", [str(TINY), "train.max_stepz=5"], "did you mean 'max_steps'"),
    ("bad-integer", [str(TINY), "train.max_steps=abc"], "command-line override: train.max_steps must be an integer"),
    ("bad-choice", [str(TINY), "train.precision=fp8"], "train.precision must be bf16, fp32 or fp16"),
    ("missing-config", ["{tmp}/nope.yaml"], "nope.yaml"),
    ("broken-yaml", ["{tmp}/broken.yaml"], "broken.yaml"),
    ("unknown-task", [str(TINY), "data.tasks=[rte,nosuch]"], "Unknown task 'nosuch'"),
    ("missing-data-dir", [str(TINY), "data.data_dir={tmp}/no-data"], "is not a directory"),
    ("missing-backbone", [str(TINY), "model.backbone={tmp}/no-model"], "does not exist"),
    ("run-exists", [str(TINY), "output_dir={tmp}/existing"], "already holds a run"),
    ("resume-missing", [str(TINY), "--resume", "{tmp}/no-checkpoint"], "no complete hyperscale checkpoint"),
    # offline (the tests run with HF_HUB_OFFLINE=1): a hub backbone or hub data is one line, no retries
    ("hub-backbone", [str(TINY), "model.backbone=google-t5/t5-small"], "use a local copy"),
    ("hub-data", [str(TINY), "data.data_dir=hub"], "use data.data_dir=sample"),
]
MODES = ["hyperscale-train", "python-m-train", "two-ranks"]
# `hyperscale train` is `python -m hyperscale.train` behind the subcommand table: a few cases show that it says the
# same (every case there too launched 12 more processes, ~40 s, to test the same handler again)
VIA_CLI = {"unknown-key", "missing-config", "missing-backbone", "run-exists", "hub-data"}
# two ranks: a refusal while parsing the config (before the process group exists), one at the run directory (rank 0
# alone checks it, after the group exists) and one at a path the run reads on every rank; the other cases take one
# of these paths on two ranks (three more two-rank launches here took ~25 s of CI)
ON_TWO_RANKS = {"unknown-key", "run-exists", "missing-backbone"}


def _modes(case_id: str) -> list[str]:
    wanted = {"python-m-train"} | ({"hyperscale-train"} if case_id in VIA_CLI else set()) | (
        {"two-ranks"} if case_id in ON_TWO_RANKS else set())
    return [m for m in MODES if m in wanted]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "broken.yaml").write_text("train: {max_steps: 3\n  lr: [\n")
    (tmp / "existing").mkdir()
    (tmp / "existing" / "train_log.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    return tmp


def _with_run_dir(args: list[str], out: Path) -> list[str]:
    if any(a.startswith("output_dir=") for a in args):
        return args
    return [*args, f"output_dir={out / 'run'}"]  # each launch its own run directory


def _two_ranks(args: list[str]) -> tuple[list[int], str]:
    procs = [subprocess.Popen([sys.executable, "-m", "hyperscale.train", *args], cwd=REPO, env=e,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for e in rank_envs(2)]
    texts = [p.communicate(timeout=240)[0] for p in procs]
    return [p.returncode for p in procs], "".join(texts)


def _one_process(mode: str, jobs: dict, workdir: Path) -> dict:
    """Every case of a one-process mode in one plain process (helpers.run_cases): ``python -m hyperscale.train``
    is ``hyperscale.train.main(argv)``, ``hyperscale train`` is ``hyperscale.cli.main(["train", *argv])``; each case
    still gets a fresh run directory and its own output (one process start-up instead of 17)."""
    module, prefix = {"python-m-train": ("hyperscale.train", []), "hyperscale-train": ("hyperscale.cli", ["train"])}[mode]
    cases = {case_id: (module, [*prefix, *args]) for (case_id, m), (args, _) in jobs.items() if m == mode}
    return {(case_id, mode): ([rc], text) for case_id, (rc, text) in run_cases(cases, workdir / mode).items()}


@pytest.fixture(scope="module")
def outcomes(scratch: Path) -> dict:
    """The one-process modes in two processes, at the same time as the two-rank launches (one at a time)."""
    jobs = {}
    for case_id, args, _ in CASES:
        for mode in _modes(case_id):
            out = scratch / f"{case_id}-{mode}"
            out.mkdir()
            jobs[(case_id, mode)] = (_with_run_dir([a.replace("{tmp}", str(scratch)) for a in args], out), out)
    with ThreadPoolExecutor(max_workers=2) as pool:
        one = [pool.submit(_one_process, mode, jobs, scratch) for mode in ("python-m-train", "hyperscale-train")]
        two = {key: pool.submit(_two_ranks, args) for key, (args, _) in jobs.items() if key[1] == "two-ranks"}
        results = {k: v for f in one for k, v in f.result().items()}
        results.update({key: f.result() for key, f in two.items()})
    return results


RUNS = [(c, m) for c in CASES for m in _modes(c[0])]


@pytest.mark.parametrize("case, mode", RUNS, ids=[f"{c[0]}-{m}" for c, m in RUNS])
def test_bad_input_gives_one_line_and_exit_2(outcomes, case, mode):
    case_id, args, expected = case
    codes, text = outcomes[(case_id, mode)]
    lines = [ln for ln in text.splitlines() if "hyperscale: error:" in ln]
    assert codes == [2] * len(codes), f"exit codes {codes}\n{text[-3000:]}"
    assert len(lines) == 1, f"expected the error once, got {len(lines)}:\n{text[-3000:]}"
    assert lines[0].startswith("hyperscale: error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in text, text[-3000:]


@pytest.mark.parametrize("case_id", [c[0] for c in CASES])
def test_every_entry_point_says_the_same(outcomes, case_id):
    said = {mode: [ln for ln in outcomes[(case_id, mode)][1].splitlines() if "hyperscale: error:" in ln]
            for mode in _modes(case_id)}
    normalised = {m: [ln.replace(str(Path.cwd()), "") for ln in v] for m, v in said.items()}
    assert len({tuple(v) for v in normalised.values()}) == 1, said
