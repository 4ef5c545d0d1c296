"""`python -m minift ...`: the same as the `minift` command."""
import sys

from .app.cli import main

sys.exit(main())
