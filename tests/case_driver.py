"""``python tests/case_driver.py CASES.json RESULT.json``: run entry-point calls one after another in this process
(see helpers.run_cases). CASES.json is ``{name: [module, argv, out, err]}``: ``module.main(argv)`` runs with its
stdout sent to ``out`` and its stderr to ``err`` (file descriptors 1 and 2, so that C-level and subprocess output is
caught too); RESULT.json gets ``{name: exit status}`` (an exception that escapes ``main`` counts as status 1, its traceback
in that case's log)."""
import importlib
import json
import os
import sys
import traceback
from pathlib import Path


def run_case(module: str, argv: list, out: str, err: str) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(out, "w") as fo, open(err, "w") as fe:
        os.dup2(fo.fileno(), 1)
        os.dup2(fe.fileno(), 2)
        try:
            rc = importlib.import_module(module).main(argv)
        except SystemExit as e:  # argparse's --help, or a main that exits itself
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # noqa: BLE001 - reported as the case's failure, the next case still runs
            traceback.print_exc()
            rc = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
    return rc


def main() -> None:
    cases = json.loads(Path(sys.argv[1]).read_text())
    codes = {}
    for name, (module, argv, out, err) in cases.items():
        codes[name] = run_case(module, argv, out, err)
        print(f"case {name}: exit {codes[name]}", flush=True)
    Path(sys.argv[2]).write_text(json.dumps(codes))


if __name__ == "__main__":
    main()
