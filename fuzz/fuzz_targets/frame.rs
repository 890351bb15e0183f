//! The frame reader and message decoding: any bytes an engine or a drain
//! client could send. Every frame is read or refused with an error, and
//! none panics or makes the reader allocate beyond the frame limit
//! (libFuzzer's -rss_limit_mb and -malloc_limit_mb catch that).

#![no_main]

use libfuzzer_sys::fuzz_target;
use quiesce_protocol::{ClientMessage, FrameReader, ServerMessage, encode_frame};

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let mut reader = FrameReader::new(data);
        while let Ok(Some(message)) = reader.read::<ClientMessage>().await {
            // What decodes encodes again, or is refused as too large.
            let _ = encode_frame(&message);
        }
        let mut reader = FrameReader::new(data);
        while let Ok(Some(_)) = reader.read::<ServerMessage>().await {}
    });
});
