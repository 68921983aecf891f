"""Where the roamlink under test lives, so subprocesses run the same variant.

The suite runs against an installed roamlink (compiled with mypyc, or pure Python) or against
``src/`` (``PYTHONPATH=src``). A subprocess started by a test must import the same one, so its
``PYTHONPATH`` names the folder this process imported roamlink from, never ``src/`` blindly.
"""

from __future__ import annotations

from pathlib import Path

import roamlink

#: The folder holding the ``roamlink`` package this test process imported.
PACKAGE_PARENT = str(Path(roamlink.__file__).resolve().parents[1])
#: ``src/roamlink`` in the checkout: scripts that tests run by path (``testing/netpeer.py``).
REPO_ROOT = Path(__file__).resolve().parents[2]
