"""``python -m flynn.router``: see :mod:`flynn.router.daemon`."""

import sys

from flynn.router.daemon import main

sys.exit(main())
