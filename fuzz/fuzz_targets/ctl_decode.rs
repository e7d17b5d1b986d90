//! The control socket's decoders, which read whatever a local process writes to ferryd's
//! socket: line framing, requests and responses. None may panic; framing never returns a
//! line over its limit; whatever decodes as a request re-encodes to one line that decodes
//! to the same request.
#![no_main]

use std::io::{BufReader, Cursor};

use ferry_ctl::{Error, decode_request, decode_response, encode_line, read_line};
use libfuzzer_sys::fuzz_target;

fn check_request(line: &[u8]) {
    if let Ok(req) = decode_request(line) {
        let encoded = encode_line(&req);
        assert_eq!(encoded.last(), Some(&b'\n'));
        assert!(!encoded[..encoded.len() - 1].contains(&b'\n'));
        let back = decode_request(&encoded[..encoded.len() - 1]).expect("re-encoded decodes");
        assert_eq!(back, req);
    }
}

fuzz_target!(|data: &[u8]| {
    check_request(data);
    let _ = decode_response(data);
    // The same bytes as a stream of lines, with a small limit and a small buffer so that
    // long lines and lines across buffer ends are both common.
    let max = 64;
    let mut r = BufReader::with_capacity(7, Cursor::new(data));
    loop {
        match read_line(&mut r, max) {
            Ok(Some(line)) => {
                assert!(line.len() <= max);
                check_request(&line);
                let _ = decode_response(&line);
            }
            Ok(None) => break,
            Err(Error::TooLarge { max: m }) => {
                assert_eq!(m, max);
                break;
            }
            Err(e) => panic!("reading from memory failed: {e}"),
        }
    }
});
