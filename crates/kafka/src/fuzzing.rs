//! Entry point for the Kafka request fuzz target in `fuzz/` and its corpus replay test (which
//! runs on the stable toolchain). Decoding untrusted bytes must never panic, nor allocate beyond
//! what the bytes justify (see `vendor/kafka-protocol`).

use bytes::{Buf, Bytes};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind};
use kafka_protocol::protocol::Decodable;

use crate::api_versions::SUPPORTED;

/// Decodes `data` as a request of every advertised API and version that its first two bytes
/// select (so the fuzzer reaches every decoder without guessing keys), header and body, as the
/// connection does; then as the raw frame it claims to be.
pub fn request(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let selector = u16::from_be_bytes([data[0], data[1]]) as usize;
    let (api_key, min, max) = SUPPORTED[selector % SUPPORTED.len()];
    let span = (max - min + 1) as usize;
    let version = min + ((selector / SUPPORTED.len()) % span) as i16;
    decode(api_key, version, Bytes::copy_from_slice(&data[2..]));

    // The frame as a client sends it: api key, version, then the header's remaining fields.
    if data.len() >= 4 {
        let mut frame = Bytes::copy_from_slice(data);
        let api_key_code = frame.get_i16();
        let api_version = frame.get_i16();
        if crate::api_versions::is_supported(api_key_code, api_version) {
            if let Ok(api_key) = ApiKey::try_from(api_key_code) {
                decode(api_key, api_version, Bytes::copy_from_slice(data));
            }
        }
    }
}

fn decode(api_key: ApiKey, version: i16, mut body: Bytes) {
    if RequestHeader::decode(&mut body, api_key.request_header_version(version)).is_ok() {
        let _ = RequestKind::decode(api_key, &mut body, version);
    }
}
