"""The README's Python example runs as written, and its set-up commands are the ones CI uses."""
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

from transformers import T5Config, T5ForConditionalGeneration

ROOT = Path(__file__).resolve().parents[1]


def _readme_python_example(tmp_path: Path) -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python example"
    return blocks[0].replace("/tmp/", str(tmp_path) + "/")


def _env_without_pythonpath() -> dict:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_readme_python_example_runs(tmp_path, monkeypatch):
    code = _readme_python_example(tmp_path)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert (tmp_path / "my-hyperformer" / "model.safetensors").is_file()
    assert namespace["model"].tasks == ["rte", "mrpc", "cola"]


def test_ci_runs_the_readme_test_command():
    text = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    install, tests = commands[0].strip(), commands[1].strip()
    assert "hyperscale train" in install and "pip install" in install
    test_cmd = tests.split("&&")[-1].strip()
    assert test_cmd in (ROOT / ".ci" / "run").read_text()


def test_readme_python_example_runs_beside_a_checkout_named_hyperscale(tmp_path):
    """Saved in the folder that holds the clone (``hyperscale/``, no ``__init__.py``), the snippet must import the
    installed package, not take the clone for a namespace package (issue 20)."""
    parent = tmp_path / "work"
    parent.mkdir()
    (parent / "hyperscale").symlink_to(ROOT, target_is_directory=True)
    (parent / "example.py").write_text(_readme_python_example(tmp_path / "files") + "\nprint('README example ok')\n")
    (tmp_path / "files").mkdir()
    r = subprocess.run([sys.executable, "example.py"], cwd=parent, env=_env_without_pythonpath(),
                       capture_output=True, text=True, timeout=600)
    hint = "(an editable install from before setup.py's package_dir? rerun `pip install -e .`)"
    assert r.returncode == 0, f"{hint}\n{r.stdout}\n{r.stderr}"
    assert "README example ok" in r.stdout


def test_fresh_editable_install_wins_over_a_checkout_in_the_working_directory(tmp_path):
    """What ``pip install -e .`` makes of setup.py, in a throwaway environment: a path entry to the checkout (a
    regular package on sys.path beats the namespace package the working directory offers), not setuptools'
    import hook for flat layouts, which Python asks only after the working directory."""
    checkout = tmp_path / "work" / "hyperscale"  # a checkout of this project named hyperscale
    checkout.mkdir(parents=True)
    (checkout / "setup.py").write_text((ROOT / "setup.py").read_text())
    (checkout / "hyperscale").symlink_to(ROOT / "hyperscale", target_is_directory=True)
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta; "
                            "print(build_meta.build_editable(sys.argv[1]))", str(wheels)],
                           cwd=checkout, env=_env_without_pythonpath(), capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    import zipfile

    with zipfile.ZipFile(next(wheels.glob("*.whl"))) as whl:  # installing a wheel is unpacking it into site
        whl.extractall(site)
    pth = [p.read_text() for p in site.glob("*.pth")]
    assert pth == [str(checkout) + "\n"] or pth == [str(checkout)], pth
    # this environment's dependencies (torch, transformers...), as a plain path: its own .pth files (the
    # editable install under test here) are not processed
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = subprocess.run([str(python), "-c", "from hyperscale import HyperscaleModel, default_tokenizer; "
                        "import hyperscale; print(hyperscale.__file__)"],
                       cwd=checkout.parent, env=_env_without_pythonpath(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert Path(r.stdout.strip()) == checkout / "hyperscale" / "__init__.py"


def test_the_python_api_does_not_import_deepspeed(tmp_path):
    """Building, running, saving and reloading a model never imports DeepSpeed, so the API prints none of its
    banners ("Setting accelerator to CPU" without a GPU) and stays light. (In the README example, transformers'
    own ``save_pretrained`` of the plain T5 imports it, through accelerate: that line is not hyperscale's.)"""
    code = f"""
import sys, torch
from hyperscale import HyperscaleModel
model = HyperscaleModel.from_backbone("preset:t5-tiny", tasks=["rte", "cb"], reduction_factor=8)
ids = torch.randint(2, 100, (2, 5))
model(ids, torch.ones_like(ids), labels=ids[:, :2].contiguous(), task_ids=["rte", "cb"]).loss.backward()
model.generate(ids, attention_mask=torch.ones_like(ids), task_ids="rte", max_new_tokens=2)
model = HyperscaleModel.from_backbone({str(tmp_path / "t5")!r}, tasks=["rte", "cb"], reduction_factor=8)
model.save_pretrained({str(tmp_path / "m")!r})
HyperscaleModel.from_pretrained({str(tmp_path / "m")!r}).materialize()
print(sorted(m for m in sys.modules if m.split(".")[0] == "deepspeed"))
"""
    env = {k: v for k, v in _env_without_pythonpath().items() if k != "DS_ACCELERATOR"}
    # the plain T5 is saved by transformers alone, here (its save_pretrained may import DeepSpeed through accelerate:
    # not in the process under test); one process start-up fewer than a process of its own
    T5ForConditionalGeneration(T5Config(d_model=32, d_ff=64, d_kv=8, num_heads=2, num_layers=1, vocab_size=32128,
                                        decoder_start_token_id=0)).save_pretrained(str(tmp_path / "t5"))
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout
    assert "Setting accelerator" not in r.stdout + r.stderr
