"""The history checker on synthetic histories: a correct one passes, and each broken promise
(lost, moved or duplicated acknowledged value, divergent read, reordering, backwards commit,
unprocessed value, phantom, missing final read) fails exactly the property that guards it.
Needs neither root nor a broker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .checker import PROPERTIES, check
from .history import History, load

TESTS_DIR = Path(__file__).resolve().parents[1]


def healthy_history() -> list[dict]:
    """Two producers over two partitions, one value lost in flight (never acknowledged, never
    stored), one value whose acknowledgement was lost but which is stored, a reader, a group
    of two members (one value processed twice after a rebalance) and the final read."""
    events = []
    logs = {0: [], 1: []}

    def send(producer, seq, partition, outcome):
        value = f"{producer}-{seq}"
        events.append({"type": "send", "producer": producer, "partition": partition,
                       "seq": seq, "value": value})
        if outcome in ("ack", "stored-unacked"):
            offset = len(logs[partition])
            logs[partition].append(value)
            if outcome == "ack":
                events.append({"type": "ack", "producer": producer, "partition": partition,
                               "seq": seq, "value": value, "offset": offset})
                return
        events.append({"type": "fail", "producer": producer, "partition": partition,
                       "seq": seq, "value": value, "error": "timed out"})

    for seq in range(6):
        send("confluent-0", seq, seq % 2, "ack")
        send("kafka-python-0", seq, seq % 2, "ack")
    send("confluent-0", 6, 0, "lost")
    send("kafka-python-0", 6, 1, "stored-unacked")
    send("confluent-0", 7, 0, "ack")

    for partition, values in logs.items():
        for offset, value in enumerate(values):
            events.append({"type": "read", "reader": "r1", "partition": partition,
                           "offset": offset, "value": value})
    for partition, values in logs.items():
        member = "m1" if partition == 0 else "m2"
        for offset, value in enumerate(values):
            events.append({"type": "process", "group": "g", "member": member,
                           "partition": partition, "offset": offset, "value": value})
            if offset % 3 == 2:
                events.append({"type": "commit", "group": "g", "member": member,
                               "partition": partition, "offset": offset + 1})
    # After a rebalance m2 processes partition 0's last value again and commits the same offset.
    last = len(logs[0]) - 1
    events.append({"type": "process", "group": "g", "member": "m2", "partition": 0,
                   "offset": last, "value": logs[0][last]})
    events.append({"type": "commit", "group": "g", "member": "m2", "partition": 0,
                   "offset": last + 1})
    events.append({"type": "commit", "group": "g", "member": "m2", "partition": 0,
                   "offset": last + 1})
    for partition, values in logs.items():
        for offset, value in enumerate(values):
            events.append({"type": "final", "partition": partition, "offset": offset,
                           "value": value})
    events.append({"type": "final_done", "partitions": 2,
                   "end_offsets": {str(p): len(v) for p, v in logs.items()}})
    return events


def failed_properties(events) -> list[str]:
    return check(events).failed()


def final_index(events, partition, offset):
    return next(i for i, e in enumerate(events) if e["type"] == "final"
                and e["partition"] == partition and e["offset"] == offset)


def first(events, **match):
    return next(e for e in events if all(e.get(k) == v for k, v in match.items()))


def test_healthy_history_passes_every_property():
    result = check(healthy_history())
    assert result.ok, result.summary()
    assert "RESULT: PASS" in result.summary()
    assert result.counts["ack"] == 13 and result.counts["fail"] == 2


def test_lost_acknowledged_value_fails_acked_present_once():
    events = healthy_history()
    ack = first(events, type="ack", producer="confluent-0", seq=7)
    events.pop(final_index(events, ack["partition"], ack["offset"]))
    result = check(events)
    assert result.failed() == ["acked_present_once", "no_divergent_reads"], result.summary()
    assert "lost" in result.violations["acked_present_once"][0]


def test_acknowledged_value_at_another_offset_fails_acked_present_once():
    events = healthy_history()
    ack = first(events, type="ack", producer="confluent-0", seq=0)
    ack["offset"] += 1  # the broker acknowledged an offset the value does not sit at
    # Nor did the group process the value at the acknowledged offset.
    assert failed_properties(events) == ["acked_present_once", "acked_processed"]


def test_value_stored_twice_fails_acked_present_once_and_no_duplicates():
    events = healthy_history()
    ack = first(events, type="ack", producer="kafka-python-0", seq=3)
    done = first(events, type="final_done")
    end = done["end_offsets"][str(ack["partition"])]
    events.insert(events.index(done), {"type": "final", "partition": ack["partition"],
                                       "offset": end, "value": ack["value"]})
    done["end_offsets"][str(ack["partition"])] = end + 1
    result = check(events)
    # The copy sits after later values of the same producer: a reordering too.
    assert result.failed() == ["acked_present_once", "no_duplicates", "producer_order"], \
        result.summary()


def test_unacknowledged_value_stored_twice_fails_no_duplicates_only():
    events = healthy_history()
    stored_unacked = "kafka-python-0-6"
    done = first(events, type="final_done")
    events.insert(events.index(done), {"type": "final", "partition": 1, "offset": 99,
                                       "value": stored_unacked})
    assert failed_properties(events) == ["no_duplicates"]


def resent_after_an_epoch_bump(bump_t: float) -> list[dict]:
    """kafka-python-0-3 is in flight (sent at t=1, acknowledged at t=3 at its second copy,
    stored once before) and its producer bumps its epoch at `bump_t`."""
    events = healthy_history()
    value = "kafka-python-0-3"
    send = first(events, type="send", value=value)
    ack = first(events, type="ack", value=value)
    send["t"], ack["t"] = 1.0, 3.0
    done = first(events, type="final_done")
    end = done["end_offsets"][str(ack["partition"])]
    events.insert(events.index(done), {"type": "final", "partition": ack["partition"],
                                       "offset": end, "value": value})
    done["end_offsets"][str(ack["partition"])] = end + 1
    # The re-sent copy is the one acknowledged: after later values, as librdkafka re-sends.
    ack["offset"] = end
    for event in events:
        if event["type"] in ("read", "process") and event["value"] == value:
            event["offset"] = end
    events.append({"type": "epoch_bump", "t": bump_t, "producer": "kafka-python-0",
                   "log": "DRAIN: bumped epoch to PID{Id:1000,Epoch:2}"})
    return events


def test_value_resent_after_its_producers_epoch_bump_is_noted_not_failed():
    result = check(resent_after_an_epoch_bump(bump_t=2.0))
    assert "acked_present_once" not in result.failed(), result.summary()
    assert "no_duplicates" not in result.failed(), result.summary()
    assert len(result.epoch_bump_duplicates) == 1
    assert "bumped its epoch" in result.summary()


def test_duplicate_without_an_epoch_bump_in_flight_still_fails():
    result = check(resent_after_an_epoch_bump(bump_t=5.0))  # after the acknowledgement
    assert {"acked_present_once", "no_duplicates"} <= set(result.failed()), result.summary()
    assert not result.epoch_bump_duplicates


def test_two_readers_seeing_different_values_at_one_offset_fails_no_divergent_reads():
    events = healthy_history()
    events.append({"type": "read", "reader": "r2", "partition": 0, "offset": 2,
                   "value": "kafka-python-0-6"})
    result = check(events)
    assert result.failed() == ["no_divergent_reads"], result.summary()
    assert "showed 2 values" in result.violations["no_divergent_reads"][0]


def test_read_of_a_value_the_final_log_replaced_fails_no_divergent_reads():
    events = healthy_history()
    # A deposed leader served an uncommitted value that the new leader overwrote.
    first(events, type="read", partition=1, offset=4)["value"] = "confluent-0-6"
    assert failed_properties(events) == ["no_divergent_reads"]


def test_read_beyond_the_final_log_end_fails_no_divergent_reads():
    events = healthy_history()
    events.append({"type": "read", "reader": "r1", "partition": 0, "offset": 50,
                   "value": "confluent-0-6"})
    result = check(events)
    assert result.failed() == ["no_divergent_reads"]
    assert "beyond" in result.violations["no_divergent_reads"][0]


def test_acknowledgements_out_of_send_order_fail_producer_order():
    events = healthy_history()
    # Same partition, same producer: seq 0 and seq 2 swap their slots.
    a = first(events, type="ack", producer="confluent-0", seq=0)
    b = first(events, type="ack", producer="confluent-0", seq=2)
    for event_type in ("read", "process", "final"):
        for e in events:
            if e["type"] == event_type and e["value"] in (a["value"], b["value"]):
                e["value"] = b["value"] if e["value"] == a["value"] else a["value"]
    a["offset"], b["offset"] = b["offset"], a["offset"]
    result = check(events)
    assert result.failed() == ["producer_order"], result.summary()
    assert len(result.violations["producer_order"]) == 2  # seen in the acks and in the log


def test_committed_offset_going_backwards_fails_commits_monotonic():
    events = healthy_history()
    events.append({"type": "commit", "group": "g", "member": "m1", "partition": 1, "offset": 1})
    result = check(events)
    assert result.failed() == ["commits_monotonic"], result.summary()
    assert "committed 1" in result.violations["commits_monotonic"][0]


def test_acknowledged_value_never_processed_fails_acked_processed():
    events = healthy_history()
    ack = first(events, type="ack", producer="kafka-python-0", seq=5)
    events[:] = [e for e in events if not (e["type"] == "process"
                                           and e["value"] == ack["value"])]
    result = check(events)
    assert result.failed() == ["acked_processed"], result.summary()
    assert ack["value"] in result.violations["acked_processed"][0]


def test_history_without_a_group_fails_acked_processed():
    events = [e for e in healthy_history() if e["type"] not in ("process", "commit")]
    assert failed_properties(events) == ["acked_processed"]


def test_value_nobody_sent_fails_no_phantoms():
    events = healthy_history()
    done = first(events, type="final_done")
    events.insert(events.index(done), {"type": "final", "partition": 0, "offset": 77,
                                       "value": "garbage"})
    assert failed_properties(events) == ["no_phantoms"]


def test_missing_final_read_fails_final_read_and_every_acknowledgement():
    events = [e for e in healthy_history() if e["type"] not in ("final", "final_done")]
    result = check(events)
    assert "final_read" in result.failed() and "acked_present_once" in result.failed()


def test_summary_names_each_property_and_the_failures():
    events = healthy_history()
    events.append({"type": "commit", "group": "g", "member": "m1", "partition": 1, "offset": 0})
    summary = check(events).summary()
    for prop in PROPERTIES:
        assert prop in summary
    assert "FAIL commits_monotonic" in summary and "RESULT: FAIL (commits_monotonic)" in summary


@pytest.mark.parametrize("broken", [False, True])
def test_command_line_reads_a_history_file_and_exits_nonzero_on_failure(tmp_path, broken):
    path = tmp_path / "history.jsonl"
    history = History(path)
    for event in healthy_history():
        fields = {k: v for k, v in event.items() if k != "type"}
        history.record(event["type"], **fields)
    if broken:
        history.record("read", reader="r9", partition=0, offset=0, value="confluent-0-7")
    history.close()
    assert [e["type"] for e in load(path)][:2] == ["send", "ack"]
    assert all("t" in json.loads(line) for line in path.read_text().splitlines())
    done = subprocess.run([sys.executable, "-m", "cluster.checker", str(path)], cwd=TESTS_DIR,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == (1 if broken else 0), done.stdout + done.stderr
    assert ("RESULT: FAIL" if broken else "RESULT: PASS") in done.stdout
