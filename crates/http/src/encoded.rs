//! Bytes for JSON: as text when UTF-8, and always as base64 (hex on request).

use std::fmt::Write;

use base64::Engine;

use crate::model::EncodedBytes;

pub fn encode(bytes: &[u8], with_hex: bool) -> EncodedBytes {
    EncodedBytes {
        size: bytes.len() as u64,
        text: std::str::from_utf8(bytes).ok().map(str::to_string),
        base64: base64::engine::general_purpose::STANDARD.encode(bytes),
        hex: with_hex.then(|| {
            bytes
                .iter()
                .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
                    let _ = write!(out, "{b:02x}");
                    out
                })
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_bytes_have_text_and_others_only_base64() {
        let text = encode(b"hi", true);
        assert_eq!(text.text.as_deref(), Some("hi"));
        assert_eq!(text.base64, "aGk=");
        assert_eq!(text.hex.as_deref(), Some("6869"));
        let binary = encode(&[0xff, 0x00], false);
        assert_eq!(binary.text, None);
        assert_eq!(binary.base64, "/wA=");
        assert_eq!(binary.hex, None);
        assert_eq!(binary.size, 2);
    }
}
