//! The records of one partition as one share group sees them (KIP-932's share partition).
//! Records below the start offset (Kafka's SPSO) are done; from the start offset up to the
//! end offset (SPEO) each record handed out is in flight: acquired by one member under a time
//! lock, available again (released, or its lock ran out), acknowledged, or archived
//! (rejected, a gap, a control record, aborted data for a read_committed group, or delivered
//! too often). Past the end offset nothing
//! was handed out yet. The start offset moves over records that are done. It is stored durably
//! with the in-flight records' states and delivery counts (as Kafka's share coordinator keeps
//! them), so that after a restart acknowledged records stay done and released ones come back
//! with the deliveries they had.
//!
//! Pure state: the coordinator reads the log and persists what [`SharePartition::encode`]
//! gives.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::GroupError;

/// How a member acknowledges a record (ShareAcknowledge's acknowledge types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcknowledgeType {
    /// Not a record (compacted away or a control record): nothing to deliver.
    Gap,
    Accept,
    /// Give it back: it is delivered again, to any member.
    Release,
    Reject,
}

impl AcknowledgeType {
    pub fn from_wire(code: i8) -> Option<AcknowledgeType> {
        match code {
            0 => Some(AcknowledgeType::Gap),
            1 => Some(AcknowledgeType::Accept),
            2 => Some(AcknowledgeType::Release),
            3 => Some(AcknowledgeType::Reject),
            _ => None,
        }
    }
}

/// Offsets `first..=last` acquired together, each delivered `delivery_count` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcquiredRange {
    pub first_offset: i64,
    pub last_offset: i64,
    pub delivery_count: i16,
}

/// What a batch of the log holds, for acquisition.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchSpan {
    pub base_offset: i64,
    pub last_offset: i64,
    pub is_control: bool,
    /// Data of an aborted transaction, for a group reading committed records only.
    pub is_aborted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum RecordState {
    Available,
    Acquired {
        member_id: String,
        deadline: Instant,
    },
    Acknowledged,
    Archived,
}

#[derive(Debug, Clone)]
struct InFlight {
    state: RecordState,
    delivery_count: i16,
}

impl InFlight {
    fn is_done(&self) -> bool {
        matches!(
            self.state,
            RecordState::Acknowledged | RecordState::Archived
        )
    }
}

/// Limits of acquisition, from the broker and group configs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShareLimits {
    pub lock_duration: Duration,
    /// A record delivered this often is archived when it comes back (`group.share.delivery.count.limit`).
    pub delivery_count_limit: i16,
    /// In-flight records at most (`group.share.partition.max.record.locks`).
    pub in_flight_max: i64,
}

#[derive(Debug)]
pub(crate) struct SharePartition {
    start_offset: i64,
    end_offset: i64,
    /// The in-flight records in `start_offset..end_offset`; an offset without an entry is a
    /// gap of the log and counts as done.
    records: BTreeMap<i64, InFlight>,
    /// Moves with every change a restart must keep (an acknowledgement, a release, a lock
    /// running out, the start offset moving); an acquisition alone does not count.
    version: u64,
}

/// What the encoded state may take at most: it is stored as an offset's metadata, whose
/// length is a u16. The in-flight records past what fits are read from the log again after
/// a restart, as new.
const ENCODED_MAX: usize = 60_000;

impl SharePartition {
    pub(crate) fn new(start_offset: i64) -> SharePartition {
        SharePartition {
            start_offset,
            end_offset: start_offset,
            records: BTreeMap::new(),
            version: 0,
        }
    }

    /// The partition as [`Self::encode`] stored it at `start_offset`. A state it cannot read
    /// (from a later version, or damaged) keeps only the start offset.
    pub(crate) fn restore(start_offset: i64, encoded: &str) -> SharePartition {
        let mut partition = SharePartition::new(start_offset);
        let Some(runs) = parse_runs(encoded) else {
            return partition;
        };
        // A damaged state could name more records than memory holds.
        if runs.iter().map(|(length, _, _)| *length).sum::<i64>() > RESTORED_MAX {
            return partition;
        }
        let mut offset = start_offset;
        for (length, state, delivery_count) in runs {
            if state == RUN_AVAILABLE {
                for at in offset..offset + length {
                    partition.records.insert(
                        at,
                        InFlight {
                            state: RecordState::Available,
                            delivery_count,
                        },
                    );
                }
            }
            offset += length;
        }
        partition.end_offset = offset;
        partition.advance_start();
        partition.version = 0;
        partition
    }

    /// The in-flight records as stored beside the start offset: runs `LENGTH.STATE.COUNT`
    /// from the start offset on, comma-separated, STATE `a` (available), `k` (acknowledged)
    /// or `x` (archived, or a gap). An acquired record is stored available with the delivery
    /// it is in not counted, as if it had not been handed out: its lock does not outlive a
    /// restart, and Kafka persists a delivery only once it is acknowledged or released.
    pub(crate) fn encode(&self) -> String {
        let mut runs: Vec<(i64, char, i16)> = Vec::new();
        for offset in self.start_offset..self.end_offset {
            let (state, count) = match self.records.get(&offset) {
                None => (RUN_ARCHIVED, 0),
                Some(record) => match record.state {
                    RecordState::Available => (RUN_AVAILABLE, record.delivery_count),
                    RecordState::Acquired { .. } => {
                        (RUN_AVAILABLE, (record.delivery_count - 1).max(0))
                    }
                    RecordState::Acknowledged => (RUN_ACKNOWLEDGED, 0),
                    RecordState::Archived => (RUN_ARCHIVED, 0),
                },
            };
            match runs.last_mut() {
                Some((length, s, c)) if *s == state && *c == count => *length += 1,
                _ => runs.push((1, state, count)),
            }
        }
        let mut encoded = String::from(ENCODING_V1);
        for (length, state, count) in runs {
            let run = format!("{length}.{state}.{count},");
            if encoded.len() + run.len() > ENCODED_MAX {
                break;
            }
            encoded.push_str(&run);
        }
        encoded
    }

    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    pub(crate) fn start_offset(&self) -> i64 {
        self.start_offset
    }

    /// Records whose lock ran out become available again (or archived, if delivered too
    /// often).
    pub(crate) fn expire_locks(&mut self, now: Instant, limits: &ShareLimits) {
        let mut any = false;
        for record in self.records.values_mut() {
            if matches!(&record.state, RecordState::Acquired { deadline, .. } if *deadline <= now) {
                record.state = released_state(record.delivery_count, limits);
                any = true;
            }
        }
        if any {
            self.version += 1;
            self.advance_start();
        }
    }

    /// The log lost records below `log_start` (retention, DeleteRecords): they are done.
    pub(crate) fn move_past(&mut self, log_start: i64) {
        if log_start <= self.start_offset {
            return;
        }
        self.records = self.records.split_off(&log_start);
        self.start_offset = log_start;
        self.end_offset = self.end_offset.max(log_start);
        self.version += 1;
    }

    /// Where a read of the log must start to find something to hand out: the first
    /// available record, or else the end offset. `None` when nothing may be acquired now
    /// (too many records in flight and none available).
    pub(crate) fn next_read_offset(&self, limits: &ShareLimits) -> Option<i64> {
        if let Some((&offset, _)) = self
            .records
            .iter()
            .find(|(_, r)| r.state == RecordState::Available)
        {
            return Some(offset);
        }
        (self.end_offset - self.start_offset < limits.in_flight_max).then_some(self.end_offset)
    }

    /// Acquires for `member_id` up to `records_max` records among the batches read from the
    /// log: available ones first in offset order, then new ones past the end offset.
    pub(crate) fn acquire(
        &mut self,
        member_id: &str,
        batches: &[BatchSpan],
        records_max: usize,
        now: Instant,
        limits: &ShareLimits,
    ) -> Vec<AcquiredRange> {
        let deadline = now + limits.lock_duration;
        let mut acquired: Vec<AcquiredRange> = Vec::new();
        let mut count = 0usize;
        let take =
            |offset: i64, delivery_count: i16, acquired: &mut Vec<AcquiredRange>| match acquired
                .last_mut()
            {
                Some(last)
                    if last.last_offset + 1 == offset && last.delivery_count == delivery_count =>
                {
                    last.last_offset = offset
                }
                _ => acquired.push(AcquiredRange {
                    first_offset: offset,
                    last_offset: offset,
                    delivery_count,
                }),
            };
        'batches: for batch in batches {
            for offset in batch.base_offset.max(self.start_offset)..=batch.last_offset {
                if count >= records_max {
                    break 'batches;
                }
                if offset < self.end_offset {
                    let Some(record) = self.records.get_mut(&offset) else {
                        continue;
                    };
                    if record.state == RecordState::Available {
                        record.delivery_count = record.delivery_count.saturating_add(1);
                        record.state = RecordState::Acquired {
                            member_id: member_id.to_string(),
                            deadline,
                        };
                        take(offset, record.delivery_count, &mut acquired);
                        count += 1;
                    }
                    continue;
                }
                if self.end_offset - self.start_offset >= limits.in_flight_max {
                    break 'batches;
                }
                // Offsets skipped by the log (compaction) are gaps: nothing to track.
                self.end_offset = offset + 1;
                if batch.is_control || batch.is_aborted {
                    self.records.insert(
                        offset,
                        InFlight {
                            state: RecordState::Archived,
                            delivery_count: 0,
                        },
                    );
                    continue;
                }
                self.records.insert(
                    offset,
                    InFlight {
                        state: RecordState::Acquired {
                            member_id: member_id.to_string(),
                            deadline,
                        },
                        delivery_count: 1,
                    },
                );
                take(offset, 1, &mut acquired);
                count += 1;
            }
        }
        self.advance_start();
        acquired
    }

    /// Checks then applies one acknowledgement batch: every offset of `first..=last` must be
    /// acquired by `member_id` (a gap may also be a record the log does not have), else
    /// nothing changes and the answer is INVALID_RECORD_STATE. `types` holds one type for
    /// the whole range or one per offset.
    pub(crate) fn acknowledge(
        &mut self,
        member_id: &str,
        first_offset: i64,
        last_offset: i64,
        types: &[AcknowledgeType],
        limits: &ShareLimits,
    ) -> Result<(), GroupError> {
        let span = last_offset - first_offset + 1;
        if span <= 0 || types.is_empty() || (types.len() > 1 && types.len() as i64 != span) {
            return Err(GroupError::InvalidRequest(
                "Invalid acknowledgement batch".to_string(),
            ));
        }
        let type_of = |offset: i64| {
            if types.len() == 1 {
                types[0]
            } else {
                types[(offset - first_offset) as usize]
            }
        };
        for offset in first_offset..=last_offset {
            let held = match self.records.get(&offset) {
                Some(InFlight {
                    state: RecordState::Acquired { member_id: by, .. },
                    ..
                }) => by == member_id,
                // Not a record of the log, below the end: a gap is all it can be.
                None => {
                    offset >= self.start_offset
                        && offset < self.end_offset
                        && type_of(offset) == AcknowledgeType::Gap
                }
                Some(_) => false,
            };
            if !held {
                return Err(GroupError::InvalidRecordState);
            }
        }
        for offset in first_offset..=last_offset {
            let Some(record) = self.records.get_mut(&offset) else {
                continue;
            };
            record.state = match type_of(offset) {
                AcknowledgeType::Accept => RecordState::Acknowledged,
                AcknowledgeType::Release => released_state(record.delivery_count, limits),
                AcknowledgeType::Reject | AcknowledgeType::Gap => RecordState::Archived,
            };
        }
        self.version += 1;
        self.advance_start();
        Ok(())
    }

    /// Gives back every record `member_id` holds (its share session closed or it left). As
    /// in Kafka, such a delivery does not count: the member never acknowledged the record, so
    /// it comes again with the delivery count it had.
    pub(crate) fn release_member(&mut self, member_id: &str) {
        let mut any = false;
        for record in self.records.values_mut() {
            if matches!(&record.state, RecordState::Acquired { member_id: by, .. } if by == member_id)
            {
                record.delivery_count = (record.delivery_count - 1).max(0);
                record.state = RecordState::Available;
                any = true;
            }
        }
        if any {
            self.version += 1;
        }
        self.advance_start();
    }

    /// Records in flight that no one holds yet: whether a fetch could get something without
    /// new data in the log.
    pub(crate) fn has_available(&self) -> bool {
        self.records
            .values()
            .any(|r| r.state == RecordState::Available)
    }

    /// The earliest lock deadline, for a fetch waiting for records to come back.
    pub(crate) fn next_lock_deadline(&self) -> Option<Instant> {
        self.records
            .values()
            .filter_map(|r| match &r.state {
                RecordState::Acquired { deadline, .. } => Some(*deadline),
                _ => None,
            })
            .min()
    }

    fn advance_start(&mut self) {
        while let Some(entry) = self.records.first_entry() {
            if !entry.get().is_done() {
                self.start_offset = *entry.key();
                return;
            }
            entry.remove();
        }
        self.start_offset = self.end_offset;
    }
}

const ENCODING_V1: &str = "v1:";
/// More in-flight records than a partition ever holds (`in_flight_max` is some thousands).
const RESTORED_MAX: i64 = 1 << 20;
const RUN_AVAILABLE: char = 'a';
const RUN_ACKNOWLEDGED: char = 'k';
const RUN_ARCHIVED: char = 'x';

/// The runs of an encoded state; `None` when it is not one this version wrote. An empty
/// string (a start offset stored alone) has no runs.
fn parse_runs(encoded: &str) -> Option<Vec<(i64, char, i16)>> {
    if encoded.is_empty() {
        return Some(Vec::new());
    }
    let runs = encoded.strip_prefix(ENCODING_V1)?;
    runs.split(',')
        .filter(|run| !run.is_empty())
        .map(|run| {
            let mut fields = run.split('.');
            let length: i64 = fields.next()?.parse().ok().filter(|l| *l > 0)?;
            let mut state = fields.next()?.chars();
            let state = state.next().filter(|_| state.as_str().is_empty())?;
            let count: i16 = fields.next()?.parse().ok().filter(|c| *c >= 0)?;
            let known = [RUN_AVAILABLE, RUN_ACKNOWLEDGED, RUN_ARCHIVED].contains(&state);
            (known && fields.next().is_none()).then_some((length, state, count))
        })
        .collect()
}

fn released_state(delivery_count: i16, limits: &ShareLimits) -> RecordState {
    if delivery_count >= limits.delivery_count_limit {
        RecordState::Archived
    } else {
        RecordState::Available
    }
}
