"""What the differential suites (tests/amqp against RabbitMQ, tests/kafka_differential against
Apache Kafka) share: choosing the targets, a reference node's log tail, one-sided tests."""

import os
from pathlib import Path

import pytest


def selected_targets(variable: str, all_targets: tuple[str, ...]) -> list[str]:
    """The targets named in the environment `variable` (a comma list), default all."""
    raw = os.environ.get(variable, ",".join(all_targets))
    targets = [t.strip() for t in raw.split(",") if t.strip()]
    unknown = [t for t in targets if t not in all_targets]
    if unknown or not targets:
        raise pytest.UsageError(f"{variable}={raw!r}: expected a comma list of "
                                f"{', '.join(all_targets)}")
    return targets


def log_tail(paths: list[Path], lines: int, nothing: str) -> str:
    """The last `lines` of each of a reference node's logs, or `nothing` if none was written."""
    parts = []
    for path in paths:
        try:
            text = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            continue
        parts.append(f"-- {path}:\n" + "\n".join(text))
    return "\n".join(parts) or nothing


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
