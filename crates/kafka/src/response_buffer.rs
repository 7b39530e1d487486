//! A response encoded as a list of chunks, so that the record batches of a Fetch response are
//! sent from the buffers the log read them into instead of being copied into the response
//! (and copied again each time that buffer grew). The encoder still writes every other field
//! into an ordinary buffer; only a `put_slice` of bytes lying inside one of the buffers named
//! up front becomes a reference to them (`Bytes::slice_ref`, no copy).

use bytes::buf::UninitSlice;
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::protocol::buf::ByteBufMut;

/// Slices at least this big are referenced; smaller ones are cheaper to copy than a chunk.
const REFERENCE_BYTES_MIN: usize = 2048;

pub(crate) struct ResponseBuffer {
    /// Finished chunks, in order.
    chunks: Vec<Bytes>,
    /// Bytes in `chunks`.
    chunked_bytes: usize,
    /// What the encoder is writing now, after the chunks.
    current: BytesMut,
    /// Buffers whose bytes are referenced rather than copied (a Fetch response's records).
    referable: Vec<Bytes>,
}

impl ResponseBuffer {
    pub fn new(referable: Vec<Bytes>) -> ResponseBuffer {
        ResponseBuffer {
            chunks: Vec::new(),
            chunked_bytes: 0,
            current: BytesMut::with_capacity(256),
            referable,
        }
    }

    /// A buffer for one frame: it starts with the size prefix, filled in by `into_frame`.
    pub fn framed(referable: Vec<Bytes>) -> ResponseBuffer {
        let mut buffer = ResponseBuffer::new(referable);
        buffer.current.put_i32(0);
        buffer
    }

    /// The chunks of a frame started with `framed`, its size prefix filled in: one chunk
    /// when nothing was referenced.
    pub fn into_frame(mut self) -> Vec<Bytes> {
        let size = (self.len().saturating_sub(4) as i32).to_be_bytes();
        if self.chunks.is_empty() {
            self.current[0..4].copy_from_slice(&size);
            return vec![self.current.freeze()];
        }
        self.finish_current();
        // The placeholder opens the first chunk: the prefix goes in a chunk of its own.
        self.chunks[0] = self.chunks[0].slice(4..);
        self.chunks.insert(0, Bytes::copy_from_slice(&size));
        self.chunks
    }

    pub fn len(&self) -> usize {
        self.chunked_bytes + self.current.len()
    }

    /// The chunks to send, in order.
    #[cfg(test)]
    fn into_chunks(mut self) -> Vec<Bytes> {
        self.finish_current();
        self.chunks
    }

    /// The referable buffer that `src` lies in, as a reference to exactly `src`.
    fn reference(&self, src: &[u8]) -> Option<Bytes> {
        if src.len() < REFERENCE_BYTES_MIN {
            return None;
        }
        let start = src.as_ptr() as usize;
        self.referable
            .iter()
            .find(|buffer| {
                let buffer_start = buffer.as_ptr() as usize;
                start >= buffer_start && start + src.len() <= buffer_start + buffer.len()
            })
            .map(|buffer| buffer.slice_ref(src))
    }

    fn finish_current(&mut self) {
        if !self.current.is_empty() {
            let part = self.current.split().freeze();
            self.chunked_bytes += part.len();
            self.chunks.push(part);
        }
    }

    /// Copies the chunks back in front of the current buffer. Only for an encoder going back
    /// into bytes already chunked (`seek`/`range` behind them), which no response does; it
    /// keeps such an encoder correct, merely without the saving.
    fn merge(&mut self) {
        if self.chunks.is_empty() {
            return;
        }
        let mut merged = BytesMut::with_capacity(self.len());
        for chunk in self.chunks.drain(..) {
            merged.extend_from_slice(&chunk);
        }
        merged.extend_from_slice(&self.current);
        self.current = merged;
        self.chunked_bytes = 0;
    }
}

// SAFETY: every method forwards to `current` (a `BytesMut`), whose `BufMut` contract holds;
// `put_slice` either forwards too or appends a whole chunk after finishing `current`.
unsafe impl BufMut for ResponseBuffer {
    fn remaining_mut(&self) -> usize {
        self.current.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, count: usize) {
        // SAFETY: the caller initialised `count` bytes of `chunk_mut`, which is `current`'s.
        unsafe { self.current.advance_mut(count) }
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        self.current.chunk_mut()
    }

    fn put_slice(&mut self, src: &[u8]) {
        match self.reference(src) {
            Some(bytes) => {
                self.finish_current();
                self.chunked_bytes += bytes.len();
                self.chunks.push(bytes);
            }
            None => self.current.put_slice(src),
        }
    }
}

impl ByteBufMut for ResponseBuffer {
    fn offset(&self) -> usize {
        self.len()
    }

    fn seek(&mut self, offset: usize) {
        if offset < self.chunked_bytes {
            self.merge();
        }
        self.current.resize(offset - self.chunked_bytes, 0);
    }

    fn range(&mut self, range: std::ops::Range<usize>) -> &mut [u8] {
        if range.start < self.chunked_bytes {
            self.merge();
        }
        let base = self.chunked_bytes;
        &mut self.current[range.start - base..range.end - base]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_slices_of_referable_buffers_are_referenced_and_the_rest_copied() {
        let records = Bytes::from(vec![7u8; 10_000]);
        let mut buffer = ResponseBuffer::new(vec![records.clone()]);
        buffer.put_i32(5);
        buffer.put_slice(&records[100..9_000]);
        buffer.put_slice(&records[0..10]); // small: copied
        buffer.put_slice(&[1u8; 5_000]); // not referable: copied
        assert_eq!(buffer.offset(), 4 + 8_900 + 10 + 5_000);
        let chunks = buffer.into_chunks();
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[1].as_ptr(), records[100..].as_ptr(), "not copied");
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let mut expected = 5i32.to_be_bytes().to_vec();
        expected.extend_from_slice(&records[100..9_000]);
        expected.extend_from_slice(&records[0..10]);
        expected.extend_from_slice(&[1u8; 5_000]);
        assert_eq!(joined, expected);
    }

    #[test]
    fn a_frame_gets_its_size_prefix_with_or_without_references() {
        let records = Bytes::from(vec![5u8; 3_000]);
        let mut small = ResponseBuffer::framed(vec![records.clone()]);
        small.put_i16(1);
        assert_eq!(
            small.into_frame(),
            vec![Bytes::from_static(&[0, 0, 0, 2, 0, 1])]
        );
        let mut big = ResponseBuffer::framed(vec![records.clone()]);
        big.put_i16(1);
        big.put_slice(&records);
        big.put_i16(2);
        let chunks = big.into_frame();
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(&joined[..4], &(3_004i32).to_be_bytes());
        assert_eq!(&joined[4..6], &[0, 1]);
        assert_eq!(&joined[6..3_006], &records[..]);
        assert_eq!(&joined[3_006..], &[0, 2]);
    }

    #[test]
    fn going_back_into_chunked_bytes_still_encodes_correctly() {
        let records = Bytes::from(vec![3u8; 4_096]);
        let mut buffer = ResponseBuffer::new(vec![records.clone()]);
        let gap = buffer.put_gap(4);
        buffer.put_slice(&records);
        buffer.gap_buf(gap).copy_from_slice(&[9, 9, 9, 9]);
        let joined: Vec<u8> = buffer
            .into_chunks()
            .iter()
            .flat_map(|c| c.iter().copied())
            .collect();
        assert_eq!(&joined[..4], &[9, 9, 9, 9]);
        assert_eq!(&joined[4..], &records[..]);
    }
}
