"""`python -m controlplane.service ...` = `callroute controlplane ...` (tests start replicas this way)."""

import sys

from .server import main

sys.exit(main())
