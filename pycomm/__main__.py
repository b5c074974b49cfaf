"""``python -m pycomm`` runs the command line."""

import sys

from pycomm.cli import main

sys.exit(main())
