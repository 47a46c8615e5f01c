"""``python -m tase_loss.experiments``: see :mod:`tase_loss.experiments.cli`."""

import sys

from tase_loss.experiments.cli import main

if __name__ == "__main__":
    sys.exit(main())
