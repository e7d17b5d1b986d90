//! `Checkpoint::decode` on arbitrary bytes: never panics, and whatever decodes re-encodes to
//! the same bytes.
#![no_main]

use ferry_proto::checkpoint::Checkpoint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Checkpoint::decode(data) {
        assert_eq!(c.encode(), data);
    }
});
