//! `tracestate` (W3C Trace Context): any bytes as a header value. A value
//! that parses keeps at most 32 members (a key may repeat: the spec lets a
//! vendor keep duplicates), `get` gives a key's left-most value, and its
//! serialisation parses to the same members.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidestream_core::trace::{parse_tracestate, MAX_TRACESTATE_MEMBERS};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(state) = parse_tracestate(text) {
        let entries = state.entries();
        assert!(entries.len() <= MAX_TRACESTATE_MEMBERS);
        for (key, _) in entries {
            let first = entries
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str());
            assert_eq!(state.get(key), first, "{key:?} in {text:?}");
        }
        let header = state.to_header();
        match parse_tracestate(&header) {
            Ok(again) => assert_eq!(again, state, "{header:?} from {text:?}"),
            Err(error) => panic!("{header:?} from {text:?} does not parse: {error}"),
        }
    }
});
