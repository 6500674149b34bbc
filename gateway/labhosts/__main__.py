from __future__ import annotations

import sys

from gateway.labhosts.server import main

sys.exit(main())
