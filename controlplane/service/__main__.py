"""`python -m controlplane.service ...` = `callroute controlplane ...` (tests start replicas this way)."""

import sys

from controlplane.cli.services import controlplane_main

sys.exit(controlplane_main())
