"""Entry point for `python -m cnnlab`."""

import sys

from cnnlab.cli import main

sys.exit(main())
