//! The official W3C Trace Context test suite (github.com/w3c/trace-context,
//! `test/test.py`), rewritten as our own table: every case the suite has, at
//! its default strictness (`STRICT_LEVEL=2`: the `tracestate` limits
//! included), at Level 1 (`TraceContextTest`, `AdvancedTest`) and Level 2
//! (`TraceContext2Test`), with the same inputs and the same checks.
//!
//! The harness is the suite's: a request goes to Envoy's inbound listener
//! (the filter continues or starts the trace), on to the test service
//! (`tests/src/trace_context.rs`), which makes the requested callbacks with the
//! `traceparent`/`tracestate` it received through Envoy's outbound listener
//! (the filter again) to this test's own callback server, all over real HTTP
//! on loopback (`envoy-config/trace-context.yaml`, ports rewritten). Requests
//! are written byte for byte as the suite's aiohttp client writes them, so
//! header-name casing, repeated headers and whitespace reach Envoy as they
//! would from the suite. The callbacks' headers are read the way the suite
//! reads them (one `traceparent` that its `Traceparent` class accepts, every
//! `tracestate` field through its `Tracestate` grammar, the first of a
//! duplicated key winning).
//!
//! To run the official suite itself against the same setup, see
//! `scripts/w3c-suite.sh` and DEVELOPERS.md.
//!
//! Needs the filter built first (`make filter`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use sidestream_tests::trace_context::TraceContextSetup;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TRACE_ID: &str = "12345678901234567890123456789012";
const PARENT_ID: &str = "1234567890123456";

/// The suite's tests at Level 1, each of which must have rows in the table.
const LEVEL_1_SUITE_TESTS: [&str; 40] = [
    "test_both_traceparent_and_tracestate_missing",
    "test_traceparent_included_tracestate_missing",
    "test_traceparent_duplicated",
    "test_traceparent_header_name",
    "test_traceparent_header_name_valid_casing",
    "test_traceparent_version_0x00",
    "test_traceparent_version_0xcc",
    "test_traceparent_version_0xff",
    "test_traceparent_version_illegal_characters",
    "test_traceparent_version_too_long",
    "test_traceparent_version_too_short",
    "test_traceparent_trace_id_all_zero",
    "test_traceparent_trace_id_illegal_characters",
    "test_traceparent_trace_id_too_long",
    "test_traceparent_trace_id_too_short",
    "test_traceparent_parent_id_all_zero",
    "test_traceparent_parent_id_illegal_characters",
    "test_traceparent_parent_id_too_long",
    "test_traceparent_parent_id_too_short",
    "test_traceparent_trace_flags_illegal_characters",
    "test_traceparent_trace_flags_too_long",
    "test_traceparent_trace_flags_too_short",
    "test_traceparent_ows_handling",
    "test_tracestate_included_traceparent_missing",
    "test_tracestate_included_traceparent_included",
    "test_tracestate_header_name",
    "test_tracestate_header_name_valid_casing",
    "test_tracestate_empty_header",
    "test_tracestate_multiple_headers_different_keys",
    "test_tracestate_duplicated_keys",
    "test_tracestate_all_allowed_characters",
    "test_tracestate_ows_handling",
    "test_tracestate_key_illegal_characters",
    "test_tracestate_key_illegal_vendor_format",
    "test_tracestate_member_count_limit",
    "test_tracestate_key_length_limit",
    "test_tracestate_value_illegal_characters",
    "test_multiple_requests_with_valid_traceparent",
    "test_multiple_requests_without_traceparent",
    "test_multiple_requests_with_illegal_traceparent",
];

/// What the suite asserts about the callbacks of one request. Every check
/// applies to every callback; besides them, each callback must carry exactly
/// one valid version-00 `traceparent` and `tracestate` fields the suite's
/// grammar accepts (the suite errors otherwise).
#[derive(Debug, Clone)]
enum Check {
    /// `assertEqual(traceparent.trace_id.hex(), id)`.
    TraceId(&'static str),
    /// `assertNotEqual(traceparent.trace_id.hex(), id)`.
    NotTraceId(&'static str),
    /// `assertNotEqual(traceparent.parent_id.hex(), id)`.
    NotParentId(&'static str),
    /// `assertIn(key, tracestate)` and `assertEqual(tracestate[key], value)`.
    Member(String, String),
    /// `assertRaises(KeyError, lambda: tracestate[key])`.
    NoMember(String),
    /// `assertEqual(len(tracestate), n)`.
    MemberCount(usize),
    /// `assertTrue(text in str(tracestate))`.
    Contains(String),
    /// `assertTrue(a in str(tracestate) or b in str(tracestate) ...)`.
    ContainsAny(Vec<String>),
    /// Each text is in `str(tracestate)`, left of the next.
    InOrder(Vec<String>),
    /// `assert_bit_set(traceparent.trace_flags, ...)`: these flag bits are set.
    FlagsSet(u8),
    /// The flags are exactly these (our Level 2 rows beyond the suite).
    Flags(u8),
    /// Across the callbacks: one trace id (`assertEqual(len(trace_ids), 1)`).
    OneTraceId,
    /// Across the callbacks: all parent ids differ
    /// (`assertEqual(len(parent_ids), count)`).
    DistinctParentIds,
}

/// One request of a suite test: the headers the harness sends, how many
/// callbacks it asks for, what it checks.
#[derive(Debug, Clone)]
struct Row {
    test: &'static str,
    headers: Vec<(&'static str, String)>,
    callbacks: usize,
    checks: Vec<Check>,
}

fn row(test: &'static str, headers: &[(&'static str, &str)], checks: Vec<Check>) -> Row {
    Row {
        test,
        headers: headers
            .iter()
            .map(|(name, value)| (*name, (*value).to_owned()))
            .collect(),
        callbacks: 1,
        checks,
    }
}

fn tp(value: &str) -> (&'static str, &str) {
    ("traceparent", value)
}

fn ts(value: &str) -> (&'static str, &str) {
    ("tracestate", value)
}

fn member(key: &str, value: &str) -> Check {
    Check::Member(key.to_owned(), value.to_owned())
}

fn no_member(key: &str) -> Check {
    Check::NoMember(key.to_owned())
}

fn contains(text: &str) -> Check {
    Check::Contains(text.to_owned())
}

/// `00-12345678901234567890123456789012-1234567890123456-<flags>`.
fn parent(flags: &str) -> String {
    format!("00-{TRACE_ID}-{PARENT_ID}-{flags}")
}

/// Every request of the suite's Level 1 tests (`TraceContextTest`, `AdvancedTest`).
fn level_1_rows() -> Vec<Row> {
    use Check::*;
    let p00 = parent("00");
    let p01 = parent("01");
    let mut rows = vec![
        row("test_both_traceparent_and_tracestate_missing", &[], vec![]),
        row(
            "test_traceparent_included_tracestate_missing",
            &[tp(&p01)],
            vec![TraceId(TRACE_ID), NotParentId(PARENT_ID)],
        ),
        row(
            "test_traceparent_duplicated",
            &[
                tp("00-12345678901234567890123456789011-1234567890123456-01"),
                tp(&p01),
            ],
            vec![
                NotTraceId("12345678901234567890123456789011"),
                NotTraceId(TRACE_ID),
            ],
        ),
    ];
    for name in ["trace-parent", "trace.parent"] {
        rows.push(row(
            "test_traceparent_header_name",
            &[(name, &p01)],
            vec![NotTraceId(TRACE_ID)],
        ));
    }
    for name in ["TraceParent", "TrAcEpArEnT", "TRACEPARENT"] {
        rows.push(row(
            "test_traceparent_header_name_valid_casing",
            &[(name, &p01)],
            vec![TraceId(TRACE_ID)],
        ));
    }
    // Invalid traceparents: a new trace id.
    let restarted: Vec<(&'static str, String)> = vec![
        ("test_traceparent_version_0x00", format!("{p01}.")),
        (
            "test_traceparent_version_0x00",
            format!("{p01}-what-the-future-will-be-like"),
        ),
        (
            "test_traceparent_version_0xcc",
            format!("cc-{TRACE_ID}-{PARENT_ID}-01.what-the-future-will-be-like"),
        ),
        (
            "test_traceparent_version_0xff",
            format!("ff-{TRACE_ID}-{PARENT_ID}-01"),
        ),
        (
            "test_traceparent_version_illegal_characters",
            format!(".0-{TRACE_ID}-{PARENT_ID}-01"),
        ),
        (
            "test_traceparent_version_illegal_characters",
            format!("0.-{TRACE_ID}-{PARENT_ID}-01"),
        ),
        (
            "test_traceparent_version_too_long",
            format!("000-{TRACE_ID}-{PARENT_ID}-01"),
        ),
        (
            "test_traceparent_version_too_long",
            format!("0000-{TRACE_ID}-{PARENT_ID}-01"),
        ),
        (
            "test_traceparent_version_too_short",
            format!("0-{TRACE_ID}-{PARENT_ID}-01"),
        ),
        (
            "test_traceparent_parent_id_all_zero",
            format!("00-{TRACE_ID}-0000000000000000-01"),
        ),
        (
            "test_traceparent_parent_id_illegal_characters",
            format!("00-{TRACE_ID}-.234567890123456-01"),
        ),
        (
            "test_traceparent_parent_id_illegal_characters",
            format!("00-{TRACE_ID}-123456789012345.-01"),
        ),
        (
            "test_traceparent_parent_id_too_long",
            format!("00-{TRACE_ID}-12345678901234567-01"),
        ),
        (
            "test_traceparent_parent_id_too_short",
            format!("00-{TRACE_ID}-123456789012345-01"),
        ),
        (
            "test_traceparent_trace_flags_illegal_characters",
            format!("00-{TRACE_ID}-{PARENT_ID}-.0"),
        ),
        (
            "test_traceparent_trace_flags_illegal_characters",
            format!("00-{TRACE_ID}-{PARENT_ID}-0."),
        ),
        (
            "test_traceparent_trace_flags_too_long",
            format!("00-{TRACE_ID}-{PARENT_ID}-001"),
        ),
        (
            "test_traceparent_trace_flags_too_short",
            format!("00-{TRACE_ID}-{PARENT_ID}-1"),
        ),
    ];
    for (test, value) in &restarted {
        rows.push(row(test, &[tp(value)], vec![NotTraceId(TRACE_ID)]));
    }
    // Invalid trace ids: the suite checks they were not kept.
    rows.push(row(
        "test_traceparent_trace_id_all_zero",
        &[tp(&format!("00-{}-{PARENT_ID}-01", "0".repeat(32)))],
        vec![NotTraceId("00000000000000000000000000000000")],
    ));
    for trace_id in [
        ".2345678901234567890123456789012",
        "1234567890123456789012345678901.",
    ] {
        rows.push(row(
            "test_traceparent_trace_id_illegal_characters",
            &[tp(&format!("00-{trace_id}-{PARENT_ID}-01"))],
            vec![NotTraceId(trace_id)],
        ));
    }
    rows.push(row(
        "test_traceparent_trace_id_too_long",
        &[tp(&format!(
            "00-123456789012345678901234567890123-{PARENT_ID}-01"
        ))],
        vec![
            NotTraceId("123456789012345678901234567890123"),
            NotTraceId(TRACE_ID),
            NotTraceId("23456789012345678901234567890123"),
        ],
    ));
    rows.push(row(
        "test_traceparent_trace_id_too_short",
        &[tp(&format!(
            "00-1234567890123456789012345678901-{PARENT_ID}-01"
        ))],
        vec![NotTraceId("1234567890123456789012345678901")],
    ));
    // Future versions are continued when their version-00 part parses.
    for value in [
        format!("cc-{TRACE_ID}-{PARENT_ID}-01"),
        format!("cc-{TRACE_ID}-{PARENT_ID}-01-what-the-future-will-be-like"),
    ] {
        rows.push(row(
            "test_traceparent_version_0xcc",
            &[tp(&value)],
            vec![TraceId(TRACE_ID)],
        ));
    }
    for value in [
        format!(" {p01}"),
        format!("\t{p01}"),
        format!("{p01} "),
        format!("{p01}\t"),
        format!("\t {p01} \t"),
    ] {
        rows.push(row(
            "test_traceparent_ows_handling",
            &[tp(&value)],
            vec![TraceId(TRACE_ID)],
        ));
    }
    // The filter adds no tracestate members of its own, so the suite's "the
    // two requests give tracestates of one length" means both are empty.
    for state in ["foo=1", "foo=1,bar=2"] {
        rows.push(row(
            "test_tracestate_included_traceparent_missing",
            &[ts(state)],
            vec![MemberCount(0)],
        ));
    }
    rows.push(row(
        "test_tracestate_included_traceparent_included",
        &[tp(&p00), ts("foo=1,bar=2")],
        vec![TraceId(TRACE_ID), member("foo", "1"), member("bar", "2")],
    ));
    for name in ["trace-state", "trace.state"] {
        rows.push(row(
            "test_tracestate_header_name",
            &[tp(&p00), (name, "foo=1")],
            vec![no_member("foo")],
        ));
    }
    for name in ["TraceState", "TrAcEsTaTe", "TRACESTATE"] {
        rows.push(row(
            "test_tracestate_header_name_valid_casing",
            &[tp(&p00), (name, "foo=1")],
            vec![member("foo", "1")],
        ));
    }
    rows.push(row(
        "test_tracestate_empty_header",
        &[tp(&p00), ts("")],
        vec![TraceId(TRACE_ID)],
    ));
    rows.push(row(
        "test_tracestate_empty_header",
        &[tp(&p00), ts("foo=1"), ts("")],
        vec![TraceId(TRACE_ID), member("foo", "1")],
    ));
    rows.push(row(
        "test_tracestate_empty_header",
        &[tp(&p00), ts(""), ts("foo=1")],
        vec![TraceId(TRACE_ID), member("foo", "1")],
    ));
    let in_order = ["foo=1", "bar=2", "rojo=1", "congo=2", "baz=3"];
    let mut checks = vec![TraceId(TRACE_ID)];
    checks.extend(in_order.iter().map(|m| contains(m)));
    checks.push(InOrder(in_order.iter().map(|m| (*m).to_owned()).collect()));
    rows.push(row(
        "test_tracestate_multiple_headers_different_keys",
        &[
            tp(&p00),
            ts("foo=1,bar=2"),
            ts("rojo=1,congo=2"),
            ts("baz=3"),
        ],
        checks,
    ));
    let duplicated: [(&[&str], Check); 4] = [
        (&["foo=1,foo=1"], contains("foo=1")),
        (
            &["foo=1,foo=2"],
            ContainsAny(vec!["foo=1".into(), "foo=2".into()]),
        ),
        (&["foo=1", "foo=1"], contains("foo=1")),
        (
            &["foo=1", "foo=2"],
            ContainsAny(vec!["foo=1".into(), "foo=2".into()]),
        ),
    ];
    for (states, check) in duplicated {
        let mut headers = vec![tp(&p00)];
        headers.extend(states.iter().map(|s| ts(s)));
        rows.push(row(
            "test_tracestate_duplicated_keys",
            &headers,
            vec![TraceId(TRACE_ID), check],
        ));
    }
    let key = "abcdefghijklmnopqrstuvwxyz0123456789_-*/";
    let vendor_key = format!("{key}@a-z0-9_-*/");
    let value: String = (0x20u8..=0x2b)
        .chain(0x2d..=0x3c)
        .chain(0x3e..=0x7e)
        .map(char::from)
        .collect();
    for key in [key, vendor_key.as_str()] {
        rows.push(row(
            "test_tracestate_all_allowed_characters",
            &[tp(&p00), ts(&format!("{key}={value}"))],
            vec![member(key, &value)],
        ));
    }
    for state in [
        "foo=1 \t , \t bar=2, \t baz=3",
        "foo=1\t \t,\t \tbar=2,\t \tbaz=3",
    ] {
        rows.push(row(
            "test_tracestate_ows_handling",
            &[tp(&p00), ts(state)],
            vec![member("foo", "1"), member("bar", "2"), member("baz", "3")],
        ));
    }
    for state in [" foo=1", "\tfoo=1", "foo=1 ", "foo=1\t", "\t foo=1 \t"] {
        rows.push(row(
            "test_tracestate_ows_handling",
            &[tp(&p00), ts(state)],
            vec![TraceId(TRACE_ID), member("foo", "1")],
        ));
    }
    for (state, key) in [
        ("foo =1", "foo "),
        ("FOO=1", "FOO"),
        ("foo.bar=1", "foo.bar"),
    ] {
        rows.push(row(
            "test_tracestate_key_illegal_characters",
            &[tp(&p00), ts(state)],
            vec![no_member(key)],
        ));
    }
    for key in ["foo@", "foo@@bar", "foo@bar@baz"] {
        rows.push(row(
            "test_tracestate_key_illegal_vendor_format",
            &[tp(&p00), ts(&format!("{key}=1,bar=2"))],
            vec![member(key, "1"), member("bar", "2")],
        ));
    }
    rows.push(row(
        "test_tracestate_key_illegal_vendor_format",
        &[tp(&p00), ts("@foo=1,bar=2")],
        vec![no_member("bar")],
    ));
    let members: Vec<String> = (1..=33).map(|i| format!("bar{i:02}={i:02}")).collect();
    let fields = |count: usize| -> Vec<String> {
        members[..count]
            .chunks(10)
            .map(|chunk| chunk.join(","))
            .collect()
    };
    let with_fields = |states: &[String]| -> Vec<(&'static str, String)> {
        let mut headers = vec![("traceparent", p00.clone())];
        headers.extend(states.iter().map(|s| ("tracestate", s.clone())));
        headers
    };
    rows.push(Row {
        test: "test_tracestate_member_count_limit",
        headers: with_fields(&fields(32)),
        callbacks: 1,
        checks: vec![member("bar01", "01"), MemberCount(32)],
    });
    rows.push(Row {
        test: "test_tracestate_member_count_limit",
        headers: with_fields(&fields(33)),
        callbacks: 1,
        checks: vec![no_member("bar01")],
    });
    for key in [
        "z".repeat(256),
        format!("{}@{}", "t".repeat(241), "v".repeat(14)),
        format!("{}@v", "t".repeat(242)),
        format!("t@{}", "v".repeat(15)),
    ] {
        rows.push(Row {
            test: "test_tracestate_key_length_limit",
            headers: with_fields(&["foo=1".to_owned(), format!("{key}=1")]),
            callbacks: 1,
            checks: vec![member("foo", "1"), member(&key, "1")],
        });
    }
    rows.push(Row {
        test: "test_tracestate_key_length_limit",
        headers: with_fields(&["foo=1".to_owned(), format!("{}=1", "z".repeat(257))]),
        callbacks: 1,
        checks: vec![no_member("foo")],
    });
    rows.push(row(
        "test_tracestate_value_illegal_characters",
        &[tp(&p00), ts("foo=bar=baz")],
        vec![no_member("foo")],
    ));
    rows.push(row(
        "test_tracestate_value_illegal_characters",
        &[tp(&p00), ts("foo=,bar=3")],
        vec![no_member("foo"), no_member("bar")],
    ));
    // AdvancedTest: three callbacks each.
    rows.push(three_callbacks(row(
        "test_multiple_requests_with_valid_traceparent",
        &[tp(&p01)],
        vec![TraceId(TRACE_ID), OneTraceId, DistinctParentIds],
    )));
    rows.push(three_callbacks(row(
        "test_multiple_requests_without_traceparent",
        &[],
        vec![DistinctParentIds],
    )));
    rows.push(three_callbacks(row(
        "test_multiple_requests_with_illegal_traceparent",
        &[tp(&format!("00-{}-{PARENT_ID}-01", "0".repeat(32)))],
        vec![
            NotTraceId("00000000000000000000000000000000"),
            DistinctParentIds,
        ],
    )));
    rows
}

/// The suite's Level 2 test (`TraceContext2Test`) and, beyond it, the rest of
/// what Level 2 says of the random flag.
fn level_2_rows() -> Vec<Row> {
    use Check::*;
    let p02 = parent("02");
    let p03 = parent("03");
    let p01 = parent("01");
    vec![
        row(
            "test_propagates_random_flag",
            &[tp(&p02)],
            vec![TraceId(TRACE_ID), NotParentId(PARENT_ID), FlagsSet(0x02)],
        ),
        // beyond the suite: the flag is kept exactly, set or unset ...
        row(
            "spec: a continued random flag stays with the sampled flag",
            &[tp(&p03)],
            vec![TraceId(TRACE_ID), Flags(0x03)],
        ),
        row(
            "spec: an unset random flag stays unset",
            &[tp(&p01)],
            vec![TraceId(TRACE_ID), Flags(0x01)],
        ),
        row(
            "spec: flags nobody defines yet are sent as 0",
            &[tp(&parent("fe"))],
            vec![TraceId(TRACE_ID), Flags(0x02)],
        ),
        // ... and set on a trace id the filter draws from its CSPRNG
        three_callbacks(row(
            "spec: a new trace id is random and says so",
            &[],
            vec![OneTraceId, DistinctParentIds, FlagsSet(0x02)],
        )),
        row(
            "spec: a restarted trace id is random and says so",
            &[tp(&format!("ff-{TRACE_ID}-{PARENT_ID}-00"))],
            vec![NotTraceId(TRACE_ID), FlagsSet(0x02)],
        ),
    ]
}

fn three_callbacks(mut row: Row) -> Row {
    row.callbacks = 3;
    row
}

// ---------------------------------------------------------------------------
// The callbacks' headers, read as the suite reads them.

/// A `traceparent` as the suite's `Traceparent.from_string` accepts it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Traceparent {
    trace_id: String,
    parent_id: String,
    flags: u8,
}

fn lower_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Exactly one `traceparent` field (any casing), version 00, ids of lowercase
/// hex that are not all zero.
fn traceparent(headers: &[(String, String)]) -> Result<Traceparent, String> {
    let fields: Vec<&str> = headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("traceparent"))
        .map(|(_, value)| value.as_str())
        .collect();
    let [value] = fields[..] else {
        return Err(format!("expected one traceparent header, got {fields:?}"));
    };
    let parts: Vec<&str> = value.split('-').collect();
    let [version, trace_id, parent_id, flags] = parts[..] else {
        return Err(format!("traceparent {value:?} has not 4 fields"));
    };
    if version != "00" {
        return Err(format!("traceparent {value:?}: version is not 00"));
    }
    if !lower_hex(trace_id, 32) || trace_id.bytes().all(|b| b == b'0') {
        return Err(format!("traceparent {value:?}: bad trace-id"));
    }
    if !lower_hex(parent_id, 16) || parent_id.bytes().all(|b| b == b'0') {
        return Err(format!("traceparent {value:?}: bad parent-id"));
    }
    if !lower_hex(flags, 2) {
        return Err(format!("traceparent {value:?}: bad trace-flags"));
    }
    let flags = u8::from_str_radix(flags, 16).map_err(|e| format!("{value:?}: {e}"))?;
    Ok(Traceparent {
        trace_id: trace_id.to_owned(),
        parent_id: parent_id.to_owned(),
        flags,
    })
}

/// The suite's tracestate key: `[0-9a-z][_0-9a-z\-\*\/@]{0,255}`.
fn suite_key(key: &str) -> bool {
    let b = key.as_bytes();
    (1..=256).contains(&b.len())
        && matches!(b[0], b'0'..=b'9' | b'a'..=b'z')
        && b.iter()
            .all(|&c| matches!(c, b'0'..=b'9' | b'a'..=b'z' | b'_' | b'-' | b'*' | b'/' | b'@'))
}

/// The suite's tracestate value: `[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}`
/// then one of `[\x21-\x2b\x2d-\x3c\x3e-\x7e]`.
fn suite_value(value: &str) -> bool {
    let chr = |c: u8| matches!(c, 0x20..=0x2b | 0x2d..=0x3c | 0x3e..=0x7e);
    let b = value.as_bytes();
    (1..=256).contains(&b.len())
        && b.iter().all(|&c| chr(c))
        && b.last().is_some_and(|&c| c != b' ')
}

/// Every `tracestate` field (any casing), in order, as the suite's
/// `Tracestate.from_string` reads them: split at commas with spaces and tabs
/// around them, empty members skipped, an invalid member an error, the first
/// of a duplicated key kept.
fn tracestate(headers: &[(String, String)]) -> Result<Vec<(String, String)>, String> {
    let mut members: Vec<(String, String)> = Vec::new();
    for (_, field) in headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("tracestate"))
    {
        let pieces: Vec<&str> = field.split(',').collect();
        let last = pieces.len() - 1;
        for (i, piece) in pieces.iter().enumerate() {
            let mut member = *piece;
            if i > 0 {
                member = member.trim_start_matches([' ', '\t']);
            }
            if i < last {
                member = member.trim_end_matches([' ', '\t']);
            }
            if member.is_empty() {
                continue;
            }
            let valid = member
                .split_once('=')
                .filter(|(key, value)| suite_key(key) && suite_value(value));
            let Some((key, value)) = valid else {
                return Err(format!("illegal key-value format {member:?} in {field:?}"));
            };
            if members.iter().all(|(k, _)| k != key) {
                members.push((key.to_owned(), value.to_owned()));
            }
        }
    }
    Ok(members)
}

/// `str(tracestate)`.
fn tracestate_text(members: &[(String, String)]) -> String {
    members
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// What is wrong with the callbacks of `row` (empty when the suite would pass it).
fn problems(row: &Row, callbacks: &[Vec<(String, String)>]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut parents = Vec::new();
    for (index, headers) in callbacks.iter().enumerate() {
        let parent = match traceparent(headers) {
            Ok(parent) => parent,
            Err(e) => {
                problems.push(format!("callback {index}: {e}"));
                continue;
            }
        };
        let state = match tracestate(headers) {
            Ok(state) => state,
            Err(e) => {
                problems.push(format!("callback {index}: {e}"));
                continue;
            }
        };
        let text = tracestate_text(&state);
        let get = |key: &str| state.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        for check in &row.checks {
            let ok = match check {
                Check::TraceId(id) => parent.trace_id == *id,
                Check::NotTraceId(id) => parent.trace_id != *id,
                Check::NotParentId(id) => parent.parent_id != *id,
                Check::Member(key, value) => get(key) == Some(value),
                Check::NoMember(key) => get(key).is_none(),
                Check::MemberCount(n) => state.len() == *n,
                Check::Contains(part) => text.contains(part.as_str()),
                Check::ContainsAny(parts) => parts.iter().any(|p| text.contains(p.as_str())),
                Check::InOrder(parts) => {
                    let at: Vec<Option<usize>> = parts.iter().map(|p| text.find(p)).collect();
                    at.iter().all(Option::is_some) && at.windows(2).all(|w| w[0] < w[1])
                }
                Check::FlagsSet(bits) => parent.flags & bits == *bits,
                Check::Flags(flags) => parent.flags == *flags,
                Check::OneTraceId | Check::DistinctParentIds => true,
            };
            if !ok {
                problems.push(format!(
                    "callback {index}: {check:?} failed; traceparent {parent:?}, tracestate {text:?}"
                ));
            }
        }
        parents.push(parent);
    }
    if parents.len() == callbacks.len() {
        for check in &row.checks {
            match check {
                Check::OneTraceId => {
                    let ids: BTreeSet<&str> = parents.iter().map(|p| p.trace_id.as_str()).collect();
                    if ids.len() != 1 {
                        problems.push(format!("trace ids differ across callbacks: {ids:?}"));
                    }
                }
                Check::DistinctParentIds => {
                    let ids: BTreeSet<&str> =
                        parents.iter().map(|p| p.parent_id.as_str()).collect();
                    if ids.len() != parents.len() {
                        problems.push(format!("parent ids repeat across callbacks: {parents:?}"));
                    }
                }
                _ => {}
            }
        }
    }
    problems
}

// ---------------------------------------------------------------------------
// The harness: the callback server and the requests.

type Received = Arc<Mutex<HashMap<String, Vec<(String, String)>>>>;

/// This test's callback server: records the headers of each POST under its
/// path (`/<scope>.<index>`) and answers `null`, as the suite's does.
struct Callbacks {
    port: u16,
    received: Received,
    task: tokio::task::JoinHandle<()>,
}

impl Callbacks {
    async fn start() -> Callbacks {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind callback server");
        let port = listener.local_addr().expect("addr").port();
        let received: Received = Arc::default();
        let app = Router::new()
            .fallback(post(record))
            .with_state(Arc::clone(&received));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Callbacks {
            port,
            received,
            task,
        }
    }

    fn take(&self, path: &str) -> Option<Vec<(String, String)>> {
        self.received.lock().expect("lock").remove(path)
    }
}

impl Drop for Callbacks {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(State(received): State<Received>, request: Request) -> impl IntoResponse {
    let headers = request
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    received
        .lock()
        .expect("lock")
        .insert(request.uri().path().to_owned(), headers);
    Json(Value::Null)
}

/// POSTs to the service endpoint (Envoy's inbound listener) the way the
/// suite's aiohttp client does: `Name: value` lines written as given, the
/// callback list as the JSON body. Returns the status and the body.
async fn post_raw(
    inbound: u16,
    headers: &[(&str, String)],
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let mut request = format!(
        "POST /test HTTP/1.1\r\nHost: 127.0.0.1:{inbound}\r\nAccept: application/json\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    let mut stream = TcpStream::connect(("127.0.0.1", inbound)).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut response)).await??;
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no response head in {response:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("bad status line in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// Runs every row through the setup; the problems found, each naming its
/// suite test and what was sent.
async fn run(rows: &[Row]) -> Vec<String> {
    let setup = TraceContextSetup::start("w3c-trace-context")
        .await
        .expect("envoy and the service start");
    let callbacks = Callbacks::start().await;
    static SCOPE: AtomicU64 = AtomicU64::new(0);
    let mut failures = Vec::new();
    for (index, row) in rows.iter().enumerate() {
        let scope = format!("scope{}", SCOPE.fetch_add(1, Ordering::SeqCst));
        let urls: Vec<Value> = (0..row.callbacks)
            .map(|i| {
                json!({
                    "url": format!("http://127.0.0.1:{}/{scope}.{i}", callbacks.port),
                    "arguments": [],
                })
            })
            .collect();
        let body = Value::Array(urls).to_string();
        let what = format!("{} (row {index}, sent {:?})", row.test, row.headers);
        let (status, answer) = match post_raw(setup.ports.inbound, &row.headers, &body).await {
            Ok(reply) => reply,
            Err(e) => {
                failures.push(format!("{what}: request failed: {e:#}"));
                continue;
            }
        };
        if status != 200 {
            failures.push(format!("{what}: the service answered {status}: {answer}"));
            continue;
        }
        // The service answers after its callbacks were answered: they are here.
        let mut received = Vec::new();
        for i in 0..row.callbacks {
            match callbacks.take(&format!("/{scope}.{i}")) {
                Some(headers) => received.push(headers),
                None => failures.push(format!("{what}: callback {i} never arrived")),
            }
        }
        if received.len() == row.callbacks {
            failures.extend(
                problems(row, &received)
                    .into_iter()
                    .map(|p| format!("{what}: {p}")),
            );
        }
    }
    failures
}

#[tokio::test]
async fn the_suites_level_1_cases_pass_through_envoy_with_the_filter() {
    let rows = level_1_rows();
    let covered: BTreeSet<&str> = rows.iter().map(|r| r.test).collect();
    let expected: BTreeSet<&str> = LEVEL_1_SUITE_TESTS.into_iter().collect();
    assert_eq!(
        covered, expected,
        "every Level 1 test of the suite has rows"
    );
    let failures = run(&rows).await;
    assert!(
        failures.is_empty(),
        "{} problems in {} rows:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn the_suites_level_2_cases_pass_through_envoy_with_the_filter() {
    let rows = level_2_rows();
    assert!(rows.iter().any(|r| r.test == "test_propagates_random_flag"));
    let failures = run(&rows).await;
    assert!(
        failures.is_empty(),
        "{} problems in {} rows:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn the_service_names_what_is_wrong_with_a_bad_request() {
    let setup = TraceContextSetup::start("w3c-trace-context-bad")
        .await
        .expect("envoy and the service start");
    let cases = [
        ("{}", "not a JSON list"),
        ("[{\"arguments\": []}]", "callback 0 has no string 'url'"),
        ("[{\"url\": \"ftp://x/\"}]", "is not http://host:port/"),
        ("not json", "the body is not JSON"),
    ];
    for (body, expected) in cases {
        let (status, answer) = post_raw(setup.ports.inbound, &[], body)
            .await
            .expect("request");
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer.contains(expected), "{body}: {answer}");
    }
}

/// The checks are the suite's: they fail what the suite fails.
#[test]
fn the_checks_reject_what_the_suite_rejects() {
    let h = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    };
    let valid = parent("01");
    assert!(traceparent(&h(&[("TraceParent", &valid)])).is_ok());
    for bad in [
        h(&[]),
        h(&[("traceparent", &valid), ("traceparent", &valid)]),
        h(&[("traceparent", &parent("01").replacen("00", "01", 1))]),
        h(&[("traceparent", &format!("{valid}-x"))]),
        h(&[(
            "traceparent",
            &format!("00-{}-{PARENT_ID}-01", "0".repeat(32)),
        )]),
        h(&[("traceparent", &format!("00-{TRACE_ID}-{PARENT_ID}-1"))]),
    ] {
        assert!(traceparent(&bad).is_err(), "{bad:?}");
    }
    for bad in [
        "@foo=1",
        "foo=",
        "FOO=1",
        "foo=a=b",
        &format!("{}=1", "z".repeat(257)),
    ] {
        assert!(tracestate(&h(&[("tracestate", bad)])).is_err(), "{bad}");
    }
    let state = tracestate(&h(&[
        ("tracestate", "foo=1 , bar=2"),
        ("TRACESTATE", "foo=3,,"),
    ]))
    .unwrap();
    assert_eq!(tracestate_text(&state), "foo=1,bar=2");
    let row = row(
        "x",
        &[],
        vec![
            Check::NotTraceId(TRACE_ID),
            Check::FlagsSet(0x02),
            no_member("foo"),
        ],
    );
    let found = problems(
        &row,
        &[h(&[("traceparent", &valid), ("tracestate", "foo=1")])],
    );
    assert_eq!(found.len(), 3, "{found:?}");
}
