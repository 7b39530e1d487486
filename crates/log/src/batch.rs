//! Kafka record-batch v2 ("magic 2"): the one on-disk format for every protocol.
//!
//! Layout (big endian): baseOffset i64 | batchLength i32 | partitionLeaderEpoch i32 | magic i8 |
//! crc u32 (CRC-32C of everything after it) | attributes i16 | lastOffsetDelta i32 |
//! baseTimestamp i64 | maxTimestamp i64 | producerId i64 | producerEpoch i16 | baseSequence i32 |
//! recordCount i32 | records...
//! baseOffset and partitionLeaderEpoch are outside the CRC, so the broker may rewrite them.
//!
//! Everything here parses untrusted bytes: every length is checked against the buffer before it
//! is used, arithmetic on decoded values never overflows, and nothing panics.

use crate::LogError;

/// Size of the fixed batch header (61 bytes).
pub const BATCH_HEADER_BYTES: usize = 61;

/// Smallest legal `batchLength`: the header after the batchLength field, with no records.
pub const BATCH_LENGTH_MIN: i32 = (BATCH_HEADER_BYTES - BATCH_LENGTH_PREFIX_BYTES) as i32;

/// Largest batch we ever accept from disk or the wire (`batchLength + 12`). A larger length field
/// means a torn or corrupt batch, not data.
pub const BATCH_BYTES_MAX: usize = 64 << 20;

/// baseOffset + batchLength: the bytes not counted by batchLength.
pub(crate) const BATCH_LENGTH_PREFIX_BYTES: usize = 12;

/// Byte offset of partitionLeaderEpoch within a batch.
pub(crate) const PARTITION_LEADER_EPOCH_OFFSET: usize = 12;

/// The CRC covers everything from the attributes field to the end of the batch.
pub(crate) const CRC_START_OFFSET: usize = 21;

/// Byte offsets of the crc and maxTimestamp fields within a batch.
const CRC_OFFSET: usize = 17;
const MAX_TIMESTAMP_OFFSET: usize = 35;

/// The timestampType bit of the attributes: set means LogAppendTime.
const ATTRIBUTE_LOG_APPEND_TIME: i16 = 0x08;

/// The control bit of the attributes: a control batch (transaction marker, or a consensus
/// entry without records), which consumers skip.
const ATTRIBUTE_CONTROL: i16 = 0x20;
/// The transactional bit of the attributes: the batch belongs to a transaction.
const ATTRIBUTE_TRANSACTIONAL: i16 = 0x10;

const MAGIC_V2: i8 = 2;

/// The parsed fixed header of one record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchHeader {
    pub base_offset: i64,
    /// Bytes after the batchLength field (so the whole batch is `batch_length + 12`).
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    /// Parses the header at the start of `buf` (no CRC check).
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, LogError> {
        let Some(header) = buf.get(..BATCH_HEADER_BYTES) else {
            return Err(LogError::InvalidBatch(format!(
                "batch header needs {BATCH_HEADER_BYTES} bytes, have {}",
                buf.len()
            )));
        };
        let mut reader = FieldReader { buf: header };
        Ok(BatchHeader {
            base_offset: reader.i64(),
            batch_length: reader.i32(),
            partition_leader_epoch: reader.i32(),
            magic: reader.i8(),
            crc: reader.i32() as u32,
            attributes: reader.i16(),
            last_offset_delta: reader.i32(),
            base_timestamp: reader.i64(),
            max_timestamp: reader.i64(),
            producer_id: reader.i64(),
            producer_epoch: reader.i16(),
            base_sequence: reader.i32(),
            record_count: reader.i32(),
        })
    }
    pub fn last_offset(&self) -> i64 {
        self.base_offset.wrapping_add(self.last_offset_delta as i64)
    }
    pub fn total_bytes(&self) -> usize {
        // A negative length never passes validation; saturate rather than wrap if asked anyway.
        (self.batch_length.max(0) as usize).saturating_add(BATCH_LENGTH_PREFIX_BYTES)
    }
    /// 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd.
    pub fn compression(&self) -> u8 {
        (self.attributes & 0x07) as u8
    }
    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTRIBUTE_TRANSACTIONAL != 0
    }
    pub fn is_control(&self) -> bool {
        self.attributes & ATTRIBUTE_CONTROL != 0
    }
    /// timestampType bit: LogAppendTime.
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & ATTRIBUTE_LOG_APPEND_TIME != 0
    }
    pub fn last_sequence(&self) -> i32 {
        if self.base_sequence < 0 {
            return -1;
        }
        // Sequences wrap at i32::MAX like Kafka's.
        ((self.base_sequence as i64 + self.last_offset_delta as i64) % (i32::MAX as i64 + 1)) as i32
    }

    /// Offsets this batch occupies (`lastOffsetDelta + 1`).
    pub fn offset_count(&self) -> i64 {
        self.last_offset_delta as i64 + 1
    }

    /// Checks the header fields that do not need the batch body: length bounds, magic, counts.
    /// `available` is how many bytes of the batch (from its first byte) exist.
    pub(crate) fn check_shape(&self, available: usize) -> Result<(), LogError> {
        if self.batch_length < BATCH_LENGTH_MIN {
            return Err(invalid(format!(
                "batchLength {} below minimum",
                self.batch_length
            )));
        }
        let total = self.total_bytes();
        if total > BATCH_BYTES_MAX {
            return Err(invalid(format!(
                "batch of {total} bytes exceeds {BATCH_BYTES_MAX}"
            )));
        }
        if total > available {
            return Err(invalid(format!(
                "batch of {total} bytes truncated to {available}"
            )));
        }
        if self.magic != MAGIC_V2 {
            return Err(invalid(format!("unsupported magic {}", self.magic)));
        }
        if self.last_offset_delta < 0 {
            return Err(invalid(format!(
                "negative lastOffsetDelta {}",
                self.last_offset_delta
            )));
        }
        // Compaction can leave fewer records than offsets, never more.
        if self.record_count < 0 || self.record_count as i64 > self.offset_count() {
            return Err(invalid(format!(
                "recordCount {} inconsistent with lastOffsetDelta {}",
                self.record_count, self.last_offset_delta
            )));
        }
        Ok(())
    }
}

/// Validates a buffer of one or more concatenated batches as a producer sent them: complete
/// lengths, magic 2, CRC-32C, record count consistent with lastOffsetDelta. Returns each header.
pub fn validate_batches(buf: &[u8]) -> Result<Vec<BatchHeader>, LogError> {
    validate_batches_with_limit(buf, usize::MAX, true)
}

/// [`validate_batches`] that also rejects any single batch bigger than `batch_bytes_max`
/// (checked before the CRC so an oversized batch costs no checksum work). Without
/// `check_crc` only the shapes are checked: for batches whose CRC the caller already checked.
pub(crate) fn validate_batches_with_limit(
    buf: &[u8],
    batch_bytes_max: usize,
    check_crc: bool,
) -> Result<Vec<BatchHeader>, LogError> {
    let mut headers = Vec::new();
    let mut position = 0;
    while position < buf.len() {
        let rest = &buf[position..];
        let header = BatchHeader::parse(rest)?;
        if header.batch_length >= BATCH_LENGTH_MIN && header.total_bytes() > batch_bytes_max {
            return Err(LogError::BatchTooLarge {
                size: header.total_bytes(),
                limit: batch_bytes_max,
            });
        }
        header.check_shape(rest.len())?;
        let total = header.total_bytes();
        if check_crc {
            verify_crc(&header, &rest[..total])?;
        }
        headers.push(header);
        position += total;
    }
    Ok(headers)
}

/// Compares the stored CRC with CRC-32C over `batch[21..]` (`batch` is exactly one whole batch).
pub(crate) fn verify_crc(header: &BatchHeader, batch: &[u8]) -> Result<(), LogError> {
    let computed = crc32c::crc32c(batch.get(CRC_START_OFFSET..).unwrap_or_default());
    if computed != header.crc {
        return Err(LogError::CorruptBatch {
            stored: header.crc,
            computed,
        });
    }
    Ok(())
}

/// Rewrites the two fields outside the CRC that the log owns.
pub(crate) fn assign_base_offset(batch: &mut [u8], base_offset: i64, leader_epoch: i32) {
    if batch.len() >= BATCH_HEADER_BYTES {
        batch[0..8].copy_from_slice(&base_offset.to_be_bytes());
        batch[PARTITION_LEADER_EPOCH_OFFSET..PARTITION_LEADER_EPOCH_OFFSET + 4]
            .copy_from_slice(&leader_epoch.to_be_bytes());
    }
}

fn invalid(message: String) -> LogError {
    LogError::InvalidBatch(message)
}

/// Big-endian reader over a slice whose length the caller already checked.
struct FieldReader<'a> {
    buf: &'a [u8],
}

impl FieldReader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        // The caller sized the buffer for the whole header, so this never comes up short; if it
        // ever did, zeros are returned rather than panicking.
        if let Some(bytes) = self.buf.get(..N) {
            out.copy_from_slice(bytes);
            self.buf = &self.buf[N..];
        }
        out
    }
    fn i8(&mut self) -> i8 {
        i8::from_be_bytes(self.take())
    }
    fn i16(&mut self) -> i16 {
        i16::from_be_bytes(self.take())
    }
    fn i32(&mut self) -> i32 {
        i32::from_be_bytes(self.take())
    }
    fn i64(&mut self) -> i64 {
        i64::from_be_bytes(self.take())
    }
}

/// Marks every batch in `buf` as LogAppendTime stamped with `now_ms` (Kafka's
/// `message.timestamp.type=LogAppendTime`). Both fields lie inside the CRC, so each batch's CRC
/// is recomputed: validate the batches first, or corruption would be sealed in.
pub fn stamp_log_append_time(buf: &mut [u8], now_ms: i64) -> Result<(), LogError> {
    let mut position = 0;
    while position < buf.len() {
        let header = BatchHeader::parse(&buf[position..])?;
        let end = position
            .checked_add(header.total_bytes())
            .filter(|&end| end <= buf.len())
            .ok_or_else(|| {
                LogError::InvalidBatch("batch runs past the end of the buffer".into())
            })?;
        let batch = &mut buf[position..end];
        let attributes = header.attributes | ATTRIBUTE_LOG_APPEND_TIME;
        batch[CRC_START_OFFSET..CRC_START_OFFSET + 2].copy_from_slice(&attributes.to_be_bytes());
        batch[MAX_TIMESTAMP_OFFSET..MAX_TIMESTAMP_OFFSET + 8]
            .copy_from_slice(&now_ms.to_be_bytes());
        let crc = crc32c::crc32c(&batch[CRC_START_OFFSET..]);
        batch[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        position = end;
    }
    Ok(())
}

/// One decoded record (uncompressed batches only; used for internal logs and queries).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Builds one uncompressed v2 batch (base offset 0; the log assigns the real one on append).
#[derive(Debug, Default)]
pub struct RecordBatchBuilder {
    records: Vec<Record>,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    control: bool,
    transactional: bool,
}

impl RecordBatchBuilder {
    pub fn new() -> Self {
        RecordBatchBuilder {
            records: Vec::new(),
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            control: false,
            transactional: false,
        }
    }
    /// Marks the batch as a control batch (attributes bit 5): consumers skip it.
    pub fn control(&mut self) -> &mut Self {
        self.control = true;
        self
    }
    /// Marks the batch as part of a transaction (attributes bit 4).
    pub fn transactional(&mut self) -> &mut Self {
        self.transactional = true;
        self
    }
    /// Record `offset` fields are ignored: records get consecutive offset deltas.
    pub fn push(&mut self, record: Record) -> &mut Self {
        self.records.push(record);
        self
    }
    pub fn producer(
        &mut self,
        producer_id: i64,
        producer_epoch: i16,
        base_sequence: i32,
    ) -> &mut Self {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self
    }
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
    /// The records pushed, given back (to keep them when an append of the batch failed).
    pub fn into_records(self) -> Vec<Record> {
        self.records
    }
    /// Encodes the batch with a valid CRC-32C. An empty builder gives a batch with no records
    /// that still occupies one offset (lastOffsetDelta 0), since Kafka batches cannot be empty.
    pub fn build(&self) -> Vec<u8> {
        let base_timestamp = self.records.first().map_or(-1, |r| r.timestamp);
        let max_timestamp = self.records.iter().map(|r| r.timestamp).max().unwrap_or(-1);
        let last_offset_delta = self.records.len().saturating_sub(1) as i32;

        let mut out = Vec::with_capacity(BATCH_HEADER_BYTES + self.records.len() * 32);
        out.extend_from_slice(&0i64.to_be_bytes()); // baseOffset
        out.extend_from_slice(&0i32.to_be_bytes()); // batchLength, patched below
        out.extend_from_slice(&(-1i32).to_be_bytes()); // partitionLeaderEpoch
        out.push(MAGIC_V2 as u8);
        out.extend_from_slice(&0u32.to_be_bytes()); // crc, patched below
                                                    // attributes: uncompressed, CreateTime, maybe control and transactional
        let mut attributes: i16 = 0;
        if self.control {
            attributes |= ATTRIBUTE_CONTROL;
        }
        if self.transactional {
            attributes |= ATTRIBUTE_TRANSACTIONAL;
        }
        out.extend_from_slice(&attributes.to_be_bytes());
        out.extend_from_slice(&last_offset_delta.to_be_bytes());
        out.extend_from_slice(&base_timestamp.to_be_bytes());
        out.extend_from_slice(&max_timestamp.to_be_bytes());
        out.extend_from_slice(&self.producer_id.to_be_bytes());
        out.extend_from_slice(&self.producer_epoch.to_be_bytes());
        out.extend_from_slice(&self.base_sequence.to_be_bytes());
        out.extend_from_slice(&(self.records.len() as i32).to_be_bytes());

        let mut body = Vec::new();
        for (index, record) in self.records.iter().enumerate() {
            body.clear();
            body.push(0); // record attributes
            put_varlong(&mut body, record.timestamp.wrapping_sub(base_timestamp));
            put_varint(&mut body, index as i32);
            put_bytes(&mut body, record.key.as_deref());
            put_bytes(&mut body, record.value.as_deref());
            put_varint(&mut body, record.headers.len() as i32);
            for (key, value) in &record.headers {
                put_bytes(&mut body, Some(key.as_bytes()));
                put_bytes(&mut body, value.as_deref());
            }
            put_varint(&mut out, body.len() as i32);
            out.extend_from_slice(&body);
        }

        let batch_length = (out.len() - BATCH_LENGTH_PREFIX_BYTES) as i32;
        out[8..12].copy_from_slice(&batch_length.to_be_bytes());
        let crc = crc32c::crc32c(&out[CRC_START_OFFSET..]);
        out[17..21].copy_from_slice(&crc.to_be_bytes());
        out
    }

    /// [`RecordBatchBuilder::build`] with the records section compressed by `codec` (1 gzip,
    /// 2 snappy, 3 lz4, 4 zstd), as a producer with `compression.type` sends it.
    pub fn build_compressed(&self, codec: u8) -> Result<Vec<u8>, LogError> {
        let plain = self.build();
        let compressed = crate::compression::compress(codec, &plain[BATCH_HEADER_BYTES..])?;
        let mut out = plain[..BATCH_HEADER_BYTES].to_vec();
        out[21..23].copy_from_slice(&i16::from(codec & 0x07).to_be_bytes());
        out.extend_from_slice(&compressed);
        let batch_length = (out.len() - BATCH_LENGTH_PREFIX_BYTES) as i32;
        out[8..12].copy_from_slice(&batch_length.to_be_bytes());
        let crc = crc32c::crc32c(&out[CRC_START_OFFSET..]);
        out[17..21].copy_from_slice(&crc.to_be_bytes());
        Ok(out)
    }
}

/// The records section of one whole batch, decompressed when the producer compressed it
/// (bounded, see `compression`).
fn records_section<'a>(
    header: &BatchHeader,
    batch: &'a [u8],
) -> Result<std::borrow::Cow<'a, [u8]>, LogError> {
    let section = batch.get(BATCH_HEADER_BYTES..).unwrap_or_default();
    match header.compression() {
        0 => Ok(std::borrow::Cow::Borrowed(section)),
        codec => crate::compression::decompress(
            codec,
            section,
            crate::compression::decompressed_bytes_max(batch.len()),
        )
        .map(std::borrow::Cow::Owned),
    }
}

/// Decodes every record of every batch in `buf`, decompressing compressed ones (bounded: see
/// `compression`; a payload that does not decode gives `LogError::Decompression`).
pub fn decode_records(buf: &[u8]) -> Result<Vec<Record>, LogError> {
    decode_batches(buf, true)
}

/// [`decode_records`] without control batches (transaction markers, consensus entries): the
/// records a reader outside Kafka's protocol (an AMQP stream queue) delivers.
pub fn decode_data_records(buf: &[u8]) -> Result<Vec<Record>, LogError> {
    decode_batches(buf, false)
}

fn decode_batches(buf: &[u8], with_control: bool) -> Result<Vec<Record>, LogError> {
    let mut records = Vec::new();
    for batch in whole_batches(buf) {
        let (header, bytes) = batch?;
        if with_control || !header.is_control() {
            decode_batch_records(&header, bytes, &mut records)?;
        }
    }
    Ok(records)
}

/// Each whole batch of `buf` (batches as a read returns them or a request carries them) with
/// its header; an error, and nothing after it, for a cut or malformed one.
fn whole_batches(buf: &[u8]) -> impl Iterator<Item = Result<(BatchHeader, &[u8]), LogError>> {
    let mut position = 0;
    std::iter::from_fn(move || {
        let rest = buf.get(position..).filter(|rest| !rest.is_empty())?;
        let parsed = BatchHeader::parse(rest).and_then(|header| {
            header.check_shape(rest.len())?;
            Ok(header)
        });
        match parsed {
            Ok(header) => {
                let total = header.total_bytes();
                position += total;
                Some(Ok((header, &rest[..total])))
            }
            Err(error) => {
                position = buf.len();
                Some(Err(error))
            }
        }
    })
}

/// Decodes the records of one whole batch (`batch` is exactly the batch bytes).
pub(crate) fn decode_batch_records(
    header: &BatchHeader,
    batch: &[u8],
    records: &mut Vec<Record>,
) -> Result<(), LogError> {
    let section = records_section(header, batch)?;
    let mut body = VarReader { buf: &section };
    for _ in 0..header.record_count {
        let length = body.varint()?;
        let mut record = VarReader {
            buf: body
                .bytes(length)?
                .ok_or_else(|| invalid("null record".into()))?,
        };
        let _attributes = record.bytes(1)?;
        let timestamp_delta = record.varlong()?;
        let offset_delta = record.varint()?;
        let key = record.length_prefixed()?.map(<[u8]>::to_vec);
        let value = record.length_prefixed()?.map(<[u8]>::to_vec);
        let header_count = record.varint()?;
        if header_count < 0 {
            return Err(invalid(format!("negative header count {header_count}")));
        }
        // Each header takes at least two bytes, so the remaining bytes bound the allocation.
        let mut headers = Vec::with_capacity((header_count as usize).min(record.buf.len() / 2));
        for _ in 0..header_count {
            let key_len = record.varint()?;
            let key_bytes = record
                .bytes(key_len)?
                .ok_or_else(|| invalid("null header key".into()))?;
            let key = String::from_utf8(key_bytes.to_vec())
                .map_err(|_| invalid("header key is not UTF-8".into()))?;
            let value = record.length_prefixed()?.map(<[u8]>::to_vec);
            headers.push((key, value));
        }
        records.push(Record {
            offset: header.base_offset.wrapping_add(offset_delta as i64),
            timestamp: if header.is_log_append_time() {
                header.max_timestamp
            } else {
                header.base_timestamp.wrapping_add(timestamp_delta)
            },
            key,
            value,
            headers,
        });
    }
    Ok(())
}

/// Walks the records of one whole batch (decompressed first if it is compressed), calling
/// `visit(offset_delta, key, header_value)` for each record with its key and the value of its
/// first header named `header_name` (what the key index needs, at append cost).
pub(crate) fn visit_record_keys(
    header: &BatchHeader,
    batch: &[u8],
    header_name: &[u8],
    mut visit: impl FnMut(i32, Option<&[u8]>, Option<&[u8]>),
) -> Result<(), LogError> {
    let section = records_section(header, batch)?;
    let mut body = VarReader { buf: &section };
    for _ in 0..header.record_count {
        let length = body.varint()?;
        let mut record = VarReader {
            buf: body
                .bytes(length)?
                .ok_or_else(|| invalid("null record".into()))?,
        };
        let _attributes = record.bytes(1)?;
        let _timestamp_delta = record.varlong()?;
        let offset_delta = record.varint()?;
        let key = record.length_prefixed()?;
        let _value = record.length_prefixed()?;
        let header_count = record.varint()?;
        let mut found = None;
        for _ in 0..header_count.max(0) {
            let name = record.length_prefixed()?;
            let value = record.length_prefixed()?;
            if found.is_none() && name == Some(header_name) {
                found = value;
            }
        }
        visit(offset_delta, key, found);
    }
    Ok(())
}

/// One record of a batch as stored, for the cleaner: its bytes (length prefix included, so
/// records can be copied into a rebuilt batch without re-encoding), its offset delta, its key
/// and whether its value is null (a tombstone).
pub(crate) struct RawRecord<'a> {
    pub bytes: &'a [u8],
    pub offset_delta: i32,
    pub key: Option<&'a [u8]>,
    pub tombstone: bool,
}

/// Walks the records of one whole batch (decompressed first if it is compressed).
pub(crate) fn visit_raw_records(
    header: &BatchHeader,
    batch: &[u8],
    mut visit: impl FnMut(RawRecord<'_>),
) -> Result<(), LogError> {
    let section = records_section(header, batch)?;
    let mut body = VarReader { buf: &section };
    for _ in 0..header.record_count {
        let before = body.buf;
        let length = body.varint()?;
        let record_bytes = body
            .bytes(length)?
            .ok_or_else(|| invalid("null record".into()))?;
        let whole = &before[..before.len() - body.buf.len()];
        let mut record = VarReader { buf: record_bytes };
        let _attributes = record.bytes(1)?;
        let _timestamp_delta = record.varlong()?;
        let offset_delta = record.varint()?;
        let key = record.length_prefixed()?;
        let value = record.length_prefixed()?;
        visit(RawRecord {
            bytes: whole,
            offset_delta,
            key,
            tombstone: value.is_none(),
        });
    }
    Ok(())
}

/// A copy of the whole batch `batch` holding only `records` (concatenated [`RawRecord`] bytes,
/// `record_count` of them): the same base offset, lastOffsetDelta, timestamps, producer fields
/// and codec, with a new length, count and CRC. This is how Kafka's cleaner keeps offsets and
/// producer sequences while dropping records. A batch left with no records is uncompressed.
pub(crate) fn rebuild_batch(
    batch: &[u8],
    records: &[u8],
    record_count: i32,
) -> Result<Vec<u8>, LogError> {
    let header = BatchHeader::parse(batch)?;
    let mut out = batch[..BATCH_HEADER_BYTES].to_vec();
    let codec = header.compression();
    if record_count > 0 && codec != 0 {
        out.extend_from_slice(&crate::compression::compress(codec, records)?);
    } else {
        let attributes = header.attributes & !0x07;
        out[21..23].copy_from_slice(&attributes.to_be_bytes());
        out.extend_from_slice(records);
    }
    out[BATCH_HEADER_BYTES - 4..BATCH_HEADER_BYTES].copy_from_slice(&record_count.to_be_bytes());
    let batch_length = i32::try_from(out.len() - BATCH_LENGTH_PREFIX_BYTES)
        .map_err(|_| invalid("rebuilt batch too large".into()))?;
    out[8..12].copy_from_slice(&batch_length.to_be_bytes());
    let crc = crc32c::crc32c(&out[CRC_START_OFFSET..]);
    out[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(out)
}

/// The offset after the last batch of `batches` (whole batches, as a read returns them), or
/// `None` when there are none. A reader that went through every record of a read resumes
/// here: compaction can leave a batch without records at or past the offset asked for, and a
/// marker has none a data reader wants, so the records alone may not move it on.
pub fn offset_after_batches(batches: &[u8]) -> Result<Option<i64>, LogError> {
    let mut end = None;
    for batch in whole_batches(batches) {
        let (header, _) = batch?;
        end = Some(header.last_offset().wrapping_add(1));
    }
    Ok(end)
}

/// The offset of the first record without a key in `batches` (whole, validated batches;
/// control batches are skipped), or `None`. A compacted topic refuses such records, as Kafka.
pub fn first_keyless_record(batches: &[u8]) -> Result<Option<i64>, LogError> {
    for batch in whole_batches(batches) {
        let (header, bytes) = batch?;
        if header.is_control() {
            continue;
        }
        let mut found = None;
        visit_raw_records(&header, bytes, |record| {
            if record.key.is_none() && found.is_none() {
                found = Some(header.base_offset.wrapping_add(record.offset_delta as i64));
            }
        })?;
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

/// Reads Kafka varints (zigzag) and length-prefixed byte strings, bounds-checked.
struct VarReader<'a> {
    buf: &'a [u8],
}

impl<'a> VarReader<'a> {
    fn unsigned(&mut self, max_bytes: usize) -> Result<u64, LogError> {
        let mut value: u64 = 0;
        for index in 0..max_bytes {
            let Some((&byte, rest)) = self.buf.split_first() else {
                return Err(invalid("truncated varint".into()));
            };
            self.buf = rest;
            value |= ((byte & 0x7f) as u64) << (7 * index);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(invalid("varint too long".into()))
    }
    fn varint(&mut self) -> Result<i32, LogError> {
        let raw = self.unsigned(5)? as u32;
        Ok(((raw >> 1) as i32) ^ -((raw & 1) as i32))
    }
    fn varlong(&mut self) -> Result<i64, LogError> {
        let raw = self.unsigned(10)?;
        Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
    }
    /// A varint length followed by that many bytes (-1: null).
    fn length_prefixed(&mut self) -> Result<Option<&'a [u8]>, LogError> {
        let length = self.varint()?;
        self.bytes(length)
    }
    /// `length` -1 means null; other negative lengths are invalid.
    fn bytes(&mut self, length: i32) -> Result<Option<&'a [u8]>, LogError> {
        if length == -1 {
            return Ok(None);
        }
        let length =
            usize::try_from(length).map_err(|_| invalid(format!("negative length {length}")))?;
        if length > self.buf.len() {
            return Err(invalid(format!(
                "length {length} exceeds the {} bytes left",
                self.buf.len()
            )));
        }
        let (bytes, rest) = self.buf.split_at(length);
        self.buf = rest;
        Ok(Some(bytes))
    }
}

fn put_varint(out: &mut Vec<u8>, value: i32) {
    put_unsigned(out, ((value << 1) ^ (value >> 31)) as u32 as u64);
}

fn put_varlong(out: &mut Vec<u8>, value: i64) {
    put_unsigned(out, ((value << 1) ^ (value >> 63)) as u64);
}

fn put_unsigned(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_bytes(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varint(out, -1),
        Some(bytes) => {
            put_varint(out, bytes.len() as i32);
            out.extend_from_slice(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample_batch() -> Vec<u8> {
        let mut builder = RecordBatchBuilder::new();
        builder.producer(7, 1, 42);
        builder.push(Record {
            timestamp: 1_000,
            key: Some(b"k1".to_vec()),
            value: Some(b"v1".to_vec()),
            ..Default::default()
        });
        builder.push(Record {
            timestamp: 900,
            key: None,
            value: Some(vec![9; 300]),
            headers: vec![("h".into(), Some(b"x".to_vec())), ("n".into(), None)],
            ..Default::default()
        });
        builder.push(Record {
            timestamp: 1_500,
            key: Some(Vec::new()),
            value: None,
            ..Default::default()
        });
        builder.build()
    }

    #[test]
    fn stamping_log_append_time_keeps_every_batch_valid() {
        let mut two_batches = sample_batch();
        two_batches.extend_from_slice(&sample_batch());
        stamp_log_append_time(&mut two_batches, 77_000).unwrap();
        let headers = validate_batches(&two_batches).unwrap();
        assert_eq!(headers.len(), 2);
        for header in headers {
            assert!(header.is_log_append_time());
            assert_eq!(header.max_timestamp, 77_000);
            assert_eq!(header.producer_id, 7, "nothing else in the header changes");
        }
        let records = decode_records(&two_batches).unwrap();
        assert!(records.iter().all(|r| r.timestamp == 77_000));
        assert!(stamp_log_append_time(&mut two_batches[..100], 1).is_err());
    }

    #[test]
    fn build_validate_decode_roundtrip() {
        let batch = sample_batch();
        let headers = validate_batches(&batch).unwrap();
        assert_eq!(headers.len(), 1);
        let header = headers[0];
        assert_eq!(header.total_bytes(), batch.len());
        assert_eq!(header.record_count, 3);
        assert_eq!(header.last_offset_delta, 2);
        assert_eq!(header.base_timestamp, 1_000);
        assert_eq!(header.max_timestamp, 1_500);
        assert_eq!(
            (
                header.producer_id,
                header.producer_epoch,
                header.base_sequence
            ),
            (7, 1, 42)
        );
        assert_eq!(header.last_sequence(), 44);

        let records = decode_records(&batch).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].offset, 0);
        assert_eq!(records[1].offset, 1);
        assert_eq!(records[1].timestamp, 900);
        assert_eq!(records[1].value.as_deref(), Some(&[9u8; 300][..]));
        assert_eq!(records[1].headers[1], ("n".to_string(), None));
        assert_eq!(records[2].key, Some(Vec::new()));
        assert_eq!(records[2].value, None);
    }

    #[test]
    fn concatenated_batches_validate() {
        let mut buf = sample_batch();
        buf.extend_from_slice(&sample_batch());
        assert_eq!(validate_batches(&buf).unwrap().len(), 2);
        assert_eq!(decode_records(&buf).unwrap().len(), 6);
    }

    #[test]
    fn crc_flip_is_detected_anywhere_under_the_crc() {
        let batch = sample_batch();
        for position in CRC_START_OFFSET..batch.len() {
            let mut corrupt = batch.clone();
            corrupt[position] ^= 0x01;
            match validate_batches(&corrupt) {
                Err(LogError::CorruptBatch { .. }) | Err(LogError::InvalidBatch(_)) => {}
                other => panic!("flip at {position} not detected: {other:?}"),
            }
        }
        // The CRC field itself.
        let mut corrupt = batch.clone();
        corrupt[18] ^= 0x80;
        assert!(matches!(
            validate_batches(&corrupt),
            Err(LogError::CorruptBatch { .. })
        ));
    }

    #[test]
    fn truncated_buffers_are_rejected_without_panic() {
        let batch = sample_batch();
        for length in 1..batch.len() {
            assert!(
                validate_batches(&batch[..length]).is_err(),
                "length {length}"
            );
            assert!(decode_records(&batch[..length]).is_err(), "length {length}");
        }
        assert!(validate_batches(&[]).unwrap().is_empty());
    }

    #[test]
    fn oversized_batch_is_rejected_before_crc() {
        let batch = sample_batch();
        assert!(matches!(
            validate_batches_with_limit(&batch, batch.len() - 1, true),
            Err(LogError::BatchTooLarge { .. })
        ));
    }

    #[test]
    fn bad_magic_and_negative_counts_are_invalid() {
        let mut batch = sample_batch();
        batch[16] = 1;
        assert!(matches!(
            validate_batches(&batch),
            Err(LogError::InvalidBatch(_))
        ));
        let mut batch = sample_batch();
        batch[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(matches!(
            validate_batches(&batch),
            Err(LogError::InvalidBatch(_))
        ));
    }

    #[test]
    fn batch_marked_compressed_but_not_compressed_is_an_error() {
        let mut batch = sample_batch();
        batch[22] |= 0x02; // attributes low byte: snappy
        let crc = crc32c::crc32c(&batch[CRC_START_OFFSET..]);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(validate_batches(&batch).is_ok());
        assert!(matches!(
            decode_records(&batch),
            Err(LogError::Decompression { .. } | LogError::InvalidBatch(_))
        ));
    }

    #[test]
    fn compressed_batches_decode_to_the_records_built() {
        let mut builder = RecordBatchBuilder::new();
        for n in 0..20u8 {
            builder.push(Record {
                offset: i64::from(n),
                timestamp: 5 + i64::from(n),
                key: Some(vec![n; 3]),
                value: Some(vec![n; 40]),
                headers: vec![("h".into(), Some(vec![n]))],
            });
        }
        let plain = decode_records(&builder.build()).unwrap();
        for codec in 1..=4 {
            let batch = builder.build_compressed(codec).unwrap();
            let header = validate_batches(&batch).unwrap()[0];
            assert_eq!(header.compression(), codec);
            assert_eq!(decode_records(&batch).unwrap(), plain, "codec {codec}");
        }
    }

    fn arbitrary_record() -> impl Strategy<Value = Record> {
        (
            any::<i64>(),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200)),
            proptest::collection::vec(
                (
                    "[a-z]{0,8}",
                    proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
                ),
                0..4,
            ),
        )
            .prop_map(|(timestamp, key, value, headers)| Record {
                offset: 0,
                timestamp,
                key,
                value,
                headers,
            })
    }

    proptest! {
        #[test]
        fn roundtrip_arbitrary_records(records in proptest::collection::vec(arbitrary_record(), 1..20)) {
            let mut builder = RecordBatchBuilder::new();
            for record in &records {
                builder.push(record.clone());
            }
            let batch = builder.build();
            let headers = validate_batches(&batch).unwrap();
            prop_assert_eq!(headers[0].record_count as usize, records.len());
            let decoded = decode_records(&batch).unwrap();
            for (index, (decoded, original)) in decoded.iter().zip(&records).enumerate() {
                prop_assert_eq!(decoded.offset, index as i64);
                prop_assert_eq!(decoded.timestamp, original.timestamp);
                prop_assert_eq!(&decoded.key, &original.key);
                prop_assert_eq!(&decoded.value, &original.value);
                prop_assert_eq!(&decoded.headers, &original.headers);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = validate_batches(&bytes);
            let _ = decode_records(&bytes);
        }

        #[test]
        fn mutated_batch_never_panics(position in 0usize..400, value in any::<u8>()) {
            let mut batch = sample_batch();
            let position = position % batch.len();
            batch[position] = value;
            let _ = validate_batches(&batch);
            let _ = decode_records(&batch);
        }
    }
}
