//! The header every benchmark message starts with: the send time and the run it belongs to.
//!
//! Layout (little endian): `[0..8)` send time in nanoseconds on the run clock, `[8..16)` run id.
//! The run id lets consumers tell this run's messages from anything else on the topic.
//! AMQP runs extend it with a publisher index and sequence number ([`SequencedHeader`]).

pub const PAYLOAD_HEADER_BYTES: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadHeader {
    pub sent_ns: u64,
    pub run_id: u64,
}

impl PayloadHeader {
    /// Writes the header into the first bytes of `payload`, which must be long enough.
    pub fn write_to(self, payload: &mut [u8]) {
        payload[..8].copy_from_slice(&self.sent_ns.to_le_bytes());
        payload[8..PAYLOAD_HEADER_BYTES].copy_from_slice(&self.run_id.to_le_bytes());
    }

    /// Reads the header, or `None` when the payload is too short to carry one.
    pub fn read_from(payload: &[u8]) -> Option<Self> {
        let header = payload.get(..PAYLOAD_HEADER_BYTES)?;
        let (sent_ns, run_id) = header.split_at(8);
        Some(Self {
            sent_ns: u64::from_le_bytes(sent_ns.try_into().ok()?),
            run_id: u64::from_le_bytes(run_id.try_into().ok()?),
        })
    }
}

/// Bytes of a header that also says which publisher sent the message and its sequence number.
pub const SEQUENCED_HEADER_BYTES: usize = PAYLOAD_HEADER_BYTES + 12;

/// The header AMQP runs write: the [`PayloadHeader`], then (little endian) `[16..20)` the
/// publisher index and `[20..28)` its sequence number, counted from 0. Consumers use the pair
/// to count duplicates and confirmed messages that never arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequencedHeader {
    pub header: PayloadHeader,
    pub publisher: u32,
    pub sequence: u64,
}

impl SequencedHeader {
    /// Writes the header into the first bytes of `payload`, which must be long enough.
    pub fn write_to(self, payload: &mut [u8]) {
        self.header.write_to(payload);
        payload[PAYLOAD_HEADER_BYTES..PAYLOAD_HEADER_BYTES + 4]
            .copy_from_slice(&self.publisher.to_le_bytes());
        payload[PAYLOAD_HEADER_BYTES + 4..SEQUENCED_HEADER_BYTES]
            .copy_from_slice(&self.sequence.to_le_bytes());
    }

    /// Reads the header, or `None` when the payload is too short to carry one.
    pub fn read_from(payload: &[u8]) -> Option<Self> {
        let header = PayloadHeader::read_from(payload)?;
        let rest = payload.get(PAYLOAD_HEADER_BYTES..SEQUENCED_HEADER_BYTES)?;
        let (publisher, sequence) = rest.split_at(4);
        Some(Self {
            header,
            publisher: u32::from_le_bytes(publisher.try_into().ok()?),
            sequence: u64::from_le_bytes(sequence.try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequenced_header_round_trips_and_keeps_the_plain_header() {
        let sequenced = SequencedHeader {
            header: PayloadHeader {
                sent_ns: 42,
                run_id: 7,
            },
            publisher: 3,
            sequence: 1 << 40,
        };
        let mut payload = vec![0u8; 100];
        sequenced.write_to(&mut payload);
        assert_eq!(SequencedHeader::read_from(&payload), Some(sequenced));
        assert_eq!(PayloadHeader::read_from(&payload), Some(sequenced.header));
        assert_eq!(
            SequencedHeader::read_from(&payload[..SEQUENCED_HEADER_BYTES - 1]),
            None
        );
    }

    #[test]
    fn header_round_trips_through_payload() {
        let header = PayloadHeader {
            sent_ns: 0x0102_0304_0506_0708,
            run_id: u64::MAX - 7,
        };
        let mut payload = vec![0u8; 100];
        header.write_to(&mut payload);
        assert_eq!(PayloadHeader::read_from(&payload), Some(header));
    }

    #[test]
    fn short_payload_has_no_header() {
        assert_eq!(
            PayloadHeader::read_from(&[0u8; PAYLOAD_HEADER_BYTES - 1]),
            None
        );
    }
}
