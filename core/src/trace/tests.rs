use super::*;
use crate::config::TraceSettings;
use crate::HeaderList;

const TID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PID: &str = "00f067aa0ba902b7";

/// (version, flags) or the error.
type ParseResult = Result<(u8, u8), TraceParentError>;
/// Request headers of a table row.
type Headers<'a> = Vec<(&'a str, &'a str)>;
/// The members or the error.
type StateResult<'a> = Result<Vec<(&'a str, &'a str)>, TraceStateError>;

fn tp(version: &str, tid: &str, pid: &str, flags: &str) -> String {
    format!("{version}-{tid}-{pid}-{flags}")
}

#[test]
fn traceparent_table() {
    use TraceParentError as E;
    let valid = tp("00", TID, PID, "01");
    let cases: Vec<(String, ParseResult)> = vec![
        // the spec's own example
        (valid.clone(), Ok((0, 1))),
        (tp("00", TID, PID, "00"), Ok((0, 0))),
        // unknown flags are parsed (and not re-emitted)
        (tp("00", TID, PID, "ff"), Ok((0, 0xff))),
        (tp("00", TID, PID, "09"), Ok((0, 0x09))),
        // surrounding OWS is not part of the value
        (format!(" {valid}\t"), Ok((0, 1))),
        // version 00 is exactly 55 characters
        (format!("{valid}-"), Err(E::Length(56))),
        (format!("{valid}-extra"), Err(E::Length(61))),
        (valid[..54].to_owned(), Err(E::Length(54))),
        (String::new(), Err(E::Length(0))),
        // future versions: the first 55 characters parse, then '-' or the end
        (tp("01", TID, PID, "01"), Ok((1, 1))),
        (
            format!("{}-what-the-future-holds", tp("cc", TID, PID, "01")),
            Ok((0xcc, 1)),
        ),
        (
            format!("{}x", tp("cc", TID, PID, "01")),
            Err(E::FutureVersionTail('x')),
        ),
        (
            tp("cc", TID, PID, "01")[..54].to_owned(),
            Err(E::Length(54)),
        ),
        // version ff is invalid, version must be lowercase hex
        (tp("ff", TID, PID, "01"), Err(E::VersionFf)),
        (tp("0A", TID, PID, "01"), Err(E::Version)),
        (tp("0g", TID, PID, "01"), Err(E::Version)),
        // delimiters
        (format!("00_{TID}-{PID}-01"), Err(E::Delimiter)),
        (format!("00-{TID}_{PID}-01"), Err(E::Delimiter)),
        (format!("00-{TID}-{PID}_01"), Err(E::Delimiter)),
        // trace-id: lowercase hex, not all zero
        (tp("00", &TID.to_uppercase(), PID, "01"), Err(E::TraceId)),
        (
            tp("00", "4bf92f3577b34da6a3ce929d0e0e473g", PID, "01"),
            Err(E::TraceId),
        ),
        (tp("00", &"0".repeat(32), PID, "01"), Err(E::ZeroTraceId)),
        // parent-id: lowercase hex, not all zero
        (tp("00", TID, &PID.to_uppercase(), "01"), Err(E::ParentId)),
        (tp("00", TID, "00f067aa0ba902bz", "01"), Err(E::ParentId)),
        (tp("00", TID, &"0".repeat(16), "01"), Err(E::ZeroParentId)),
        // flags: lowercase hex
        (tp("00", TID, PID, "0A"), Err(E::Flags)),
        (tp("00", TID, PID, "0x"), Err(E::Flags)),
        // wrong field lengths shift the delimiters
        (format!("00-{TID}0-{PID}-1"), Err(E::Delimiter)),
        (format!("000-{TID}-{PID}-1"), Err(E::Delimiter)),
        // the w3c/trace-context test suite (test/test.py), one line each
        (format!("{valid}."), Err(E::Length(56))),
        (
            format!("{valid}-what-the-future-will-be-like"),
            Err(E::Length(84)),
        ),
        (
            format!("{}.what-the-future-will-be-like", tp("cc", TID, PID, "01")),
            Err(E::FutureVersionTail('.')),
        ),
        (tp(".0", TID, PID, "01"), Err(E::Version)),
        (tp("0.", TID, PID, "01"), Err(E::Version)),
        (tp("000", TID, PID, "01"), Err(E::Length(56))),
        (tp("0000", TID, PID, "01"), Err(E::Length(57))),
        (tp("0", TID, PID, "01"), Err(E::Version)),
        (
            tp("00", ".bf92f3577b34da6a3ce929d0e0e4736", PID, "01"),
            Err(E::TraceId),
        ),
        (
            tp("00", "4bf92f3577b34da6a3ce929d0e0e473.", PID, "01"),
            Err(E::TraceId),
        ),
        (tp("00", &format!("{TID}3"), PID, "01"), Err(E::Length(56))),
        (tp("00", &TID[..31], PID, "01"), Err(E::Length(54))),
        (tp("00", TID, ".0f067aa0ba902b7", "01"), Err(E::ParentId)),
        (tp("00", TID, "00f067aa0ba902b.", "01"), Err(E::ParentId)),
        (tp("00", TID, &format!("{PID}7"), "01"), Err(E::Length(56))),
        (tp("00", TID, &PID[..15], "01"), Err(E::Length(54))),
        (tp("00", TID, PID, ".0"), Err(E::Flags)),
        (tp("00", TID, PID, "0."), Err(E::Flags)),
        (tp("00", TID, PID, "001"), Err(E::Length(56))),
        (tp("00", TID, PID, "1"), Err(E::Length(54))),
        (format!(" {valid}"), Ok((0, 1))),
        (format!("\t{valid}"), Ok((0, 1))),
        (format!("{valid} "), Ok((0, 1))),
        (format!("{valid}\t"), Ok((0, 1))),
        (format!("\t {valid} \t"), Ok((0, 1))),
        // only spaces and tabs are OWS
        (format!("\n{valid}"), Err(E::Version)),
        (format!("{valid}\r"), Err(E::Length(56))),
        // two headers joined by the glue (RFC 9110 list) are not one traceparent
        (format!("{valid}, {valid}"), Err(E::Length(112))),
        // a future version still needs every version-00 rule in its first 55 characters
        (tp("cc", &"0".repeat(32), PID, "01"), Err(E::ZeroTraceId)),
        (tp("cc", TID, &"0".repeat(16), "01"), Err(E::ZeroParentId)),
        (tp("cc", &TID.to_uppercase(), PID, "01"), Err(E::TraceId)),
        (tp("cc", TID, PID, "0A"), Err(E::Flags)),
        (format!("cc-{TID}_{PID}-01-x"), Err(E::Delimiter)),
        (format!("{}-", tp("cc", TID, PID, "01")), Ok((0xcc, 1))),
        (tp("fe", TID, PID, "00"), Ok((0xfe, 0))),
        (format!("{}-x", tp("ff", TID, PID, "01")), Err(E::VersionFf)),
    ];
    for (input, expected) in cases {
        let got = parse_traceparent(&input).map(|p| (p.version, p.flags));
        assert_eq!(got, expected, "input {input:?}");
    }
    let parsed = parse_traceparent(&valid).unwrap();
    assert_eq!(parsed.trace_id_hex(), TID);
    assert_eq!(parsed.parent_id_hex(), PID);
    assert!(parsed.sampled());
    assert_eq!(parsed.to_header(), valid);
}

#[test]
fn traceparent_to_header_writes_version_00_and_known_flags_only() {
    let future = parse_traceparent(&format!("{}-extra", tp("cc", TID, PID, "ff"))).unwrap();
    assert_eq!(future.to_header(), tp("00", TID, PID, "03"));
    let unsampled = parse_traceparent(&tp("00", TID, PID, "fe")).unwrap();
    assert!(!unsampled.sampled());
    assert!(unsampled.random());
    assert_eq!(unsampled.to_header(), tp("00", TID, PID, "02"));
    let neither = parse_traceparent(&tp("00", TID, PID, "fc")).unwrap();
    assert!(!neither.sampled() && !neither.random());
    assert_eq!(neither.to_header(), tp("00", TID, PID, "00"));
}

#[test]
fn traceparent_rejects_non_ascii_without_panicking() {
    for input in [
        "é".repeat(30),
        format!("00-{}é-{PID}-01", &TID[..31]),
        format!("0é{}", &tp("00", TID, PID, "01")[3..]),
        format!("{}é", tp("01", TID, PID, "01")),
        format!("{}é", &tp("01", TID, PID, "01")[..54]),
    ] {
        assert!(parse_traceparent(&input).is_err(), "input {input:?}");
    }
}

#[test]
fn tracestate_table() {
    use TraceStateError as E;
    let long_value = "v".repeat(256);
    let too_long_value = "v".repeat(257);
    let long_key = format!("a{}", "b".repeat(255));
    let too_long_key = format!("a{}", "b".repeat(256));
    // keys with '@' within the 256 characters (test_tracestate_key_length_limit)
    let at_key_256 = format!("{}@{}", "t".repeat(241), "v".repeat(14));
    let at_key_244 = format!("{}@v", "t".repeat(242));
    let at_key_17 = format!("t@{}", "v".repeat(15));
    let at_key_257 = format!("{}@{}", "t".repeat(241), "v".repeat(15));
    let members_32: Vec<String> = (0..32).map(|i| format!("k{i}=v")).collect();
    let members_33: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
    let keys_32: Vec<String> = (0..32).map(|i| format!("k{i}")).collect();
    let members_32_pairs: Vec<(&str, &str)> = keys_32.iter().map(|k| (k.as_str(), "v")).collect();
    let z256 = "z".repeat(256);
    // every character the grammar allows (test_tracestate_all_allowed_characters)
    let w3c_key = "abcdefghijklmnopqrstuvwxyz0123456789_-*/".to_owned();
    let w3c_vendor_key = format!("{w3c_key}@a-z0-9_-*/");
    let w3c_value: String = (0x20u8..=0x7e)
        .filter(|&b| b != b',' && b != b'=')
        .map(char::from)
        .collect();
    let cases: Vec<(String, StateResult)> = vec![
        (
            "rojo=00f067aa0ba902b7".into(),
            Ok(vec![("rojo", "00f067aa0ba902b7")]),
        ),
        (
            "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE".into(),
            Ok(vec![("rojo", "00f067aa0ba902b7"), ("congo", "t61rcWkgMzE")]),
        ),
        // OWS around members, empty members ignored
        (" a=1 ,\t, b=2 ,,".into(), Ok(vec![("a", "1"), ("b", "2")])),
        ("".into(), Ok(vec![])),
        (" , ".into(), Ok(vec![])),
        // keys: `(lcalpha / DIGIT) 0*255(lcalpha / DIGIT / _ - * / @)`
        ("a0_-*/=x".into(), Ok(vec![("a0_-*/", "x")])),
        ("1tenant@sys=x".into(), Ok(vec![("1tenant@sys", "x")])),
        ("t@s0_-*/=x".into(), Ok(vec![("t@s0_-*/", "x")])),
        ("1abc=1".into(), Ok(vec![("1abc", "1")])),
        ("0=1".into(), Ok(vec![("0", "1")])),
        (format!("{long_key}=x"), Ok(vec![(long_key.as_str(), "x")])),
        (
            format!("{too_long_key}=x"),
            Err(E::Key(too_long_key.clone())),
        ),
        ("Rojo=1".into(), Err(E::Key("Rojo".into()))),
        ("a b=1".into(), Err(E::Key("a b".into()))),
        ("=1".into(), Err(E::Key(String::new()))),
        ("_a=1".into(), Err(E::Key("_a".into()))),
        ("-a=1".into(), Err(E::Key("-a".into()))),
        ("*a=1".into(), Err(E::Key("*a".into()))),
        ("/a=1".into(), Err(E::Key("/a".into()))),
        ("a.b=1".into(), Err(E::Key("a.b".into()))),
        ("a\u{e9}=1".into(), Err(E::Key("a\u{e9}".into()))),
        // '@' anywhere but first: the older tenant@system split is gone
        ("a@=1".into(), Ok(vec![("a@", "1")])),
        ("t@1s=1".into(), Ok(vec![("t@1s", "1")])),
        ("a@b@c=1".into(), Ok(vec![("a@b@c", "1")])),
        ("a@@b=1".into(), Ok(vec![("a@@b", "1")])),
        ("a@@=1".into(), Ok(vec![("a@@", "1")])),
        ("@s=1".into(), Err(E::Key("@s".into()))),
        ("@=1".into(), Err(E::Key("@".into()))),
        (
            format!("{at_key_256}=x"),
            Ok(vec![(at_key_256.as_str(), "x")]),
        ),
        (
            format!("{at_key_244}=x"),
            Ok(vec![(at_key_244.as_str(), "x")]),
        ),
        (
            format!("{at_key_17}=x"),
            Ok(vec![(at_key_17.as_str(), "x")]),
        ),
        (format!("{at_key_257}=x"), Err(E::Key(at_key_257.clone()))),
        // values: printable 0x20-0x7e except ',' and '=', not ending in space
        ("a=hello world".into(), Ok(vec![("a", "hello world")])),
        ("a= lead".into(), Ok(vec![("a", " lead")])),
        ("a=!~".into(), Ok(vec![("a", "!~")])),
        (
            format!("a={long_value}"),
            Ok(vec![("a", long_value.as_str())]),
        ),
        (
            format!("a={too_long_value}"),
            Err(E::Value(too_long_value.clone())),
        ),
        ("a=".into(), Err(E::Value(String::new()))),
        ("a=b=c".into(), Err(E::Value("b=c".into()))),
        ("a=caf\u{e9}".into(), Err(E::Value("caf\u{e9}".into()))),
        ("a=tab\there".into(), Err(E::Value("tab\there".into()))),
        ("noequals".into(), Err(E::NoEquals("noequals".into()))),
        // duplicate keys are kept, in order (the spec allows keeping or dropping)
        (
            "a=1,b=2,a=3".into(),
            Ok(vec![("a", "1"), ("b", "2"), ("a", "3")]),
        ),
        // at most 32 members
        (members_32.join(","), Ok(members_32_pairs.clone())),
        (members_33.join(","), Err(E::TooManyMembers(33))),
        // the w3c/trace-context test suite (test/test.py)
        (
            format!("{w3c_key}={w3c_value}"),
            Ok(vec![(w3c_key.as_str(), w3c_value.as_str())]),
        ),
        (
            format!("{w3c_vendor_key}={w3c_value}"),
            Ok(vec![(w3c_vendor_key.as_str(), w3c_value.as_str())]),
        ),
        ("foo =1".into(), Err(E::Key("foo ".into()))),
        ("FOO=1".into(), Err(E::Key("FOO".into()))),
        ("foo.bar=1".into(), Err(E::Key("foo.bar".into()))),
        ("foo@=1,bar=2".into(), Ok(vec![("foo@", "1"), ("bar", "2")])),
        ("@foo=1,bar=2".into(), Err(E::Key("@foo".into()))),
        (
            "foo@@bar=1,bar=2".into(),
            Ok(vec![("foo@@bar", "1"), ("bar", "2")]),
        ),
        (
            "foo@bar@baz=1,bar=2".into(),
            Ok(vec![("foo@bar@baz", "1"), ("bar", "2")]),
        ),
        ("foo=bar=baz".into(), Err(E::Value("bar=baz".into()))),
        ("foo=,bar=3".into(), Err(E::Value(String::new()))),
        ("foo=1,foo=1".into(), Ok(vec![("foo", "1"), ("foo", "1")])),
        ("foo=1,foo=2".into(), Ok(vec![("foo", "1"), ("foo", "2")])),
        // two tracestate headers, joined by the glue with ", "
        ("foo=1, foo=1".into(), Ok(vec![("foo", "1"), ("foo", "1")])),
        ("foo=1, foo=2".into(), Ok(vec![("foo", "1"), ("foo", "2")])),
        (
            format!("foo=1, {}=1", "z".repeat(256)),
            Ok(vec![("foo", "1"), (z256.as_str(), "1")]),
        ),
        (
            format!("foo=1, {}=1", "z".repeat(257)),
            Err(E::Key("z".repeat(257))),
        ),
        (
            format!("foo=1, {at_key_256}=1"),
            Ok(vec![("foo", "1"), (at_key_256.as_str(), "1")]),
        ),
        (
            format!("foo=1, {at_key_244}=1"),
            Ok(vec![("foo", "1"), (at_key_244.as_str(), "1")]),
        ),
        (
            format!("foo=1, {at_key_17}=1"),
            Ok(vec![("foo", "1"), (at_key_17.as_str(), "1")]),
        ),
        (
            "foo=1 \t , \t bar=2, \t baz=3".into(),
            Ok(vec![("foo", "1"), ("bar", "2"), ("baz", "3")]),
        ),
        (
            "foo=1\t \t,\t \tbar=2,\t \tbaz=3".into(),
            Ok(vec![("foo", "1"), ("bar", "2"), ("baz", "3")]),
        ),
        ("\t foo=1 \t".into(), Ok(vec![("foo", "1")])),
        // several tracestate headers, joined by the glue with ", "
        ("foo=1, ".into(), Ok(vec![("foo", "1")])),
        (", foo=1".into(), Ok(vec![("foo", "1")])),
        (
            format!(
                "{}, {}",
                members_32[..10].join(","),
                members_32[10..].join(",")
            ),
            Ok(members_32_pairs.clone()),
        ),
        (
            format!(
                "{}, {}",
                members_32[..10].join(","),
                members_33[10..].join(",")
            ),
            Err(E::TooManyMembers(33)),
        ),
        // empty members do not count toward the 32
        (
            format!(",,{},, ,\t,", members_32.join(", ,")),
            Ok(members_32_pairs),
        ),
        // keys with an @: the shortest, one starting with a digit
        ("a@b=1".into(), Ok(vec![("a@b", "1")])),
        ("0@b=1".into(), Ok(vec![("0@b", "1")])),
        // values: OWS after the value is not part of it; control bytes are invalid
        ("a=   ".into(), Err(E::Value(String::new()))),
        ("a=x\u{7f}".into(), Err(E::Value("x\u{7f}".into()))),
        ("a=x\u{1}y".into(), Err(E::Value("x\u{1}y".into()))),
        ("a=1=".into(), Err(E::Value("1=".into()))),
        ("a=x,=y".into(), Err(E::Key(String::new()))),
    ];
    for (input, expected) in cases {
        let got = parse_tracestate(&input);
        match expected {
            Ok(entries) => {
                let got = got.unwrap_or_else(|e| panic!("input {input:?}: {e}"));
                let got: Vec<(&str, &str)> = got
                    .entries()
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                assert_eq!(got, entries, "input {input:?}");
            }
            Err(e) => assert_eq!(got, Err(e), "input {input:?}"),
        }
    }
    let state = parse_tracestate(" rojo=1 , congo=2").unwrap();
    assert_eq!(state.to_header(), "rojo=1,congo=2");
    assert_eq!(state.get("congo"), Some("2"));
    // a key sent twice: the left-most (most recent) value, both written back
    let state = parse_tracestate("foo=2,bar=1,foo=1").unwrap();
    assert_eq!(state.get("foo"), Some("2"));
    assert_eq!(state.to_header(), "foo=2,bar=1,foo=1");
}

/// A deterministic "random" source: an incrementing byte counter.
fn counter(start: u8) -> impl FnMut(&mut [u8]) {
    let mut next = start;
    move |buf: &mut [u8]| {
        for b in buf {
            *b = next;
            next = next.wrapping_add(1);
        }
    }
}

fn header<'a>(d: &'a TraceDecision<'_>, name: &str) -> Option<&'a str> {
    d.set_headers
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn decide_starts_a_trace_with_request_id() {
    let settings = TraceSettings::default();
    let req = HeaderList::default();
    let d = decide(&settings, &req, &mut counter(1));
    assert_eq!(d.outcome, TraceOutcome::Started);
    assert!(d.sampled, "ratio 1.0 samples everything");
    let tp = parse_traceparent(header(&d, "traceparent").unwrap()).unwrap();
    assert_eq!(tp.trace_id_hex(), d.trace_id_hex);
    assert_eq!(tp.parent_id_hex(), d.span_id_hex);
    assert_eq!(tp.flags, FLAG_SAMPLED | FLAG_RANDOM, "sampled, random id");
    let rid = header(&d, "x-request-id").unwrap();
    assert_eq!(rid.len(), 36);
    assert_eq!(&rid[14..15], "4", "uuid version 4: {rid}");
    assert!(
        matches!(&rid[19..20], "8" | "9" | "a" | "b"),
        "variant: {rid}"
    );
    assert!(d.remove_headers.is_empty());
    assert_eq!(d.response_header, None);
}

#[test]
fn decide_continues_a_valid_parent_with_a_new_parent_id() {
    let settings = TraceSettings::default();
    for flags in ["00", "01", "02", "03"] {
        let incoming = tp("00", TID, PID, flags);
        let req = HeaderList::default()
            .with("traceparent", &incoming)
            .with("tracestate", "rojo=1")
            .with("x-request-id", "given");
        let d = decide(&settings, &req, &mut counter(7));
        assert_eq!(d.outcome, TraceOutcome::Continued);
        assert_eq!(d.trace_id_hex, TID);
        let out = parse_traceparent(header(&d, "traceparent").unwrap()).unwrap();
        assert_eq!(out.trace_id_hex(), TID);
        assert_ne!(out.parent_id_hex(), PID, "a new parent-id for this hop");
        assert_eq!(out.sampled(), flags == "01" || flags == "03");
        assert_eq!(out.random(), flags == "02" || flags == "03");
        assert_eq!(out.to_header()[53..], *flags, "flags kept as they came");
        assert_eq!(d.sampled, out.sampled());
        assert_eq!(header(&d, "x-request-id"), None, "kept as given");
        assert!(d.remove_headers.is_empty(), "valid tracestate kept");
    }
}

#[test]
fn decide_drops_an_invalid_tracestate_but_keeps_the_parent() {
    let settings = TraceSettings::default();
    let req = HeaderList::default()
        .with("traceparent", &tp("00", TID, PID, "01"))
        .with("tracestate", "Bad=1");
    let d = decide(&settings, &req, &mut counter(7));
    assert_eq!(d.outcome, TraceOutcome::Continued);
    assert_eq!(d.trace_id_hex, TID);
    assert_eq!(d.remove_headers, vec!["tracestate"]);
}

/// What happens to `tracestate`: kept (left on the request as it came) with
/// a valid traceparent when it is itself valid, removed otherwise; never
/// parsed when the traceparent is absent or invalid.
#[test]
fn decide_tracestate_table() {
    let valid = tp("00", TID, PID, "00");
    let future = format!("{}-next", tp("cc", TID, PID, "01"));
    let members_33: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
    let members_33 = members_33.join(",");
    let version_ff = tp("ff", TID, PID, "01");
    let zero_parent = tp("00", TID, &"0".repeat(16), "01");
    // (traceparent, tracestate, outcome, tracestate removed)
    let cases: Vec<(Option<&str>, &str, TraceOutcome, bool)> = vec![
        (Some(&valid), "foo=1,bar=2", TraceOutcome::Continued, false),
        (Some(&future), "foo=1", TraceOutcome::Continued, false),
        // empty: accepted (the parent is continued) but not sent on
        (Some(&valid), "", TraceOutcome::Continued, true),
        (Some(&valid), " , ", TraceOutcome::Continued, true),
        (Some(&valid), "foo=1, ", TraceOutcome::Continued, false),
        // duplicate keys: kept (test_tracestate_duplicated_keys)
        (Some(&valid), "foo=1,foo=2", TraceOutcome::Continued, false),
        (Some(&valid), "foo=1,foo=1", TraceOutcome::Continued, false),
        // the current key grammar (test_tracestate_key_illegal_vendor_format)
        (Some(&valid), "foo@=1,bar=2", TraceOutcome::Continued, false),
        (
            Some(&valid),
            "foo@@bar=1,bar=2",
            TraceOutcome::Continued,
            false,
        ),
        (
            Some(&valid),
            "foo@bar@baz=1,bar=2",
            TraceOutcome::Continued,
            false,
        ),
        (Some(&valid), "@foo=1,bar=2", TraceOutcome::Continued, true),
        (Some(&valid), "FOO=1", TraceOutcome::Continued, true),
        (Some(&valid), "foo=1,bar=", TraceOutcome::Continued, true),
        (Some(&valid), &members_33, TraceOutcome::Continued, true),
        (None, "foo=1", TraceOutcome::Started, true),
        (Some(""), "foo=1", TraceOutcome::Started, true),
        (
            Some("00-garbage"),
            "foo=1",
            TraceOutcome::InvalidParent,
            true,
        ),
        (
            Some(&version_ff),
            "foo=1",
            TraceOutcome::InvalidParent,
            true,
        ),
        (
            Some(&zero_parent),
            "foo=1",
            TraceOutcome::InvalidParent,
            true,
        ),
    ];
    let settings = TraceSettings::default();
    for (parent, state, outcome, removed) in cases {
        let mut req = HeaderList::default().with("tracestate", state);
        if let Some(parent) = parent {
            req = req.with("traceparent", parent);
        }
        let d = decide(&settings, &req, &mut counter(5));
        assert_eq!(d.outcome, outcome, "{parent:?} / {state:?}");
        assert_eq!(
            d.remove_headers.contains(&"tracestate"),
            removed,
            "{parent:?} / {state:?}"
        );
        assert!(
            d.set_headers.iter().all(|(n, _)| *n != "tracestate"),
            "tracestate is never rewritten"
        );
        let out = parse_traceparent(header(&d, "traceparent").unwrap()).unwrap();
        assert_eq!(
            out.trace_id_hex() == TID,
            outcome == TraceOutcome::Continued
        );
    }
    // no tracestate header: nothing to remove
    let req = HeaderList::default().with("traceparent", "00-garbage");
    assert!(decide(&settings, &req, &mut counter(5))
        .remove_headers
        .is_empty());
}

#[test]
fn decide_restarts_on_an_invalid_parent() {
    let settings = TraceSettings::default();
    let req = HeaderList::default()
        .with("traceparent", &tp("00", &"0".repeat(32), PID, "01"))
        .with("tracestate", "rojo=1");
    let d = decide(&settings, &req, &mut counter(9));
    assert_eq!(d.outcome, TraceOutcome::InvalidParent);
    assert_ne!(d.trace_id_hex, "0".repeat(32));
    assert!(parse_traceparent(header(&d, "traceparent").unwrap()).is_ok());
    assert_eq!(d.remove_headers, vec!["tracestate"]);
}

#[test]
fn decide_treats_an_empty_traceparent_as_absent() {
    let settings = TraceSettings::default();
    let req = HeaderList::default().with("traceparent", " ");
    assert_eq!(
        decide(&settings, &req, &mut counter(1)).outcome,
        TraceOutcome::Started
    );
}

#[test]
fn decide_continues_a_future_version_as_version_00() {
    let settings = TraceSettings::default();
    let incoming = format!("{}-more", tp("cc", TID, PID, "ff"));
    let req = HeaderList::default().with("traceparent", &incoming);
    let d = decide(&settings, &req, &mut counter(1));
    assert_eq!(d.outcome, TraceOutcome::Continued);
    let out = header(&d, "traceparent").unwrap();
    assert!(out.starts_with(&format!("00-{TID}-")), "{out}");
    assert!(
        out.ends_with("-03"),
        "sampled and random kept, others 0: {out}"
    );
}

/// Trace Context Level 2: the random flag is set on a trace id drawn from the
/// CSPRNG, kept (set or unset) on a continued `traceparent`, and not claimed
/// for a trace id taken from B3; unknown flags are written as 0.
#[test]
fn decide_random_flag_table() {
    let b3 = TraceSettings {
        b3_accept: true,
        b3_emit: true,
        ..TraceSettings::default()
    };
    let default = TraceSettings::default();
    let never = TraceSettings {
        sample_ratio: 0.0,
        ..TraceSettings::default()
    };
    let [p00, p01, p02, p03, pfe] = ["00", "01", "02", "03", "fe"].map(|f| tp("00", TID, PID, f));
    let b3_context = format!("{TID}-{PID}-1");
    let future = format!("{}-x", tp("cc", TID, PID, "06"));
    // (settings, headers, outcome, flags written)
    let cases: Vec<(&TraceSettings, Headers, TraceOutcome, u8)> = vec![
        // new traces: the id is random whether sampled or not
        (&default, vec![], TraceOutcome::Started, 0x03),
        (&never, vec![], TraceOutcome::Started, 0x02),
        (
            &default,
            vec![("traceparent", "00-garbage")],
            TraceOutcome::InvalidParent,
            0x03,
        ),
        // continued: the caller's random flag, set or unset, stays
        (
            &never,
            vec![("traceparent", &p02)],
            TraceOutcome::Continued,
            0x02,
        ),
        (
            &never,
            vec![("traceparent", &p03)],
            TraceOutcome::Continued,
            0x03,
        ),
        (
            &default,
            vec![("traceparent", &p01)],
            TraceOutcome::Continued,
            0x01,
        ),
        (
            &default,
            vec![("traceparent", &p00)],
            TraceOutcome::Continued,
            0x00,
        ),
        // flags nobody defines yet are written as 0
        (
            &default,
            vec![("traceparent", &pfe)],
            TraceOutcome::Continued,
            0x02,
        ),
        (
            &default,
            vec![("traceparent", &future)],
            TraceOutcome::Continued,
            0x02,
        ),
        // B3 says nothing of how its trace id was made: no random flag
        (
            &b3,
            vec![("b3", &b3_context)],
            TraceOutcome::Continued,
            0x01,
        ),
        (
            &b3,
            vec![("x-b3-traceid", TID), ("x-b3-spanid", PID)],
            TraceOutcome::Continued,
            0x01,
        ),
        // a traceparent wins over b3, flags included
        (
            &b3,
            vec![("traceparent", &p02), ("b3", &b3_context)],
            TraceOutcome::Continued,
            0x02,
        ),
        // b3 sampling only: a new trace id from the CSPRNG
        (&b3, vec![("b3", "0")], TraceOutcome::Started, 0x02),
        (&b3, vec![("b3", "d")], TraceOutcome::Started, 0x03),
    ];
    for (settings, headers, outcome, flags) in cases {
        let req = HeaderList::from_pairs(headers.iter().copied());
        let d = decide(settings, &req, &mut counter(11));
        assert_eq!(d.outcome, outcome, "{headers:?}");
        let out = header(&d, "traceparent").unwrap();
        assert_eq!(
            parse_traceparent(out).unwrap().flags,
            flags,
            "{headers:?} → {out}"
        );
        assert_eq!(d.sampled, flags & FLAG_SAMPLED != 0, "{headers:?}");
    }
}

#[test]
fn decide_samples_new_traces_by_ratio() {
    let mut settings = TraceSettings {
        sample_ratio: 0.25,
        ..TraceSettings::default()
    };
    let mut rng = {
        use rand::{RngCore, SeedableRng};
        let mut r = rand::rngs::StdRng::seed_from_u64(7);
        move |buf: &mut [u8]| r.fill_bytes(buf)
    };
    let req = HeaderList::default();
    let n = 20_000;
    let sampled = (0..n)
        .filter(|_| decide(&settings, &req, &mut rng).sampled)
        .count();
    let share = sampled as f64 / n as f64;
    assert!((share - 0.25).abs() < 0.02, "share {share}");
    settings.sample_ratio = 0.0;
    assert!((0..100).all(|_| !decide(&settings, &req, &mut rng).sampled));
    // a continued trace keeps the caller's flag whatever the ratio
    let req = HeaderList::default().with("traceparent", &tp("00", TID, PID, "01"));
    assert!(decide(&settings, &req, &mut rng).sampled);
}

#[test]
fn decide_disabled_changes_nothing() {
    let settings = TraceSettings {
        enabled: false,
        ..TraceSettings::default()
    };
    let d = decide(&settings, &HeaderList::default(), &mut counter(1));
    assert_eq!(d.outcome, TraceOutcome::Disabled);
    assert!(d.set_headers.is_empty() && d.remove_headers.is_empty());
    let req = HeaderList::default().with("traceparent", &tp("00", TID, PID, "01"));
    assert_eq!(decide(&settings, &req, &mut counter(1)).trace_id_hex, TID);
}

#[test]
fn decide_request_id_and_response_header_settings() {
    let settings = TraceSettings {
        request_id_header: None,
        response_header: Some("x-trace-id".into()),
        ..TraceSettings::default()
    };
    let d = decide(&settings, &HeaderList::default(), &mut counter(1));
    assert!(d.set_headers.iter().all(|(n, _)| *n == "traceparent"));
    assert_eq!(
        d.response_header,
        Some(("x-trace-id", d.trace_id_hex.clone()))
    );
    let settings = TraceSettings {
        request_id_header: Some("x-req".into()),
        ..TraceSettings::default()
    };
    let d = decide(&settings, &HeaderList::default(), &mut counter(1));
    assert!(header(&d, "x-req").is_some());
}

#[test]
fn decide_b3() {
    let settings = TraceSettings {
        b3_accept: true,
        b3_emit: true,
        ..TraceSettings::default()
    };
    // single b3, 64-bit trace id, continued
    let req = HeaderList::default().with("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-1");
    let d = decide(&settings, &req, &mut counter(3));
    assert_eq!(d.outcome, TraceOutcome::Continued);
    assert_eq!(d.trace_id_hex, "0000000000000000a3ce929d0e0e4736");
    assert!(d.sampled);
    let b3 = header(&d, "b3").unwrap();
    assert_eq!(
        b3,
        format!(
            "0000000000000000a3ce929d0e0e4736-{}-1-00f067aa0ba902b7",
            d.span_id_hex
        )
    );
    // multi headers, deny; stale multi headers removed when emitting single
    let req = HeaderList::default()
        .with("x-b3-traceid", TID)
        .with("x-b3-spanid", PID)
        .with("x-b3-sampled", "0");
    let d = decide(&settings, &req, &mut counter(3));
    assert_eq!(d.outcome, TraceOutcome::Continued);
    assert_eq!(d.trace_id_hex, TID);
    assert!(!d.sampled);
    assert_eq!(
        d.remove_headers,
        vec!["x-b3-traceid", "x-b3-spanid", "x-b3-sampled"]
    );
    // `b3: 0` alone: a new trace, not sampled
    let req = HeaderList::default().with("b3", "0");
    let d = decide(&settings, &req, &mut counter(3));
    assert_eq!(d.outcome, TraceOutcome::Started);
    assert!(!d.sampled);
    assert!(header(&d, "b3").unwrap().ends_with("-0"));
    // an invalid traceparent does not hide a valid b3
    let req = HeaderList::default()
        .with("traceparent", "00-garbage")
        .with("b3", &format!("{TID}-{PID}-1"));
    let d = decide(&settings, &req, &mut counter(3));
    assert_eq!(
        (d.outcome, d.trace_id_hex.as_str()),
        (TraceOutcome::Continued, TID)
    );
    // an invalid b3 starts a new trace
    let req = HeaderList::default().with("b3", "nonsense-here");
    let d = decide(&settings, &req, &mut counter(3));
    assert_eq!(d.outcome, TraceOutcome::Started);
    // traceparent wins over b3
    let req = HeaderList::default()
        .with("traceparent", &tp("00", TID, PID, "01"))
        .with("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-0");
    let d = decide(&settings, &req, &mut counter(3));
    assert_eq!(d.trace_id_hex, TID);
    assert!(d.sampled);
    // b3 not accepted: ignored
    let settings = TraceSettings::default();
    let req = HeaderList::default().with("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-1");
    let d = decide(&settings, &req, &mut counter(3));
    assert_eq!(d.outcome, TraceOutcome::Started);
    assert_eq!(header(&d, "b3"), None);
}

#[test]
fn b3_single_table() {
    use b3::{B3Error as E, Sampling, B3};
    let ctx = |s: &str| match b3::parse_single(s) {
        Ok(B3::Context(c)) => Some(c),
        _ => None,
    };
    let c = ctx(&format!("{TID}-{PID}-1-0020000000000001")).unwrap();
    assert!(!c.trace_id_64bit);
    assert_eq!(c.sampling, Some(Sampling::Accept));
    assert_eq!(c.parent_span_id, Some([0, 0x20, 0, 0, 0, 0, 0, 1]));
    let c = ctx(&format!("{}-{PID}", &TID[16..])).unwrap();
    assert!(c.trace_id_64bit);
    assert_eq!(c.trace_id[..8], [0; 8]);
    assert_eq!(c.sampling, None);
    assert_eq!(
        ctx(&format!("{TID}-{PID}-d")).unwrap().sampling,
        Some(Sampling::Debug)
    );
    let cases: Vec<(String, Result<B3, E>)> = vec![
        ("0".into(), Ok(B3::SamplingOnly(Sampling::Deny))),
        ("1".into(), Ok(B3::SamplingOnly(Sampling::Accept))),
        ("d".into(), Ok(B3::SamplingOnly(Sampling::Debug))),
        ("2".into(), Err(E::Sampling("2".into()))),
        (format!("{TID}-{PID}-x"), Err(E::Sampling("x".into()))),
        (
            format!("{}-{PID}", &TID[..20]),
            Err(E::TraceId(TID[..20].into())),
        ),
        (
            format!("{}-{PID}", TID.to_uppercase()),
            Err(E::TraceId(TID.to_uppercase())),
        ),
        (
            format!("{}-{PID}", "0".repeat(16)),
            Err(E::TraceId("0".repeat(16))),
        ),
        (
            format!("{TID}-{}", "0".repeat(16)),
            Err(E::SpanId("0".repeat(16))),
        ),
        (
            format!("{TID}-{PID}-1-xyz"),
            Err(E::ParentSpanId("xyz".into())),
        ),
        (
            format!("{TID}-{PID}-1-{PID}-extra"),
            Err(E::Shape(format!("{TID}-{PID}-1-{PID}-extra"))),
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(b3::parse_single(&input), expected, "input {input:?}");
    }
}

#[test]
fn b3_multi_and_emit_round_trip() {
    use b3::{Sampling, B3};
    let mut trace_id = [0u8; 16];
    assert!(crate::decode_hex_lower(TID, &mut trace_id));
    let span = [1, 2, 3, 4, 5, 6, 7, 8];
    let parent = [8, 7, 6, 5, 4, 3, 2, 1];
    for sampling in [Sampling::Deny, Sampling::Accept, Sampling::Debug] {
        let headers = b3::multi_headers(&trace_id, &span, sampling, Some(&parent));
        let req = HeaderList(
            headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.clone()))
                .collect(),
        );
        let Some(Ok(B3::Context(c))) = b3::parse_multi(&req) else {
            panic!("multi did not parse: {headers:?}");
        };
        assert_eq!(
            (c.trace_id, c.span_id, c.parent_span_id),
            (trace_id, span, Some(parent))
        );
        assert_eq!(c.sampling, Some(sampling));
        let single = b3::single_header(&trace_id, &span, sampling, Some(&parent));
        let Ok(B3::Context(s)) = b3::parse_single(&single) else {
            panic!("single did not parse: {single}");
        };
        assert_eq!(s, c);
    }
    assert_eq!(b3::parse_multi(&HeaderList::default()), None);
    let only_trace = HeaderList::default().with("x-b3-traceid", TID);
    assert_eq!(
        b3::parse_multi(&only_trace),
        Some(Err(b3::B3Error::Incomplete))
    );
    let only_sampled = HeaderList::default().with("x-b3-sampled", "true");
    assert_eq!(
        b3::parse_multi(&only_sampled),
        Some(Ok(B3::SamplingOnly(Sampling::Accept)))
    );
}

#[test]
fn b3_multi_table() {
    use b3::{B3Error as E, Sampling, B3};
    let tid64 = &TID[16..];
    let mut padded = [0u8; 16];
    assert!(crate::decode_hex_lower(
        &format!("{}{tid64}", "0".repeat(16)),
        &mut padded
    ));
    let mut span = [0u8; 8];
    assert!(crate::decode_hex_lower(PID, &mut span));
    let ctx = |trace_id: [u8; 16], bit64: bool, sampling: Option<Sampling>| {
        Some(Ok(B3::Context(b3::B3Context {
            trace_id,
            trace_id_64bit: bit64,
            span_id: span,
            parent_span_id: None,
            sampling,
        })))
    };
    let mut full = [0u8; 16];
    assert!(crate::decode_hex_lower(TID, &mut full));
    let cases: Vec<(Headers, Option<Result<B3, E>>)> = vec![
        (vec![], None),
        // 64-bit trace ids are left-padded to 128 bits
        (
            vec![("x-b3-traceid", tid64), ("x-b3-spanid", PID)],
            ctx(padded, true, None),
        ),
        (
            vec![
                ("x-b3-traceid", TID),
                ("x-b3-spanid", PID),
                ("x-b3-sampled", "1"),
            ],
            ctx(full, false, Some(Sampling::Accept)),
        ),
        (
            vec![
                ("x-b3-traceid", TID),
                ("x-b3-spanid", PID),
                ("x-b3-sampled", "false"),
            ],
            ctx(full, false, Some(Sampling::Deny)),
        ),
        // debug: x-b3-flags 1 wins over x-b3-sampled
        (
            vec![
                ("x-b3-traceid", TID),
                ("x-b3-spanid", PID),
                ("x-b3-sampled", "0"),
                ("x-b3-flags", "1"),
            ],
            ctx(full, false, Some(Sampling::Debug)),
        ),
        (
            vec![("x-b3-flags", "1")],
            Some(Ok(B3::SamplingOnly(Sampling::Debug))),
        ),
        (
            vec![("x-b3-sampled", "0")],
            Some(Ok(B3::SamplingOnly(Sampling::Deny))),
        ),
        (
            vec![
                ("x-b3-traceid", TID),
                ("x-b3-spanid", PID),
                ("x-b3-sampled", "d"),
            ],
            Some(Err(E::Sampling("d".into()))),
        ),
        (vec![("x-b3-spanid", PID)], Some(Err(E::Incomplete))),
        (vec![("x-b3-parentspanid", PID)], Some(Err(E::Incomplete))),
        (vec![("x-b3-flags", "0")], Some(Err(E::Incomplete))),
        (
            vec![("x-b3-traceid", &TID[..20]), ("x-b3-spanid", PID)],
            Some(Err(E::TraceId(TID[..20].into()))),
        ),
        (
            vec![("x-b3-traceid", TID), ("x-b3-spanid", "0000000000000000")],
            Some(Err(E::SpanId("0000000000000000".into()))),
        ),
        (
            vec![
                ("x-b3-traceid", TID),
                ("x-b3-spanid", PID),
                ("x-b3-parentspanid", "xyz"),
            ],
            Some(Err(E::ParentSpanId("xyz".into()))),
        ),
    ];
    for (headers, expected) in cases {
        let req = HeaderList::from_pairs(headers.iter().copied());
        assert_eq!(b3::parse_multi(&req), expected, "{headers:?}");
    }
    // the single header wins over the multi headers
    let req = HeaderList::default()
        .with("b3", "0")
        .with("x-b3-traceid", TID)
        .with("x-b3-spanid", PID);
    assert_eq!(
        b3::from_request(&req),
        Some(Ok(B3::SamplingOnly(Sampling::Deny)))
    );
}

#[test]
fn decide_b3_64_bit_ids_and_sampling_states() {
    let settings = TraceSettings {
        b3_accept: true,
        b3_emit: true,
        ..TraceSettings::default()
    };
    let tid64 = &TID[16..];
    let padded = format!("{}{tid64}", "0".repeat(16));
    // multi, 64-bit, debug: continued with a left-padded W3C trace id, sampled
    let req = HeaderList::default()
        .with("x-b3-traceid", tid64)
        .with("x-b3-spanid", PID)
        .with("x-b3-flags", "1");
    let d = decide(&settings, &req, &mut counter(3));
    assert_eq!(d.outcome, TraceOutcome::Continued);
    assert_eq!(d.trace_id_hex, padded);
    assert!(d.sampled);
    let out = parse_traceparent(header(&d, "traceparent").unwrap()).unwrap();
    assert_eq!(out.trace_id_hex(), padded);
    assert!(out.sampled());
    assert_eq!(
        header(&d, "b3").unwrap(),
        format!("{padded}-{}-d-{PID}", d.span_id_hex)
    );
    assert_eq!(
        d.remove_headers,
        vec!["x-b3-traceid", "x-b3-spanid", "x-b3-flags"]
    );
    // no sampling state: the receiver decides (ratio 1.0 here: sampled; 0: not)
    let req = HeaderList::default().with("b3", &format!("{tid64}-{PID}"));
    let d = decide(&settings, &req, &mut counter(3));
    assert_eq!((d.outcome, d.sampled), (TraceOutcome::Continued, true));
    assert!(header(&d, "b3").unwrap().contains("-1-"));
    let never = TraceSettings {
        sample_ratio: 0.0,
        ..settings.clone()
    };
    let d = decide(&never, &req, &mut counter(3));
    assert_eq!((d.outcome, d.sampled), (TraceOutcome::Continued, false));
    assert_eq!(d.trace_id_hex, padded);
    // `b3: d` alone: a new, sampled trace that stays debug
    let req = HeaderList::default().with("b3", "d");
    let d = decide(&never, &req, &mut counter(3));
    assert_eq!((d.outcome, d.sampled), (TraceOutcome::Started, true));
    assert!(header(&d, "b3").unwrap().ends_with("-d"));
    // a W3C parent continued with b3.emit: b3 carries the same ids and flag
    let req = HeaderList::default().with("traceparent", &tp("00", TID, PID, "00"));
    let d = decide(&settings, &req, &mut counter(3));
    assert_eq!(
        header(&d, "b3").unwrap(),
        format!("{TID}-{}-0-{PID}", d.span_id_hex)
    );
}

#[test]
fn uuid_v4_shape() {
    let id = uuid_v4(&mut |b: &mut [u8]| b.fill(0xff));
    assert_eq!(id, "ffffffff-ffff-4fff-bfff-ffffffffffff");
    let id = uuid_v4(&mut |b: &mut [u8]| b.fill(0));
    assert_eq!(id, "00000000-0000-4000-8000-000000000000");
}
