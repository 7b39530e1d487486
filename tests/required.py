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


def deselect_one_sided(config, items, marker: str, fixture: str):
    """Deselects a one-sided test (marked `marker(target, ...)`) for the targets of the
    parametrized `fixture` it does not name, rather than skipping it there, so that the skip
    count of a differential suite means only what is missing."""
    keep, drop = [], []
    for item in items:
        only = item.get_closest_marker(marker)
        param = getattr(getattr(item, "callspec", None), "params", {}).get(fixture)
        if only is not None and param is not None and param not in only.args:
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
