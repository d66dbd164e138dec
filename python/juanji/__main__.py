"""``python -m juanji ...`` runs the ``juanji`` command."""

import sys

from .cli import main

sys.exit(main())
