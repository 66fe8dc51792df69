"""`python -m usclf.cli` (and `torchrun -m usclf.cli`): the `usclf` command."""
import sys

from . import main

sys.exit(main())
