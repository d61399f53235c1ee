"""`python -m dhrd ...` is the `dhrd` command (also what `torchrun -m dhrd train ...` runs)."""
import sys

from dhrd.cli import main

sys.exit(main())
