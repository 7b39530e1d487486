"""What a test needs from the machine (a reference broker, a client tool, root).

In CI (`CI=true`, as `.ci/run` runs) a missing requirement fails the test: a suite that passes
by skipping proves nothing. On a developer's machine it skips with the reason, so one missing
package does not hide every other result.
"""

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(reason: str):
    """Stops the test because something it needs is not there (see the module docstring)."""
    if in_ci():
        pytest.fail(f"required in CI: {reason}", pytrace=False)
    pytest.skip(reason)

