"""``python -m tunesmith.cli ARGS``: the same as the `tunesmith` command."""
import sys

from .main import main

sys.exit(main())
