"""`python -m tinystories.cli ...` (what torchrun runs)."""

import sys

from tinystories.cli import main

sys.exit(main())
