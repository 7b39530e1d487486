//! Hands out idempotent-producer ids that stay unique across restarts: ids are reserved in
//! blocks, and the end of the current block is persisted before any id from it is used.

use std::collections::HashMap;
use std::path::PathBuf;

use parking_lot::Mutex;

use crate::topic_store::write_atomically;
use crate::BrokerError;

const BLOCK_SIZE: i64 = 1000;

struct AllocatorState {
    next_id: i64,
    block_end: i64,
    /// transactional.id -> (producer id, epoch): re-initialising bumps the epoch (fencing).
    transactional: HashMap<String, (i64, i16)>,
}

pub struct ProducerIdAllocator {
    path: PathBuf,
    state: Mutex<AllocatorState>,
}

impl ProducerIdAllocator {
    pub fn open(path: PathBuf) -> Result<Self, BrokerError> {
        let block_end = match std::fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse::<i64>()
                .map_err(|e| BrokerError::Storage(format!("{}: {e}", path.display())))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => 0,
            Err(error) => return Err(BrokerError::Storage(format!("{}: {error}", path.display()))),
        };
        Ok(ProducerIdAllocator {
            path,
            state: Mutex::new(AllocatorState {
                next_id: block_end,
                block_end,
                transactional: HashMap::new(),
            }),
        })
    }

    /// A fresh (producer id, epoch 0), or for a transactional id the same id with a bumped epoch.
    pub fn allocate(&self, transactional_id: Option<&str>) -> Result<(i64, i16), BrokerError> {
        let mut state = self.state.lock();
        if let Some(tid) = transactional_id {
            if let Some((id, epoch)) = state.transactional.get(tid).copied() {
                let next = if epoch >= i16::MAX - 1 {
                    None
                } else {
                    Some((id, epoch + 1))
                };
                if let Some(next) = next {
                    state.transactional.insert(tid.to_string(), next);
                    return Ok(next);
                }
            }
        }
        if state.next_id >= state.block_end {
            let block_end = state.block_end + BLOCK_SIZE;
            write_atomically(&self.path, block_end.to_string().as_bytes())?;
            state.block_end = block_end;
        }
        let id = state.next_id;
        state.next_id += 1;
        if let Some(tid) = transactional_id {
            state.transactional.insert(tid.to_string(), (id, 0));
        }
        Ok((id, 0))
    }
}
