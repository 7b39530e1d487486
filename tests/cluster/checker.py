"""Checks a nemesis history (history.py) against what a replicated Kafka log promises.

Properties, each reported with its violations:

    final_read            the history ends with a complete final read of every partition
    acked_present_once    every acknowledged value is in the final log exactly once, at the
                          offset its acknowledgement named
    no_duplicates         no value (acknowledged or not) is stored at two offsets
    no_phantoms           every stored or read value is one a producer sent
    no_divergent_reads    no offset ever showed two different values to anyone (readers, group
                          members, the final read), and nothing read was later lost
    producer_order        per producer and partition, values are stored in the order sent
    commits_monotonic     a group's committed offset of a partition never goes backwards
    acked_processed       every acknowledged value was processed by every group at least once

A value stored twice because its producer bumped its epoch while the value was in flight is
not a violation: librdkafka (KIP-360) then re-sends its in-flight messages as a new producer
epoch, and no broker can de-duplicate a new epoch's batch against the old one's (Apache Kafka
stores it twice too; librdkafka issue 4953). Such values are listed apart, with librdkafka's
reason for the bump, so a bump the broker provoked wrongly is still seen.

Pure Python, no broker needed: `python -m cluster.checker HISTORY.jsonl` prints the summary and
exits 1 if any property fails.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from dataclasses import dataclass, field

from .history import load

PROPERTIES = ("final_read", "acked_present_once", "no_duplicates", "no_phantoms",
              "no_divergent_reads", "producer_order", "commits_monotonic", "acked_processed")
EXAMPLES_SHOWN = 5


@dataclass
class CheckResult:
    counts: dict[str, int]
    violations: dict[str, list[str]] = field(default_factory=lambda: {p: [] for p in PROPERTIES})
    # Duplicates a client's epoch bump explains (see the module docs): not violations.
    epoch_bump_duplicates: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(self.violations.values())

    def failed(self) -> list[str]:
        return [p for p in PROPERTIES if self.violations[p]]

    def summary(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
        lines = [f"history: {counts}"]
        for prop in PROPERTIES:
            found = self.violations[prop]
            lines.append(f"  {'FAIL' if found else 'ok  '} {prop}"
                         + (f": {len(found)} violation(s)" if found else ""))
            for example in found[:EXAMPLES_SHOWN]:
                lines.append(f"         - {example}")
            if len(found) > EXAMPLES_SHOWN:
                lines.append(f"         ... and {len(found) - EXAMPLES_SHOWN} more")
        if self.epoch_bump_duplicates:
            lines.append(f"  note {len(self.epoch_bump_duplicates)} value(s) stored twice after "
                         "their producer bumped its epoch while they were in flight:")
            for example in self.epoch_bump_duplicates[:EXAMPLES_SHOWN]:
                lines.append(f"         - {example}")
        lines.append("RESULT: " + ("PASS" if self.ok else "FAIL (" + ", ".join(self.failed())
                                   + ")"))
        return "\n".join(lines)


def check(events: list[dict]) -> CheckResult:
    counts: dict[str, int] = defaultdict(int)
    for event in events:
        counts[event["type"]] += 1
    result = CheckResult(dict(counts))
    v = result.violations

    acks = [e for e in events if e["type"] == "ack"]
    sent = {e["value"]: e for e in events if e["type"] in ("send", "ack", "fail")}
    final = {(e["partition"], e["offset"]): e["value"] for e in events if e["type"] == "final"}
    final_done = [e for e in events if e["type"] == "final_done"]

    if not final_done:
        v["final_read"].append("no final_done event: the final read is missing or incomplete")
    final_end = {}  # partition -> end offset of the final read (its high watermark)
    for e in final_done:
        final_end.update({int(p): end for p, end in e.get("end_offsets", {}).items()})

    # Where each value sits in the final log.
    stored_at: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for (partition, offset), value in sorted(final.items()):
        stored_at[value].append((partition, offset))

    # Values in flight (sent, not yet acknowledged) when their producer bumped its epoch.
    bumps: dict[str, list[dict]] = defaultdict(list)
    for e in events:
        if e["type"] == "epoch_bump":
            bumps[e["producer"]].append(e)
    sends = {e["value"]: e for e in events if e["type"] == "send"}
    acked_at = {e["value"]: e.get("t", float("inf")) for e in acks}

    def epoch_bump_during(value: str) -> dict | None:
        send = sends.get(value)
        if send is None:
            return None
        until = acked_at.get(value, float("inf"))
        return next((b for b in bumps.get(send.get("producer"), ())
                     if send.get("t", 0) <= b.get("t", 0) <= until), None)

    excused = set()
    for value, places in sorted(stored_at.items()):
        bump = epoch_bump_during(value) if len(places) == 2 else None
        if bump is not None:
            excused.add(value)
            result.epoch_bump_duplicates.append(
                f"{value!r} at {places}; bump at t={bump['t']}: {bump.get('log', '')}")

    for ack in acks:
        slot = (ack["partition"], ack["offset"])
        places = stored_at.get(ack["value"], [])
        if ack["value"] in excused and final.get(slot) == ack["value"]:
            continue
        if final.get(slot) != ack["value"]:
            found = final.get(slot, "nothing")
            v["acked_present_once"].append(
                f"{ack['value']!r} acknowledged at {slot[0]}/{slot[1]} by {ack['producer']}, "
                f"final log holds {found!r} there" + (f"; the value is at {places}" if places
                                                      else "; the value is lost"))
        elif len(places) != 1:
            v["acked_present_once"].append(f"{ack['value']!r} (acknowledged at "
                                           f"{slot[0]}/{slot[1]}) is stored {len(places)} times: "
                                           f"{places}")

    for value, places in sorted(stored_at.items()):
        if len(places) > 1 and value not in excused:
            v["no_duplicates"].append(f"{value!r} is stored at {len(places)} offsets: {places}")

    if sent:
        seen = [(e["value"], e["type"], e.get("reader") or e.get("member") or "final")
                for e in events if e["type"] in ("read", "process", "final")]
        for value, kind, who in seen:
            if value not in sent:
                v["no_phantoms"].append(f"{kind} by {who}: {value!r} was never sent")
    elif final:
        v["no_phantoms"].append("the history has no send events to check stored values against")

    _check_divergence(events, final, final_end, v["no_divergent_reads"])
    _check_producer_order(acks, final, sent, v["producer_order"])
    _check_commits(events, v["commits_monotonic"])
    _check_processed(events, acks, v["acked_processed"])
    return result


def _check_divergence(events, final, final_end, out):
    observed: dict[tuple[int, int], dict[str, str]] = defaultdict(dict)  # slot -> value -> who
    for e in events:
        if e["type"] == "read":
            who = f"reader {e['reader']}"
        elif e["type"] == "process":
            who = f"group {e['group']} member {e['member']}"
        else:
            continue
        observed[(e["partition"], e["offset"])].setdefault(e["value"], who)
    for slot, values in sorted(observed.items()):
        if len(values) > 1:
            out.append(f"{slot[0]}/{slot[1]} showed {len(values)} values: "
                       + ", ".join(f"{val!r} to {who}" for val, who in values.items()))
        elif slot in final:
            (value, who), = values.items()
            if final[slot] != value:
                out.append(f"{slot[0]}/{slot[1]} showed {value!r} to {who}, the final log holds "
                           f"{final[slot]!r}")
        elif final_end:
            (value, who), = values.items()
            end = final_end.get(slot[0], 0)
            where = "below" if slot[1] < end else "beyond"
            out.append(f"{slot[0]}/{slot[1]} showed {value!r} to {who}, {where} the final "
                       f"log's end {end}, which has no record there: the read value was lost")


def _check_producer_order(acks, final, sent, out):
    # Acknowledgements: a later send of the same producer to the same partition was
    # acknowledged at a lower offset.
    by_stream: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for ack in acks:
        by_stream[(ack["producer"], ack["partition"])].append(ack)
    for (producer, partition), stream in sorted(by_stream.items()):
        stream.sort(key=lambda a: a["seq"])
        for before, after in zip(stream, stream[1:]):
            if after["offset"] <= before["offset"]:
                out.append(f"{producer} on partition {partition}: seq {after['seq']} acknowledged "
                           f"at offset {after['offset']}, not after seq {before['seq']} at "
                           f"{before['offset']}")
    # The final log: also values whose acknowledgement was lost must keep the send order.
    stored: dict[tuple[str, int], list[tuple[int, int]]] = defaultdict(list)
    for (partition, offset), value in sorted(final.items()):
        origin = sent.get(value)
        if origin is not None:
            stored[(origin["producer"], partition)].append((origin["seq"], offset))
    for (producer, partition), seqs in sorted(stored.items()):
        for (seq_a, off_a), (seq_b, off_b) in zip(seqs, seqs[1:]):
            if seq_b < seq_a:
                out.append(f"{producer} on partition {partition}: seq {seq_b} stored at offset "
                           f"{off_b}, after seq {seq_a} at offset {off_a}")


def _check_commits(events, out):
    last: dict[tuple[str, int], tuple[int, str]] = {}
    for e in events:
        if e["type"] != "commit":
            continue
        key = (e["group"], e["partition"])
        previous = last.get(key)
        if previous is not None and e["offset"] < previous[0]:
            out.append(f"group {e['group']} partition {e['partition']}: committed "
                       f"{e['offset']} (member {e['member']}) after {previous[0]} "
                       f"(member {previous[1]})")
        if previous is None or e["offset"] >= previous[0]:
            last[key] = (e["offset"], e["member"])


def _check_processed(events, acks, out):
    processed: dict[str, set[tuple[int, int, str]]] = defaultdict(set)
    for e in events:
        if e["type"] in ("process", "commit"):
            processed.setdefault(e["group"], set())
        if e["type"] == "process":
            processed[e["group"]].add((e["partition"], e["offset"], e["value"]))
    if acks and not processed:
        out.append("no consumer group in the history: nothing was processed")
    for group, done in sorted(processed.items()):
        for ack in acks:
            if (ack["partition"], ack["offset"], ack["value"]) not in done:
                out.append(f"group {group} never processed {ack['value']!r} "
                           f"(acknowledged at {ack['partition']}/{ack['offset']})")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m cluster.checker HISTORY.jsonl", file=sys.stderr)
        return 2
    result = check(load(argv[0]))
    print(result.summary())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
