"""``python -m cytoprofile``: the same entry point as the ``cytoprofile`` command."""

import sys

from .entry import main

if __name__ == "__main__":
    sys.exit(main())
