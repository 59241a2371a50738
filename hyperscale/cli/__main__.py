"""``python -m hyperscale.cli``: the same as the ``hyperscale`` command."""
import sys

from . import main

sys.exit(main())
