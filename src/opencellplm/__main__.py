"""``python -m opencellplm`` (and ``torchrun -m opencellplm``) runs the command line."""

import sys

from .cli import main

sys.exit(main())
