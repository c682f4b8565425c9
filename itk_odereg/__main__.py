"""``python -m itk_odereg``: the ``itk-odereg`` command line (see :mod:`itk_odereg.cli`)."""
from __future__ import annotations

import sys

from .cli import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
