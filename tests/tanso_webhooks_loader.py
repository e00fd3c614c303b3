"""Makes the first-party webhooks plugin importable from the source tree (CI installs
only tanso-mcp itself); the entry-point registration is simulated by the tests."""

import sys
from pathlib import Path

_SRC = Path(__file__).resolve().parent.parent / "plugins" / "tanso-webhooks"
if str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))
