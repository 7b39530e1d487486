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
import queue
import threading
import time
from pathlib import Path

_CLOSE = object()


class History:
    """Events go through a queue to one writer thread, so the file's order is the order in
    which `record` was called. No lock is taken in `record`: confluent-kafka can call a
    client callback with a Python exception already pending (after a fatal producer error,
    during flush); a C-level lock acquired in that state raises SystemError after acquiring,
    and the `with` block that would release it never starts, leaving every other thread
    waiting forever. A queue put in that state still delivers the event."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w", encoding="utf-8")
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._started = time.monotonic()
        self._closed = False
        # Written by the writer thread only; complete once close() returns.
        self.counts: dict[str, int] = {}
        self._writer = threading.Thread(target=self._write_events, name="history-writer",
                                        daemon=True)
        self._writer.start()

    def record(self, event_type: str, **fields):
        if self._closed:
            return
        event = {"type": event_type, "t": round(time.monotonic() - self._started, 6)}
        event.update(fields)
        self._events.put(event)

    def flush(self, timeout: float = 30):
        """Waits until everything recorded so far is in the file."""
        written = threading.Event()
        self._events.put(written)
        written.wait(timeout)

    def close(self, timeout: float = 30):
        """Writes what was recorded and closes the file; later events are dropped."""
        self._closed = True
        self._events.put(_CLOSE)
        self._writer.join(timeout)

    def _write_events(self):
        try:
            while True:
                item = self._events.get()
                if item is _CLOSE:
                    return
                if isinstance(item, threading.Event):
                    self._file.flush()
                    item.set()
                    continue
                self._file.write(json.dumps(item, separators=(",", ":")) + "\n")
                self.counts[item["type"]] = self.counts.get(item["type"], 0) + 1
        finally:
            self._file.close()


def load(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]
