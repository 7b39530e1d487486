//! Hands out idempotent-producer ids that stay unique across restarts: ids are reserved in
//! blocks, and the end of the current block is persisted before any id from it is used.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use sluice_log::Storage;

use crate::{durable_fs, BrokerError};

const BLOCK_SIZE: i64 = 1000;

/// The producer id and epoch a transactional id currently owns, and the pair it owned before
/// its last bump (a retried InitProducerId whose answer was lost claims that one).
#[derive(Debug, Clone, Copy)]
struct TransactionalProducer {
    producer_id: i64,
    epoch: i16,
    previous: Option<(i64, i16)>,
}

impl TransactionalProducer {
    fn current(&self) -> (i64, i16) {
        (self.producer_id, self.epoch)
    }
}

struct AllocatorState {
    next_id: i64,
    block_end: i64,
    /// Re-initialising a transactional id bumps its epoch, which fences the older instance.
    transactional: HashMap<String, TransactionalProducer>,
}

pub struct ProducerIdAllocator {
    storage: Arc<dyn Storage>,
    path: PathBuf,
    state: Mutex<AllocatorState>,
}

impl ProducerIdAllocator {
    pub fn open(storage: Arc<dyn Storage>, path: PathBuf) -> Result<Self, BrokerError> {
        let block_end = match durable_fs::read(storage.as_ref(), &path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes)
                .trim()
                .parse::<i64>()
                .map_err(|e| durable_fs::error(&path, e))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => 0,
            Err(error) => return Err(durable_fs::error(&path, error)),
        };
        Ok(ProducerIdAllocator {
            storage,
            path,
            state: Mutex::new(AllocatorState {
                next_id: block_end,
                block_end,
                transactional: HashMap::new(),
            }),
        })
    }

    /// InitProducerId, as Kafka's transaction coordinator answers it.
    ///
    /// Without a transactional id: always a fresh (producer id, epoch 0). A claimed id and
    /// epoch (KIP-360) are ignored, as Kafka does: an idempotent producer bumps its epoch
    /// itself, and handing out a bump of a claimed id would let any client fence any producer
    /// by guessing its id.
    ///
    /// With a transactional id: its id with the epoch bumped (fencing the older instance).
    /// When the client claims the id and epoch it holds, the bump happens only if that is the
    /// current pair; a claim of the pair before the last bump is a retry and gets the current
    /// pair again; any other claim is `ProducerFenced`.
    pub fn allocate(
        &self,
        transactional_id: Option<&str>,
        claimed: Option<(i64, i16)>,
    ) -> Result<(i64, i16), BrokerError> {
        let mut state = self.state.lock();
        let Some(tid) = transactional_id else {
            return Ok((self.next_id(&mut state)?, 0));
        };
        let Some(current) = state.transactional.get(tid).copied() else {
            // Unknown here (new, or from before a restart: this table is not persisted).
            let producer_id = self.next_id(&mut state)?;
            state.transactional.insert(
                tid.to_string(),
                TransactionalProducer {
                    producer_id,
                    epoch: 0,
                    previous: None,
                },
            );
            return Ok((producer_id, 0));
        };
        if let Some(claimed) = claimed {
            if current.previous == Some(claimed) {
                return Ok(current.current());
            }
            if claimed != current.current() {
                return Err(BrokerError::ProducerFenced(format!(
                    "transactional id {tid}: producer {} epoch {} is not the current producer {} epoch {}",
                    claimed.0, claimed.1, current.producer_id, current.epoch
                )));
            }
        }
        // An exhausted epoch continues under a new producer id.
        let (producer_id, epoch) = if current.epoch >= i16::MAX - 1 {
            (self.next_id(&mut state)?, 0)
        } else {
            (current.producer_id, current.epoch + 1)
        };
        state.transactional.insert(
            tid.to_string(),
            TransactionalProducer {
                producer_id,
                epoch,
                previous: Some(current.current()),
            },
        );
        Ok((producer_id, epoch))
    }

    /// The next unused producer id; a new block is persisted before its first id is used.
    fn next_id(&self, state: &mut AllocatorState) -> Result<i64, BrokerError> {
        if state.next_id >= state.block_end {
            let block_end = state.block_end + BLOCK_SIZE;
            durable_fs::write_atomically(
                self.storage.as_ref(),
                &self.path,
                block_end.to_string().as_bytes(),
            )?;
            state.block_end = block_end;
        }
        let id = state.next_id;
        state.next_id += 1;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allocator(dir: &tempfile::TempDir) -> ProducerIdAllocator {
        ProducerIdAllocator::open(
            Arc::new(sluice_log::RealDisk),
            dir.path().join("producer_id_block"),
        )
        .expect("open")
    }

    /// Claiming someone else's id and epoch gets a fresh id, never a bump of theirs (on the
    /// old code the claim got (id, epoch + 1), fencing the real producer).
    #[test]
    fn an_idempotent_producer_cannot_be_fenced_by_claiming_its_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ids = allocator(&dir);
        let (victim, epoch) = ids.allocate(None, None).expect("victim");
        let (other, other_epoch) = ids.allocate(None, Some((victim, epoch))).expect("claim");
        assert_ne!(other, victim);
        assert_eq!(other_epoch, 0);
    }

    #[test]
    fn a_transactional_id_bumps_only_from_its_current_epoch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ids = allocator(&dir);
        let (id, epoch) = ids.allocate(Some("tx"), None).expect("first");
        assert_eq!(epoch, 0);
        // The holder of the current pair bumps it.
        assert_eq!(ids.allocate(Some("tx"), Some((id, 0))).ok(), Some((id, 1)));
        // The same call retried (its answer lost) gets the same answer, no second bump.
        assert_eq!(ids.allocate(Some("tx"), Some((id, 0))).ok(), Some((id, 1)));
        // A guessed epoch, or another id, is fenced.
        for claim in [(id, 5), (id + 1, 1)] {
            assert!(matches!(
                ids.allocate(Some("tx"), Some(claim)),
                Err(BrokerError::ProducerFenced(_))
            ));
        }
        assert_eq!(ids.allocate(Some("tx"), Some((id, 1))).ok(), Some((id, 2)));
        // A new instance (no claim) fences whoever holds it.
        assert_eq!(ids.allocate(Some("tx"), None).ok(), Some((id, 3)));
    }

    #[test]
    fn ids_stay_unique_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = allocator(&dir).allocate(None, None).expect("id").0;
        let second = allocator(&dir).allocate(None, None).expect("id").0;
        assert!(second > first);
    }
}
