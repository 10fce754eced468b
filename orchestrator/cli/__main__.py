"""`python -m orchestrator.cli`: the `hsjp-study` command."""

import sys

from orchestrator.cli.main import main

sys.exit(main())
