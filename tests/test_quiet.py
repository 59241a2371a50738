"""Quiet by default, and scoped: what hyperscale switches off for its own calls (warning filters, a logger filter,
DS_ACCELERATOR, Hugging Face progress bars) is back as it was when the call returns (issue 20)."""
from __future__ import annotations

import logging
import os
import sys
import warnings

import pytest

from hyperscale.cli import main
from hyperscale.training.logging import hidden_output, quiet_known_noise, third_party_quiet


def _bars() -> tuple:
    from datasets.utils import logging as datasets_logging
    from transformers.utils import logging as transformers_logging

    hub = sys.modules["huggingface_hub.utils.tqdm"]
    return (datasets_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled(),
            dict(hub.progress_bar_states))


def test_the_cli_called_from_python_leaves_no_setting_behind(monkeypatch, capsys):
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    filters = list(warnings.filters)
    ds_filters = list(logging.getLogger("DeepSpeed").filters)
    bars = _bars()
    assert main(["params", "--backbone", "t5-tiny", "--tasks", "2"]) == 0
    assert main(["params", "--tasks", "0"]) == 2  # an error on the way out restores them too
    capsys.readouterr()
    assert warnings.filters == filters
    assert logging.getLogger("DeepSpeed").filters == ds_filters
    assert "DS_ACCELERATOR" not in os.environ
    assert _bars() == bars


def test_quiet_known_noise_keeps_a_given_accelerator(monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cuda")
    with quiet_known_noise():
        assert os.environ["DS_ACCELERATOR"] == "cuda"
    assert os.environ["DS_ACCELERATOR"] == "cuda"


@pytest.mark.parametrize("verbose", [False, True])
def test_third_party_quiet_restores_the_progress_bars(verbose: bool):
    before = _bars()
    with third_party_quiet(verbose=verbose):
        inside = _bars()
        assert inside[:2] == (verbose, verbose)  # datasets' and transformers' bars off, or on with verbose
        with third_party_quiet(verbose=not verbose):  # nested: the inner block decides, the outer comes back
            assert _bars()[:2] == (not verbose, not verbose)
        assert _bars() == inside
        assert inside[2] == before[2]  # Hub downloads keep theirs
    assert _bars() == before


def test_hidden_output_hides_unless_verbose_and_shows_on_failure(capsys):
    with hidden_output():
        print("DeepSpeed banner")
    assert "banner" not in capsys.readouterr().out
    with third_party_quiet(verbose=True), hidden_output():
        print("DeepSpeed banner")
    assert "banner" in capsys.readouterr().out
    with pytest.raises(RuntimeError), hidden_output():
        print("what led to the failure")
        raise RuntimeError("boom")
    assert "what led to the failure" in capsys.readouterr().err
