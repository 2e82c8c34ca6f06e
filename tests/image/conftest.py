"""The appliance boot test reuses the end-to-end harness (PostgreSQL, OpenID provider)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
