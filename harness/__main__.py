"""`python -m harness` (what torchrun starts in each process: `torchrun --nproc-per-node N -m harness run SPEC`)."""

import sys

from harness.cli import main

sys.exit(main())
