"""``python -m sift_tui``: the same as the ``sift-tui`` command."""

import sys

from sift_tui.app import main

sys.exit(main())
