"""``python -m proxy``: the ``tersegate`` command."""

import sys

from proxy.cli.main import main

sys.exit(main())
