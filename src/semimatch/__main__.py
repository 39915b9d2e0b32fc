"""``python -m semimatch`` (and ``torchrun -m semimatch train ...``)."""

import sys

from semimatch.cli import main

sys.exit(main())
