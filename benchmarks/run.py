#!/usr/bin/env python3
"""Thin entry point: ``python benchmarks/run.py [options]`` == ``hyperscale bench [options]``.

Works from a source checkout without installing hyperscale (the repository root is put on sys.path).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hyperscale.bench import build_arg_parser, run_from_args  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_from_args(build_arg_parser("benchmarks/run.py").parse_args()))
