"""``python -m convdsl``: the same command line as the ``convdsl`` script."""

import sys

from convdsl.cli import main

sys.exit(main())
