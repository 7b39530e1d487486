"""The history of a nemesis run: one JSON object per line, in the order the runner observed the
events (one lock orders every writer), each with `type` and `t` (seconds since the run began).

Event types and their fields (checker.py reads them):

    send     producer, partition, seq, value            a produce was issued
    ack      producer, partition, seq, value, offset    acknowledged (acks=all)
    fail     producer, partition, seq, value, error     not acknowledged: may or may not be stored
    read     reader, partition, offset, value           an independent reader (no group) saw it
    process  group, member, partition, offset, value    a group member consumed it
    commit   group, member, partition, offset           a synchronous commit succeeded
    nemesis  phase (start|heal), fault, nodes           a fault began or was healed
    final    partition, offset, value                   the final full read, record by record
    final_done  partitions, end_offsets                 the final read is complete
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path


class History:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w", encoding="utf-8")
        # Re-entrant: a client callback can run inside record() on the same thread (a
        # confluent-kafka producer finalized by the garbage collector serves its delivery
        # reports), and with a plain lock that thread would wait for itself forever.
        self._lock = threading.RLock()
        self._started = time.monotonic()
        self.counts: dict[str, int] = {}

    def record(self, event_type: str, **fields):
        with self._lock:
            if self._file.closed:
                return
            event = {"type": event_type, "t": round(time.monotonic() - self._started, 6)}
            event.update(fields)
            self._file.write(json.dumps(event, separators=(",", ":")) + "\n")
            self.counts[event_type] = self.counts.get(event_type, 0) + 1

    def flush(self):
        with self._lock:
            self._file.flush()

    def close(self):
        # A writer stuck inside record() must not hang the run's teardown.
        locked = self._lock.acquire(timeout=10)
        try:
            if not self._file.closed:
                self._file.close()
        finally:
            if locked:
                self._lock.release()


def load(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]
