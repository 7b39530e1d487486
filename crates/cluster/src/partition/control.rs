//! Raft entries without records (blank, membership) as Kafka control batches.
//!
//! A control batch has the attributes' control bit set and one record whose key is
//! `version: i16, type: i16` (big endian), as Kafka's transaction markers. Kafka uses types 0
//! and 1 (abort, commit) for markers and 2..=6 inside KRaft; consumers skip control batches
//! and ignore types they do not know. Ours:
//! - [`CONTROL_TYPE_RAFT_BLANK`] (100): a new leader's blank entry; no value.
//! - [`CONTROL_TYPE_RAFT_MEMBERSHIP`] (101): the value is the membership as JSON.
//! - [`CONTROL_TYPE_LOG_START`] (102): a normal entry (Kafka's DeleteRecords) whose value is
//!   the new log start offset (i64 big endian); every replica moves its log start to it when
//!   the entry applies, so consumers of any replica stop seeing the deleted records.
//! - [`CONTROL_TYPE_ENTRY_GROUP`] (103): the head of a normal entry that holds several
//!   producer batches (see [`PartitionEntry::group`]); the value is how many batches follow
//!   it in the same entry (u32 big endian). It lets recovery find entry boundaries.
//!
//! Producers may not send these types (see [`is_reserved_control`]). Any other batch, control or not (a transaction marker written by the broker is a control
//! batch too), is a normal entry carrying that batch.

use bytes::Bytes;
use openraft::{EntryPayload, Membership};
use sluice_log::{decode_records, BatchHeader, Record, RecordBatchBuilder};

use super::{PartitionEntry, PartitionRaft, PartitionRaftError};
use crate::{NodeAddress, NodeId};

/// Record header of a Raft control batch naming the leader of its term (node id, 8 bytes BE).
pub const LEADER_HEADER: &str = "raft.leader";

pub const CONTROL_TYPE_RAFT_BLANK: i16 = 100;
pub const CONTROL_TYPE_RAFT_MEMBERSHIP: i16 = 101;
pub const CONTROL_TYPE_LOG_START: i16 = 102;
pub const CONTROL_TYPE_ENTRY_GROUP: i16 = 103;
const CONTROL_KEY_VERSION: i16 = 0;

/// The batch bytes stored for an entry's payload (base offset and epoch still to be assigned).
/// `leader` is the node id of the entry's leader (written into control batches). Every
/// replica encodes the entry itself, so the bytes depend on the entry alone: control batches
/// carry no timestamp (-1, Kafka's "none"), or replicas would store different bytes.
pub fn encode_payload(
    payload: &EntryPayload<PartitionRaft>,
    leader: NodeId,
) -> Result<Vec<u8>, PartitionRaftError> {
    let mut bytes = Vec::with_capacity(payload_len_hint(payload));
    encode_payload_into(payload, leader, &mut bytes)?;
    Ok(bytes)
}

/// [`encode_payload`] appended to `out`: a normal entry's batches are copied once.
pub fn encode_payload_into(
    payload: &EntryPayload<PartitionRaft>,
    leader: NodeId,
    out: &mut Vec<u8>,
) -> Result<(), PartitionRaftError> {
    match payload {
        EntryPayload::Normal(entry) => out.extend_from_slice(&entry.batch),
        EntryPayload::Blank => {
            out.extend_from_slice(&control_batch(CONTROL_TYPE_RAFT_BLANK, None, leader))
        }
        EntryPayload::Membership(membership) => {
            let value = serde_json::to_vec(membership)
                .map_err(|e| PartitionRaftError::Encode(e.to_string()))?;
            out.extend_from_slice(&control_batch(
                CONTROL_TYPE_RAFT_MEMBERSHIP,
                Some(value),
                leader,
            ));
        }
    }
    Ok(())
}

/// The bytes [`encode_payload`] gives a normal entry exactly, and a control entry roughly
/// (they are small): for sizing buffers.
pub fn payload_len_hint(payload: &EntryPayload<PartitionRaft>) -> usize {
    match payload {
        EntryPayload::Normal(entry) => entry.batch.len(),
        EntryPayload::Blank | EntryPayload::Membership(_) => 256,
    }
}

fn control_batch(control_type: i16, value: Option<Vec<u8>>, leader: NodeId) -> Vec<u8> {
    let mut key = Vec::with_capacity(4);
    key.extend_from_slice(&CONTROL_KEY_VERSION.to_be_bytes());
    key.extend_from_slice(&control_type.to_be_bytes());
    let mut builder = RecordBatchBuilder::new();
    builder.control().push(Record {
        offset: 0,
        timestamp: -1,
        key: Some(key),
        value,
        headers: vec![(
            LEADER_HEADER.to_string(),
            Some(leader.to_be_bytes().to_vec()),
        )],
    });
    builder.build()
}

/// The batch of a normal entry that moves every replica's log start to `offset` (DeleteRecords),
/// proposed by `leader`.
pub fn log_start_batch(offset: i64, leader: NodeId) -> Bytes {
    Bytes::from(control_batch(
        CONTROL_TYPE_LOG_START,
        Some(offset.to_be_bytes().to_vec()),
        leader,
    ))
}

/// The head batch of an entry of `count` producer batches, proposed by `leader`.
pub fn entry_group_batch(count: u32, leader: NodeId) -> Vec<u8> {
    control_batch(
        CONTROL_TYPE_ENTRY_GROUP,
        Some(count.to_be_bytes().to_vec()),
        leader,
    )
}

/// How many batches follow an entry group's head batch; `None` for any other batch.
pub fn entry_group_count(header: &BatchHeader, batch: &[u8]) -> Option<u32> {
    if !header.is_control() {
        return None;
    }
    // A group has two batches at least: a count below 1 is no group head.
    match raft_control_type(batch)? {
        (CONTROL_TYPE_ENTRY_GROUP, record) => {
            let bytes: [u8; 4] = record.value?.try_into().ok()?;
            Some(u32::from_be_bytes(bytes)).filter(|&n| n >= 1)
        }
        _ => None,
    }
}

/// The headers of the whole batches `bytes` holds (an entry's bytes), without CRC checks; an
/// error when the bytes do not split into whole batches.
pub fn entry_headers(bytes: &[u8]) -> Result<Vec<BatchHeader>, PartitionRaftError> {
    let mut headers = Vec::new();
    let mut position = 0;
    while position < bytes.len() {
        let header = BatchHeader::parse(&bytes[position..])?;
        position += header.total_bytes();
        headers.push(header);
    }
    if position != bytes.len() {
        return Err(PartitionRaftError::InvalidEntry(format!(
            "an entry of {} bytes ends inside a batch",
            bytes.len()
        )));
    }
    Ok(headers)
}

/// How many batches an entry's stored bytes hold (1, or an entry group's head and the
/// batches it counts); an error when the bytes do not split into whole batches or a head's
/// count does not match what follows it.
pub fn entry_batch_count(bytes: &[u8]) -> Result<usize, PartitionRaftError> {
    let headers = entry_headers(bytes)?;
    let expected = headers
        .first()
        .map(|head| entry_group_count(head, bytes).map_or(1, |members| members as usize + 1));
    if expected != Some(headers.len()) {
        return Err(PartitionRaftError::InvalidEntry(format!(
            "an entry of {} bytes holds {} batches, its head says {expected:?}",
            bytes.len(),
            headers.len()
        )));
    }
    Ok(headers.len())
}

/// The log start a [`CONTROL_TYPE_LOG_START`] batch asks for; `None` for any other batch.
pub fn log_start_request(header: &BatchHeader, batch: &[u8]) -> Option<i64> {
    if !header.is_control() {
        return None;
    }
    match raft_control_type(batch)? {
        (CONTROL_TYPE_LOG_START, record) => {
            let bytes: [u8; 8] = record.value?.try_into().ok()?;
            Some(i64::from_be_bytes(bytes))
        }
        _ => None,
    }
}

/// The leader node id a Raft control batch names (`batch` is one whole batch).
pub fn control_leader(header: &BatchHeader, batch: &[u8]) -> Option<NodeId> {
    if !header.is_control() {
        return None;
    }
    let (_, record) = raft_control_type(batch)?;
    let (_, value) = record
        .headers
        .into_iter()
        .find(|(key, _)| key == LEADER_HEADER)?;
    let bytes: [u8; 8] = value?.try_into().ok()?;
    Some(NodeId::from_be_bytes(bytes))
}

/// The control type of a control batch's single record, if it is one of ours. Only the first
/// batch of `batch` is looked at (an entry group's head).
fn raft_control_type(batch: &[u8]) -> Option<(i16, Record)> {
    let header = BatchHeader::parse(batch).ok()?;
    if !header.is_control() || header.record_count != 1 {
        return None;
    }
    let records = decode_records(batch.get(..header.total_bytes())?).ok()?;
    let [record] = <[Record; 1]>::try_from(records).ok()?;
    let key = record.key.as_deref()?;
    let (version, control_type) = match key {
        [v0, v1, t0, t1] => (
            i16::from_be_bytes([*v0, *v1]),
            i16::from_be_bytes([*t0, *t1]),
        ),
        _ => return None,
    };
    (version == CONTROL_KEY_VERSION
        && matches!(
            control_type,
            CONTROL_TYPE_RAFT_BLANK
                | CONTROL_TYPE_RAFT_MEMBERSHIP
                | CONTROL_TYPE_LOG_START
                | CONTROL_TYPE_ENTRY_GROUP
        ))
    .then_some((control_type, record))
}

/// Whether a batch (as a producer or the broker would propose it) is one of the control types
/// reserved for Raft's own entries: such a batch must not be proposed as data.
pub fn is_reserved_control(header: &BatchHeader, batch: &[u8]) -> bool {
    header.is_control() && raft_control_type(batch).is_some()
}

/// The entry payload stored bytes hold: exactly one whole, CRC-checked batch, or an entry
/// group (its head batch, whose header is `header`, and the batches it counts).
pub fn decode_payload(
    header: &BatchHeader,
    batch: Bytes,
) -> Result<EntryPayload<PartitionRaft>, PartitionRaftError> {
    if !header.is_control() {
        return Ok(EntryPayload::Normal(PartitionEntry::unchecked(batch)));
    }
    match raft_control_type(&batch) {
        None => Ok(EntryPayload::Normal(PartitionEntry::unchecked(batch))),
        Some((CONTROL_TYPE_RAFT_BLANK, _)) => Ok(EntryPayload::Blank),
        Some((CONTROL_TYPE_LOG_START | CONTROL_TYPE_ENTRY_GROUP, _)) => {
            Ok(EntryPayload::Normal(PartitionEntry::unchecked(batch)))
        }
        Some((_, record)) => {
            let value = record.value.ok_or_else(|| {
                PartitionRaftError::Decode("membership control record without a value".into())
            })?;
            let membership: Membership<NodeId, NodeAddress> = serde_json::from_slice(&value)
                .map_err(|e| PartitionRaftError::Decode(format!("membership: {e}")))?;
            Ok(EntryPayload::Membership(membership))
        }
    }
}
