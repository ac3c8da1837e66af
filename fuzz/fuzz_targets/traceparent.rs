//! `traceparent` (W3C Trace Context): any bytes as a header value. A value
//! that parses re-serialises to a value that parses to the same context.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidestream_core::trace::parse_traceparent;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(parent) = parse_traceparent(text) {
        let header = parent.to_header();
        let again = parse_traceparent(&header);
        assert!(again.is_ok(), "{header:?} from {text:?} does not parse");
        if let Ok(again) = again {
            // to_header writes version 00: everything but the version survives.
            assert_eq!(again.trace_id, parent.trace_id);
            assert_eq!(again.parent_id, parent.parent_id);
            assert_eq!(again.sampled(), parent.sampled());
        }
        assert_eq!(parent.trace_id_hex().len(), 32);
        assert_eq!(parent.parent_id_hex().len(), 16);
    }
});
