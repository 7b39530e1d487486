//! Decompressing the records of batches a producer compressed (Kafka's codecs in the batch
//! attributes: 1 gzip, 2 snappy, 3 lz4, 4 zstd), for the key index and for queries. The log
//! stores and serves such batches as they came; only the people-facing paths decode them.
//!
//! Snappy comes in two framings: the Java client's (xerial `SnappyOutputStream`: a 16-byte
//! header starting `\x82SNAPPY\0`, then blocks of a big-endian u32 length and a raw snappy
//! block) and raw snappy (librdkafka); both are accepted, as the Java consumer does. Kafka's
//! lz4 is the LZ4 frame format.
//!
//! Decompressed bytes are bounded (a small batch must not take the broker's memory): at most
//! [`DECOMPRESSION_FACTOR`] times the larger of the compressed batch and 1 MiB (the default
//! `max.message.bytes`). A batch was at most its topic's `max.message.bytes` when appended, so
//! the bound follows the topic's limit without needing its configuration at every reader
//! (recovery, truncation, queries). Past it the batch is refused with
//! `LogError::DecompressedTooLarge`.

use std::io::Read;

use crate::LogError;

/// Decompressed bytes allowed per compressed byte of a batch (see the module documentation).
pub const DECOMPRESSION_FACTOR: usize = 64;
/// The floor of the bound's base: Kafka's default `max.message.bytes`, so small batches of
/// very compressible records still decode.
const DECOMPRESSION_BASE_BYTES_MIN: usize = 1 << 20;

const SNAPPY_JAVA_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
const SNAPPY_JAVA_HEADER_BYTES: usize = 16;

/// The most bytes a batch of `batch_bytes` may decompress to.
pub fn decompressed_bytes_max(batch_bytes: usize) -> usize {
    batch_bytes
        .max(DECOMPRESSION_BASE_BYTES_MIN)
        .saturating_mul(DECOMPRESSION_FACTOR)
}

/// The codec's name for errors and logs.
pub fn codec_name(codec: u8) -> &'static str {
    match codec {
        0 => "uncompressed",
        1 => "gzip",
        2 => "snappy",
        3 => "lz4",
        4 => "zstd",
        _ => "unknown-codec",
    }
}

/// Decompresses the records section of a batch compressed with `codec`, at most `bytes_max`.
pub(crate) fn decompress(
    codec: u8,
    compressed: &[u8],
    bytes_max: usize,
) -> Result<Vec<u8>, LogError> {
    let name = codec_name(codec);
    let failed = |reason: String| LogError::Decompression {
        codec: name,
        reason,
    };
    match codec {
        1 => read_bounded(
            flate2::read::MultiGzDecoder::new(compressed),
            name,
            bytes_max,
        ),
        2 => decompress_snappy(compressed, bytes_max),
        3 => read_bounded(
            lz4_flex::frame::FrameDecoder::new(compressed),
            name,
            bytes_max,
        ),
        4 => {
            let decoder = zstd::stream::read::Decoder::with_buffer(compressed)
                .map_err(|e| failed(e.to_string()))?;
            read_bounded(decoder, name, bytes_max)
        }
        _ => Err(failed(format!("codec {codec} is not a Kafka codec"))),
    }
}

/// Reads `reader` to its end, failing past `bytes_max` without reading much further.
fn read_bounded(
    reader: impl Read,
    codec: &'static str,
    bytes_max: usize,
) -> Result<Vec<u8>, LogError> {
    let mut out = Vec::new();
    reader
        .take(bytes_max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| LogError::Decompression {
            codec,
            reason: e.to_string(),
        })?;
    if out.len() > bytes_max {
        return Err(LogError::DecompressedTooLarge {
            codec,
            limit: bytes_max,
        });
    }
    Ok(out)
}

fn decompress_snappy(compressed: &[u8], bytes_max: usize) -> Result<Vec<u8>, LogError> {
    let failed = |reason: String| LogError::Decompression {
        codec: "snappy",
        reason,
    };
    let mut out = Vec::new();
    // Each block states its decompressed length: checked before anything is allocated.
    let append_block = |block: &[u8], out: &mut Vec<u8>| -> Result<(), LogError> {
        let length = snap::raw::decompress_len(block).map_err(|e| failed(e.to_string()))?;
        let start = out.len();
        if start.saturating_add(length) > bytes_max {
            return Err(LogError::DecompressedTooLarge {
                codec: "snappy",
                limit: bytes_max,
            });
        }
        out.resize(start + length, 0);
        let written = snap::raw::Decoder::new()
            .decompress(block, &mut out[start..])
            .map_err(|e| failed(e.to_string()))?;
        out.truncate(start + written);
        Ok(())
    };
    if !compressed.starts_with(SNAPPY_JAVA_MAGIC) {
        append_block(compressed, &mut out)?;
        return Ok(out);
    }
    let mut rest = compressed
        .get(SNAPPY_JAVA_HEADER_BYTES..)
        .ok_or_else(|| failed("snappy-java header cut short".into()))?;
    while !rest.is_empty() {
        let Some((length, tail)) = rest.split_first_chunk::<4>() else {
            return Err(failed("snappy-java block length cut short".into()));
        };
        let length = u32::from_be_bytes(*length) as usize;
        let block = tail
            .get(..length)
            .ok_or_else(|| failed(format!("snappy-java block of {length} bytes cut short")))?;
        append_block(block, &mut out)?;
        rest = &tail[length..];
    }
    Ok(out)
}

/// Compresses `records` (a batch's records section) with `codec`, as a producer would: for
/// tests and benchmarks that need compressed batches.
pub fn compress(codec: u8, records: &[u8]) -> Result<Vec<u8>, LogError> {
    use std::io::Write;
    let name = codec_name(codec);
    let failed = |e: std::io::Error| LogError::Decompression {
        codec: name,
        reason: e.to_string(),
    };
    match codec {
        0 => Ok(records.to_vec()),
        1 => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(records).map_err(failed)?;
            encoder.finish().map_err(failed)
        }
        2 => snap::raw::Encoder::new()
            .compress_vec(records)
            .map_err(|e| failed(std::io::Error::other(e))),
        3 => {
            let mut encoder = lz4_flex::frame::FrameEncoder::new(Vec::new());
            encoder.write_all(records).map_err(failed)?;
            encoder
                .finish()
                .map_err(|e| failed(std::io::Error::other(e)))
        }
        4 => zstd::bulk::compress(records, 3).map_err(failed),
        _ => Err(LogError::Decompression {
            codec: name,
            reason: format!("codec {codec} is not a Kafka codec"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_round_trips_and_snappy_java_framing_decodes() {
        let records: Vec<u8> = (0..10_000u32).flat_map(|n| n.to_be_bytes()).collect();
        for codec in 1..=4 {
            let compressed = compress(codec, &records).unwrap();
            assert_eq!(
                decompress(codec, &compressed, 1 << 20).unwrap(),
                records,
                "{codec}"
            );
        }
        // The Java client's framing: header, then length-prefixed raw blocks.
        let mut framed = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01".to_vec();
        for chunk in records.chunks(16 * 1024) {
            let block = snap::raw::Encoder::new().compress_vec(chunk).unwrap();
            framed.extend_from_slice(&(block.len() as u32).to_be_bytes());
            framed.extend_from_slice(&block);
        }
        assert_eq!(decompress(2, &framed, 1 << 20).unwrap(), records);
        framed.truncate(framed.len() - 3);
        assert!(matches!(
            decompress(2, &framed, 1 << 20),
            Err(LogError::Decompression { .. })
        ));
    }

    #[test]
    fn a_payload_past_the_bound_is_refused_by_every_codec() {
        let zeros = vec![0u8; 300_000];
        for codec in 1..=4 {
            let compressed = compress(codec, &zeros).unwrap();
            assert!(
                matches!(
                    decompress(codec, &compressed, 100_000),
                    Err(LogError::DecompressedTooLarge { limit: 100_000, .. })
                ),
                "codec {codec}"
            );
        }
    }

    #[test]
    fn garbage_or_cut_payloads_are_errors_not_panics() {
        let records = b"some records, repeated, some records, repeated".repeat(50);
        for codec in 1..=4 {
            let compressed = compress(codec, &records).unwrap();
            let cut = &compressed[..compressed.len() / 2];
            assert!(decompress(codec, cut, 1 << 20).is_err(), "cut {codec}");
            let garbage: Vec<u8> = (0..200u32).map(|n| (n * 7919 % 251) as u8).collect();
            assert!(
                decompress(codec, &garbage, 1 << 20).is_err(),
                "garbage {codec}"
            );
        }
        assert!(decompress(5, b"x", 10).is_err());
    }
}
