"""``python -m dinolab``: the same command line as the ``dinolab`` console script."""

import sys

from dinolab.cli import main

if __name__ == "__main__":
    sys.exit(main())
