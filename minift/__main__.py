"""`python -m minift ...`: the same as the `minift` command."""
import sys

from .cli import main

sys.exit(main())
