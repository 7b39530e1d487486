//! Entry point for the AMQP frame fuzz target in `fuzz/` and its corpus replay test (which runs
//! on the stable toolchain): untrusted bytes through the same framing and decoding a connection
//! uses must never panic, recurse without bound, or allocate beyond what they justify.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use crate::codec::{decode_content_header, decode_method, read_frame, FRAME_HEADER, FRAME_METHOD};

/// The largest frame the fuzz target negotiates (the broker's default frame_max).
const FRAME_MAX: u32 = 131_072;

/// Reads `data` as a stream of frames (after the protocol header, as the connection does) and
/// decodes each method and content header.
pub fn frames(data: &[u8]) {
    let mut input = data;
    // Reading from a slice never waits: one poll finishes each frame.
    let mut context = Context::from_waker(Waker::noop());
    loop {
        let read = pin!(read_frame(&mut input, FRAME_MAX));
        let frame = match read.poll(&mut context) {
            Poll::Ready(Ok(frame)) => frame,
            Poll::Ready(Err(_)) | Poll::Pending => return,
        };
        match frame.kind {
            FRAME_METHOD => {
                let _ = decode_method(&frame.payload);
            }
            FRAME_HEADER => {
                let _ = decode_content_header(&frame.payload);
            }
            _ => {}
        }
    }
}
