"""The public top-level API: ``from hyperscale import HyperscaleModel, HyperscaleConfig, RunConfig, load_config``."""
import subprocess
import sys

import hyperscale


def test_every_public_name_resolves():
    for name in hyperscale.__all__:
        assert getattr(hyperscale, name) is not None, name
    from hyperscale import HyperscaleConfig, HyperscaleModel, RunConfig, load_config  # noqa: F401
    from hyperscale.modeling.model import HyperscaleModel as M
    assert hyperscale.HyperscaleModel is M
    assert issubclass(hyperscale.ConfigError, hyperscale.HyperscaleError)
    assert set(dir(hyperscale)) >= set(hyperscale.__all__)


def test_importing_the_package_stays_light():
    """Launch helpers (``hyperscale.launch``) import the package: it must not pull in torch or DeepSpeed."""
    code = "import sys, hyperscale, hyperscale.launch; print(sorted(m for m in ('torch', 'deepspeed', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
