"""Bad input meets one handler everywhere: ``hyperscale train`` and ``python -m hyperscale.train`` (one process,
and two ranks started as srun starts them: plain processes with RANK/WORLD_SIZE set) print the same single
``hyperscale: error: ...`` line, once, with no traceback, and exit with status 2. The inputs are what a new user
gets wrong: config keys and values, config files, task names, data and backbone paths, run directories."""
from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "training"))
from training_helpers import TINY, run_env  # noqa: E402

from hyperscale.launch import find_free_port  # noqa: E402

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
# two ranks: one case per place a run can be refused (parsing the config before the group exists, the run directory,
# the checkpoint, the data, the backbone, the hub); the other config-parsing cases take the same path as unknown-key
ON_TWO_RANKS = {"unknown-key", "run-exists", "resume-missing", "missing-data-dir", "missing-backbone", "hub-backbone"}


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


def _launch(mode: str, args: list[str], out: Path) -> tuple[list[int], str]:
    env = run_env()
    if not any(a.startswith("output_dir=") for a in args):  # each launch its own run directory
        args = [*args, f"output_dir={out / 'run'}"]
    if mode == "hyperscale-train":
        cmds = [[sys.executable, "-m", "hyperscale.cli", "train", *args]]
        envs = [env]
    elif mode == "python-m-train":
        cmds, envs = [[sys.executable, "-m", "hyperscale.train", *args]], [env]
    else:
        port = str(find_free_port())
        cmds = [[sys.executable, "-m", "hyperscale.train", *args]] * 2
        envs = [dict(env, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
                for r in range(2)]
    procs = [subprocess.Popen(c, cwd=REPO, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c, e in zip(cmds, envs)]
    texts = [p.communicate(timeout=240)[0] for p in procs]
    return [p.returncode for p in procs], "".join(texts)


@pytest.fixture(scope="module")
def outcomes(scratch: Path) -> dict:
    jobs = {}
    for case_id, args, _ in CASES:
        for mode in _modes(case_id):
            out = scratch / f"{case_id}-{mode}"
            out.mkdir()
            concrete = [a.replace("{tmp}", str(scratch)) for a in args]
            jobs[(case_id, mode)] = (concrete, out)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {key: pool.submit(_launch, key[1], list(a), out) for key, (a, out) in jobs.items()}
        return {key: f.result() for key, f in futures.items()}


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
