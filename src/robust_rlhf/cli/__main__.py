"""`python -m robust_rlhf.cli` (used under `torchrun` / `accelerate launch`)."""

import sys

from robust_rlhf.cli import main

sys.exit(main())
