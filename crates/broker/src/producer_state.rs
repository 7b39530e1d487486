//! Idempotent-producer state of one partition: for each producer id, its epoch and the last few
//! batches it wrote, so a retried batch is acknowledged with its original offset instead of being
//! written twice, and a gap in sequence numbers is refused. Rebuilt from the log on start.
//!
//! A producer that has not appended for `producer.id.expiration.ms` is forgotten (`expire`), so
//! the table stays bounded however many producers come and go. A producer the table does not
//! know (new, expired, or whose batches retention deleted) is accepted at any sequence, as Kafka
//! does since KIP-360: only a known producer's sequence can be checked.
//!
//! The table also follows transactions: the first offset of each producer's open transaction
//! (the smallest is the last stable offset, below which `read_committed` consumers read) and
//! every aborted transaction still in the log (Kafka's `.txnindex`, answered with each
//! `read_committed` fetch). Both are rebuilt from the log on start with the rest.

use std::collections::{BTreeSet, HashMap, VecDeque};

use sluice_log::{BatchHeader, TransactionResult};

use crate::BrokerError;

/// Kafka clients keep at most 5 requests in flight with idempotence on, so 5 batches suffice.
const BATCHES_REMEMBERED: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchMetadata {
    sequence_first: i32,
    sequence_last: i32,
    offset_first: i64,
}

#[derive(Debug, Clone, Default)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<BatchMetadata>,
    /// When this producer last appended (broker clock; the batch timestamp when replayed).
    last_append_ms: i64,
    /// The largest timestamp of its last batch (DescribeProducers' LastTimestamp).
    last_timestamp: i64,
    /// First offset of its open transaction, until the transaction's marker.
    transaction_first_offset: Option<i64>,
}

/// A transaction that ended with an abort marker: a `read_committed` consumer drops this
/// producer's batches from `first_offset` to the marker at `last_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTransaction {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
}

/// One producer as DescribeProducers reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveProducer {
    pub producer_id: i64,
    pub epoch: i16,
    pub last_sequence: i32,
    pub last_timestamp: i64,
    /// First offset of its open transaction (DescribeProducers' CurrentTxnStartOffset).
    pub transaction_first_offset: Option<i64>,
}

/// What to do with an incoming batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// Not idempotent, or the next expected sequence: append it.
    Append,
    /// Already stored: acknowledge with this base offset, write nothing.
    Duplicate { offset_first: i64 },
}

#[derive(Debug, Clone, Default)]
pub struct ProducerStateTable {
    producers: HashMap<i64, ProducerEntry>,
    /// In marker order, so by `last_offset`.
    aborted: Vec<AbortedTransaction>,
    /// (first offset, producer id) of every open transaction: its first element is the
    /// first unstable offset, read by every fetch without walking the producers.
    open_transactions: BTreeSet<(i64, i64)>,
}

fn next_sequence(sequence: i32) -> i32 {
    if sequence == i32::MAX {
        0
    } else {
        sequence + 1
    }
}

impl ProducerStateTable {
    /// Decides whether `batch` (as sent, before offsets are assigned) may be appended.
    pub fn check(&self, batch: &BatchHeader) -> Result<SequenceCheck, BrokerError> {
        if batch.producer_id < 0 || batch.base_sequence < 0 {
            return Ok(SequenceCheck::Append);
        }
        let Some(entry) = self.producers.get(&batch.producer_id) else {
            return Ok(SequenceCheck::Append);
        };
        if batch.producer_epoch < entry.epoch {
            return Err(BrokerError::InvalidProducerEpoch(format!(
                "producer {} epoch {} is older than the current epoch {}",
                batch.producer_id, batch.producer_epoch, entry.epoch
            )));
        }
        if batch.producer_epoch > entry.epoch {
            if batch.base_sequence == 0 {
                return Ok(SequenceCheck::Append);
            }
            return Err(BrokerError::OutOfOrderSequence(format!(
                "producer {} new epoch {} must start at sequence 0, got {}",
                batch.producer_id, batch.producer_epoch, batch.base_sequence
            )));
        }
        let last_sequence = batch.last_sequence();
        if let Some(duplicate) = entry
            .batches
            .iter()
            .find(|b| b.sequence_first == batch.base_sequence && b.sequence_last == last_sequence)
        {
            return Ok(SequenceCheck::Duplicate {
                offset_first: duplicate.offset_first,
            });
        }
        let expected = entry
            .batches
            .back()
            .map(|b| next_sequence(b.sequence_last))
            .unwrap_or(0);
        if batch.base_sequence == expected {
            Ok(SequenceCheck::Append)
        } else {
            Err(BrokerError::OutOfOrderSequence(format!(
                "producer {} epoch {}: expected sequence {expected}, got {}",
                batch.producer_id, batch.producer_epoch, batch.base_sequence
            )))
        }
    }

    /// Records a batch that was appended at `now_ms` (with its assigned base offset), or
    /// replayed from the log (then `now_ms` is the batch's own timestamp).
    pub fn record(&mut self, batch: &BatchHeader, now_ms: i64) {
        if batch.producer_id < 0 || batch.base_sequence < 0 {
            return;
        }
        let entry = self.producers.entry(batch.producer_id).or_default();
        if batch.is_transactional() && entry.transaction_first_offset.is_none() {
            entry.transaction_first_offset = Some(batch.base_offset);
            self.open_transactions
                .insert((batch.base_offset, batch.producer_id));
        }
        entry.last_append_ms = entry.last_append_ms.max(now_ms);
        entry.last_timestamp = batch.max_timestamp;
        if batch.producer_epoch != entry.epoch {
            entry.epoch = batch.producer_epoch;
            entry.batches.clear();
        }
        entry.batches.push_back(BatchMetadata {
            sequence_first: batch.base_sequence,
            sequence_last: batch.last_sequence(),
            offset_first: batch.base_offset,
        });
        while entry.batches.len() > BATCHES_REMEMBERED {
            entry.batches.pop_front();
        }
    }
}

impl ProducerStateTable {
    /// Records a transaction marker written at `batch.base_offset`: the producer's open
    /// transaction ends (an abort is remembered for `read_committed` fetches), and a marker
    /// of a newer epoch fences the producer's older epochs (a coordinator that aborted a
    /// timed-out transaction bumped the epoch).
    pub fn record_marker(&mut self, batch: &BatchHeader, result: TransactionResult, now_ms: i64) {
        if batch.producer_id < 0 {
            return;
        }
        let entry = self.producers.entry(batch.producer_id).or_default();
        entry.last_append_ms = entry.last_append_ms.max(now_ms);
        if batch.producer_epoch > entry.epoch {
            entry.epoch = batch.producer_epoch;
            entry.batches.clear();
        }
        if let Some(first_offset) = entry.transaction_first_offset.take() {
            self.open_transactions
                .remove(&(first_offset, batch.producer_id));
            if result == TransactionResult::Abort {
                self.aborted.push(AbortedTransaction {
                    producer_id: batch.producer_id,
                    first_offset,
                    last_offset: batch.base_offset,
                });
            }
        }
    }

    /// The first offset of the oldest open transaction: `read_committed` consumers read below
    /// it (Kafka's last stable offset, before it is capped by the high watermark).
    pub fn first_unstable_offset(&self) -> Option<i64> {
        self.open_transactions.first().map(|&(offset, _)| offset)
    }

    /// The offset below which no transaction is open, capped by `high_watermark`: where
    /// `read_committed` consumers stop (Kafka's last stable offset).
    pub fn last_stable_offset(&self, high_watermark: i64) -> i64 {
        self.first_unstable_offset()
            .map_or(high_watermark, |first| first.min(high_watermark))
    }

    /// The aborted transactions a fetch of offsets `[from, to)` must tell the consumer about:
    /// those whose range overlaps it.
    pub fn aborted_between(&self, from: i64, to: i64) -> Vec<AbortedTransaction> {
        let first = self.aborted.partition_point(|t| t.last_offset < from);
        self.aborted[first..]
            .iter()
            .filter(|t| t.first_offset < to)
            .copied()
            .collect()
    }

    /// Forgets aborted transactions wholly below `log_start` (retention or DeleteRecords
    /// removed their batches).
    pub fn forget_aborted_below(&mut self, log_start: i64) {
        let below = self.aborted.partition_point(|t| t.last_offset < log_start);
        self.aborted.drain(..below);
    }

    /// Forgets producers whose last append is `expiration_ms` or more before `now_ms`
    /// (`producer.id.expiration.ms`); returns how many.
    pub fn expire(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let count_before = self.producers.len();
        // A producer with an open transaction stays: it holds the last stable offset.
        self.producers.retain(|_, entry| {
            entry.transaction_first_offset.is_some()
                || now_ms.saturating_sub(entry.last_append_ms) < expiration_ms
        });
        count_before - self.producers.len()
    }

    pub fn producer_count(&self) -> usize {
        self.producers.len()
    }

    /// Every producer this partition remembers, by id.
    pub fn active(&self) -> Vec<ActiveProducer> {
        let mut active: Vec<ActiveProducer> = self
            .producers
            .iter()
            .map(|(&producer_id, entry)| ActiveProducer {
                producer_id,
                epoch: entry.epoch,
                last_sequence: entry.batches.back().map_or(-1, |b| b.sequence_last),
                last_timestamp: entry.last_timestamp,
                transaction_first_offset: entry.transaction_first_offset,
            })
            .collect();
        active.sort_by_key(|p| p.producer_id);
        active
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(producer_id: i64, epoch: i16, sequence: i32, count: i32, offset: i64) -> BatchHeader {
        BatchHeader {
            base_offset: offset,
            batch_length: 0,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: count - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id,
            producer_epoch: epoch,
            base_sequence: sequence,
            record_count: count,
        }
    }

    fn transactional(mut header: BatchHeader) -> BatchHeader {
        header.attributes |= 0x10;
        header
    }

    fn marker(producer_id: i64, epoch: i16, offset: i64) -> BatchHeader {
        transactional(BatchHeader {
            attributes: 0x20,
            ..batch(producer_id, epoch, -1, 1, offset)
        })
    }

    #[test]
    fn open_transactions_hold_the_last_stable_offset_and_aborts_are_remembered() {
        let mut table = ProducerStateTable::default();
        table.record(&transactional(batch(1, 0, 0, 2, 10)), 0);
        table.record(&transactional(batch(2, 0, 0, 1, 12)), 0);
        table.record(&transactional(batch(1, 0, 2, 1, 13)), 0);
        assert_eq!(table.first_unstable_offset(), Some(10));
        table.record_marker(&marker(1, 0, 14), TransactionResult::Abort, 0);
        assert_eq!(table.first_unstable_offset(), Some(12));
        table.record_marker(&marker(2, 0, 15), TransactionResult::Commit, 0);
        assert_eq!(table.first_unstable_offset(), None);
        let aborted = AbortedTransaction {
            producer_id: 1,
            first_offset: 10,
            last_offset: 14,
        };
        assert_eq!(table.aborted_between(0, 11), vec![aborted]);
        assert_eq!(table.aborted_between(14, 20), vec![aborted]);
        assert!(table.aborted_between(15, 20).is_empty());
        assert!(table.aborted_between(0, 10).is_empty());
        // An open transaction keeps its producer past the expiration.
        table.record(&transactional(batch(3, 0, 0, 1, 16)), 0);
        table.expire(1_000_000, 10);
        assert_eq!(table.first_unstable_offset(), Some(16));
        table.forget_aborted_below(15);
        assert!(table.aborted_between(0, 20).is_empty());
    }

    #[test]
    fn a_marker_of_a_newer_epoch_fences_the_older_one() {
        let mut table = ProducerStateTable::default();
        table.record(&transactional(batch(1, 0, 0, 1, 0)), 0);
        table.record_marker(&marker(1, 1, 1), TransactionResult::Abort, 0);
        assert!(matches!(
            table.check(&transactional(batch(1, 0, 1, 1, -1))),
            Err(BrokerError::InvalidProducerEpoch(_))
        ));
    }

    #[test]
    fn retried_batch_is_a_duplicate_with_its_original_offset() {
        let mut table = ProducerStateTable::default();
        let first = batch(7, 0, 0, 10, 100);
        assert_eq!(table.check(&first).ok(), Some(SequenceCheck::Append));
        table.record(&first, 0);
        assert_eq!(
            table.check(&batch(7, 0, 0, 10, -1)).ok(),
            Some(SequenceCheck::Duplicate { offset_first: 100 })
        );
        assert_eq!(
            table.check(&batch(7, 0, 10, 5, -1)).ok(),
            Some(SequenceCheck::Append)
        );
    }

    #[test]
    fn sequence_gap_is_out_of_order() {
        let mut table = ProducerStateTable::default();
        table.record(&batch(7, 0, 0, 10, 0), 0);
        assert!(matches!(
            table.check(&batch(7, 0, 11, 1, -1)),
            Err(BrokerError::OutOfOrderSequence(_))
        ));
    }

    #[test]
    fn older_epoch_is_fenced_and_new_epoch_restarts_at_zero() {
        let mut table = ProducerStateTable::default();
        table.record(&batch(7, 2, 0, 1, 0), 0);
        assert!(matches!(
            table.check(&batch(7, 1, 1, 1, -1)),
            Err(BrokerError::InvalidProducerEpoch(_))
        ));
        assert_eq!(
            table.check(&batch(7, 3, 0, 1, -1)).ok(),
            Some(SequenceCheck::Append)
        );
        assert!(matches!(
            table.check(&batch(7, 3, 5, 1, -1)),
            Err(BrokerError::OutOfOrderSequence(_))
        ));
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut table = ProducerStateTable::default();
        for i in 0..7 {
            table.record(&batch(1, 0, i, 1, i as i64), 0);
        }
        assert!(table.check(&batch(1, 0, 0, 1, -1)).is_err());
        assert_eq!(
            table.check(&batch(1, 0, 6, 1, -1)).ok(),
            Some(SequenceCheck::Duplicate { offset_first: 6 })
        );
    }

    /// Kafka (KIP-360): a producer the partition does not know may start at any sequence, so
    /// a producer whose state expired or was deleted with its batches is not stuck.
    #[test]
    fn unknown_producer_is_accepted_at_any_sequence() {
        let table = ProducerStateTable::default();
        assert_eq!(
            table.check(&batch(8, 0, 3, 1, -1)).ok(),
            Some(SequenceCheck::Append)
        );
    }

    #[test]
    fn producers_idle_past_the_expiration_are_forgotten() {
        let mut table = ProducerStateTable::default();
        table.record(&batch(1, 0, 0, 1, 0), 1_000);
        table.record(&batch(2, 0, 0, 1, 1), 5_000);
        assert_eq!(table.expire(10_999, 10_000), 0);
        assert_eq!(table.expire(11_000, 10_000), 1);
        assert_eq!(table.producer_count(), 1);
        // The forgotten producer is a new one again: any sequence is accepted, no duplicate
        // is found; the remembered one still gets its duplicate.
        assert_eq!(
            table.check(&batch(1, 0, 0, 1, -1)).ok(),
            Some(SequenceCheck::Append)
        );
        assert_eq!(
            table.check(&batch(2, 0, 0, 1, -1)).ok(),
            Some(SequenceCheck::Duplicate { offset_first: 1 })
        );
        // An append refreshes the clock.
        table.record(&batch(2, 0, 1, 1, 2), 20_000);
        assert_eq!(table.expire(29_999, 10_000), 0);
        assert_eq!(table.expire(30_000, 10_000), 1);
        assert_eq!(table.producer_count(), 0);
    }
}
