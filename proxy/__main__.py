"""`python -m proxy ...` is the same as `sluicegate ...`."""
import sys

from .cli import main

sys.exit(main())
