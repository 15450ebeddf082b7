"""External programs Lethe runs (Prometheus, promtool): on ``PATH``, or beside this Python,
where ``make setup`` unpacks them when it may not install system packages."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def find_tool(name: str) -> str | None:
    """The path of ``name`` on ``PATH`` or in this interpreter's ``bin`` folder (the
    virtual environment's, even when it is not activated)."""
    found = shutil.which(name)
    if found is not None:
        return found
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None
