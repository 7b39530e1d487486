//! Share sessions (KIP-932): a share consumer names the partitions it fetches once, with
//! session epoch 0; later ShareFetch requests (epoch 1, 2, ...) name only partitions to add
//! or forget, and acknowledgements may travel alone in ShareAcknowledge with the same epochs.
//! Epoch -1 closes the session, and the member's acquired records go back to the group; so
//! does the connection that opened the session dropping (a client killed mid-way), as
//! Kafka's share session cache does on a disconnect.
//! Sessions are keyed by (group, member), in memory, per listener: after a broker restart a
//! client gets SHARE_SESSION_NOT_FOUND and opens a new one.

use std::collections::HashMap;

use kafka_protocol::ResponseError;
use parking_lot::Mutex;
use uuid::Uuid;

/// Kafka's `group.share.max.share.sessions`.
const SESSIONS_MAX: usize = 2000;
pub(crate) const INITIAL_EPOCH: i32 = 0;
pub(crate) const FINAL_EPOCH: i32 = -1;

/// A partition as a share session names it.
pub(crate) type SessionPartition = (Uuid, i32);

#[derive(Debug)]
struct Session {
    next_epoch: i32,
    partitions: Vec<SessionPartition>,
    /// The connection that opened the session.
    connection_id: u64,
}

/// The share sessions of one Kafka listener.
#[derive(Debug, Default)]
pub struct ShareSessions {
    sessions: Mutex<HashMap<(String, String), Session>>,
}

/// What a request may do with its session.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SessionStep {
    /// Fetch from these partitions (the whole session).
    Fetch(Vec<SessionPartition>),
    /// The session is closed: acknowledge, release, fetch nothing.
    Close(Vec<SessionPartition>),
}

impl ShareSessions {
    /// A ShareFetch: opens, updates or closes the member's session, or refuses with the error
    /// the client must see.
    pub(crate) fn fetch(
        &self,
        connection_id: u64,
        group_id: &str,
        member_id: &str,
        epoch: i32,
        added: &[SessionPartition],
        forgotten: &[SessionPartition],
    ) -> Result<SessionStep, ResponseError> {
        let key = (group_id.to_string(), member_id.to_string());
        let mut sessions = self.sessions.lock();
        match epoch {
            INITIAL_EPOCH => {
                if !sessions.contains_key(&key) && sessions.len() >= SESSIONS_MAX {
                    return Err(ResponseError::ShareSessionLimitReached);
                }
                let mut partitions = Vec::new();
                for partition in added {
                    if !partitions.contains(partition) {
                        partitions.push(*partition);
                    }
                }
                sessions.insert(
                    key,
                    Session {
                        next_epoch: 1,
                        partitions: partitions.clone(),
                        connection_id,
                    },
                );
                Ok(SessionStep::Fetch(partitions))
            }
            FINAL_EPOCH => match sessions.remove(&key) {
                Some(session) => Ok(SessionStep::Close(session.partitions)),
                None => Err(ResponseError::ShareSessionNotFound),
            },
            epoch => {
                let Some(session) = sessions.get_mut(&key) else {
                    return Err(ResponseError::ShareSessionNotFound);
                };
                if epoch != session.next_epoch {
                    return Err(ResponseError::InvalidShareSessionEpoch);
                }
                session.next_epoch = next(epoch);
                session.partitions.retain(|p| !forgotten.contains(p));
                for partition in added {
                    if !session.partitions.contains(partition) {
                        session.partitions.push(*partition);
                    }
                }
                Ok(SessionStep::Fetch(session.partitions.clone()))
            }
        }
    }

    /// A ShareAcknowledge: moves the session's epoch on, or closes it (epoch -1). It cannot
    /// open one.
    pub(crate) fn acknowledge(
        &self,
        group_id: &str,
        member_id: &str,
        epoch: i32,
    ) -> Result<SessionStep, ResponseError> {
        let key = (group_id.to_string(), member_id.to_string());
        let mut sessions = self.sessions.lock();
        match epoch {
            INITIAL_EPOCH => Err(ResponseError::InvalidShareSessionEpoch),
            FINAL_EPOCH => match sessions.remove(&key) {
                Some(session) => Ok(SessionStep::Close(session.partitions)),
                None => Err(ResponseError::ShareSessionNotFound),
            },
            epoch => {
                let Some(session) = sessions.get_mut(&key) else {
                    return Err(ResponseError::ShareSessionNotFound);
                };
                if epoch != session.next_epoch {
                    return Err(ResponseError::InvalidShareSessionEpoch);
                }
                session.next_epoch = next(epoch);
                Ok(SessionStep::Fetch(session.partitions.clone()))
            }
        }
    }
}

impl ShareSessions {
    /// The connection `connection_id` closed: its sessions end. Returns their (group, member)
    /// keys, whose acquired records go back to the group.
    pub(crate) fn disconnect(&self, connection_id: u64) -> Vec<(String, String)> {
        let mut sessions = self.sessions.lock();
        let closed: Vec<(String, String)> = sessions
            .iter()
            .filter(|(_, session)| session.connection_id == connection_id)
            .map(|(key, _)| key.clone())
            .collect();
        for key in &closed {
            sessions.remove(key);
        }
        closed
    }
}

/// Epochs wrap from i32::MAX to 1, never to 0 or -1.
fn next(epoch: i32) -> i32 {
    if epoch == i32::MAX {
        1
    } else {
        epoch + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_open_advance_and_close_a_session() {
        let sessions = ShareSessions::default();
        let a = (Uuid::from_u128(1), 0);
        let b = (Uuid::from_u128(1), 1);
        assert_eq!(
            sessions.fetch(7, "g", "m", 1, &[], &[]),
            Err(ResponseError::ShareSessionNotFound)
        );
        assert_eq!(
            sessions.fetch(7, "g", "m", 0, &[a], &[]),
            Ok(SessionStep::Fetch(vec![a]))
        );
        assert_eq!(
            sessions.fetch(7, "g", "m", 2, &[], &[]),
            Err(ResponseError::InvalidShareSessionEpoch)
        );
        assert_eq!(
            sessions.fetch(7, "g", "m", 1, &[b], &[a]),
            Ok(SessionStep::Fetch(vec![b]))
        );
        assert_eq!(
            sessions.acknowledge("g", "m", 0),
            Err(ResponseError::InvalidShareSessionEpoch)
        );
        assert_eq!(
            sessions.acknowledge("g", "m", 2),
            Ok(SessionStep::Fetch(vec![b]))
        );
        assert_eq!(
            sessions.acknowledge("g", "m", -1),
            Ok(SessionStep::Close(vec![b]))
        );
        assert_eq!(
            sessions.fetch(7, "g", "m", 3, &[], &[]),
            Err(ResponseError::ShareSessionNotFound)
        );
    }

    #[test]
    fn a_dropped_connection_ends_the_sessions_it_opened() {
        let sessions = ShareSessions::default();
        let a = (Uuid::from_u128(1), 0);
        assert!(sessions.fetch(1, "g", "m1", 0, &[a], &[]).is_ok());
        assert!(sessions.fetch(1, "g", "m2", 0, &[a], &[]).is_ok());
        assert!(sessions.fetch(2, "g", "m3", 0, &[a], &[]).is_ok());
        let mut closed = sessions.disconnect(1);
        closed.sort();
        assert_eq!(
            closed,
            vec![
                ("g".to_string(), "m1".to_string()),
                ("g".to_string(), "m2".to_string())
            ]
        );
        assert_eq!(
            sessions.fetch(1, "g", "m1", 1, &[], &[]),
            Err(ResponseError::ShareSessionNotFound)
        );
        assert_eq!(
            sessions.fetch(2, "g", "m3", 1, &[], &[]),
            Ok(SessionStep::Fetch(vec![a]))
        );
        assert!(sessions.disconnect(1).is_empty());
    }
}
