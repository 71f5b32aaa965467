"""`python -m controlplane.cli ...` = `callroute ...` (tests, up and the chaos harness start processes so)."""

import sys

from controlplane.cli import main

sys.exit(main())
