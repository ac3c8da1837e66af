//! W3C Trace Context (<https://www.w3.org/TR/trace-context-2/>, Level 2: the
//! random trace-id flag and the current `tracestate` key grammar) and the
//! per-request trace decision.

pub mod b3;

#[cfg(test)]
mod tests;

use crate::config::TraceSettings;
use crate::{decode_hex_lower, hex_lower, RequestView};

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// The sampled flag (bit 0 of trace-flags).
pub const FLAG_SAMPLED: u8 = 0x01;

/// The random trace-id flag (bit 1 of trace-flags, Trace Context Level 2): at
/// least the right-most 7 bytes of the trace-id were drawn at random.
pub const FLAG_RANDOM: u8 = 0x02;

/// The flags this implementation knows; it writes every other bit as 0.
pub const KNOWN_FLAGS: u8 = FLAG_SAMPLED | FLAG_RANDOM;

/// A parsed `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub version: u8,
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    /// All eight bits as received.
    pub flags: u8,
}

/// Why a `traceparent` was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceParentError {
    #[error("traceparent has length {0}; version 00 is exactly 55 characters")]
    Length(usize),
    #[error("traceparent version is not two lowercase hex digits")]
    Version,
    #[error("traceparent version ff is invalid")]
    VersionFf,
    #[error(
        "traceparent of a future version continues with '{0}' where '-' or the end is required"
    )]
    FutureVersionTail(char),
    #[error("traceparent fields are not separated by '-'")]
    Delimiter,
    #[error("traceparent trace-id is not 32 lowercase hex digits")]
    TraceId,
    #[error("traceparent trace-id is all zeros")]
    ZeroTraceId,
    #[error("traceparent parent-id is not 16 lowercase hex digits")]
    ParentId,
    #[error("traceparent parent-id is all zeros")]
    ZeroParentId,
    #[error("traceparent trace-flags are not two lowercase hex digits")]
    Flags,
}

/// Parses `traceparent` exactly as Trace Context says (Levels 1 and 2 agree):
/// `version "-" trace-id "-" parent-id "-" trace-flags`, lowercase hex only;
/// version `ff` is invalid; version `00` is exactly 55 characters; a higher
/// version is accepted when its first 55 characters parse as version 00 and
/// the next character (if any) is `-`. All-zero trace-id or parent-id is
/// invalid. Surrounding spaces and tabs (HTTP OWS) are ignored.
pub fn parse_traceparent(value: &str) -> Result<TraceParent, TraceParentError> {
    let value = value.trim_matches([' ', '\t']);
    let bytes = value.as_bytes();
    if bytes.len() < 2 {
        return Err(TraceParentError::Length(bytes.len()));
    }
    let mut version = [0u8; 1];
    if !value
        .get(..2)
        .is_some_and(|v| decode_hex_lower(v, &mut version))
    {
        return Err(TraceParentError::Version);
    }
    let version = version[0];
    if version == 0xff {
        return Err(TraceParentError::VersionFf);
    }
    if version == 0 && bytes.len() != 55 {
        return Err(TraceParentError::Length(bytes.len()));
    }
    if bytes.len() < 55 {
        return Err(TraceParentError::Length(bytes.len()));
    }
    if bytes.len() > 55 && bytes[55] != b'-' {
        let c = value
            .get(55..)
            .and_then(|s| s.chars().next())
            .unwrap_or('?');
        return Err(TraceParentError::FutureVersionTail(c));
    }
    if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return Err(TraceParentError::Delimiter);
    }
    // The delimiters are ASCII, so these are char boundaries.
    let mut trace_id = [0u8; 16];
    if !value
        .get(3..35)
        .is_some_and(|t| decode_hex_lower(t, &mut trace_id))
    {
        return Err(TraceParentError::TraceId);
    }
    if trace_id == [0; 16] {
        return Err(TraceParentError::ZeroTraceId);
    }
    let mut parent_id = [0u8; 8];
    if !value
        .get(36..52)
        .is_some_and(|p| decode_hex_lower(p, &mut parent_id))
    {
        return Err(TraceParentError::ParentId);
    }
    if parent_id == [0; 8] {
        return Err(TraceParentError::ZeroParentId);
    }
    let mut flags = [0u8; 1];
    if !value
        .get(53..55)
        .is_some_and(|f| decode_hex_lower(f, &mut flags))
    {
        return Err(TraceParentError::Flags);
    }
    Ok(TraceParent {
        version,
        trace_id,
        parent_id,
        flags: flags[0],
    })
}

impl TraceParent {
    /// The version-00 header: only the flags the spec defines (sampled and
    /// random) are written; the others are set to 0, as the spec requires.
    pub fn to_header(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex_lower(&self.trace_id),
            hex_lower(&self.parent_id),
            self.flags & KNOWN_FLAGS
        )
    }

    pub fn sampled(&self) -> bool {
        self.flags & FLAG_SAMPLED != 0
    }

    /// The random trace-id flag (Level 2).
    pub fn random(&self) -> bool {
        self.flags & FLAG_RANDOM != 0
    }

    pub fn trace_id_hex(&self) -> String {
        hex_lower(&self.trace_id)
    }

    pub fn parent_id_hex(&self) -> String {
        hex_lower(&self.parent_id)
    }
}

/// A valid `tracestate`: up to 32 list-members in the order received. A key
/// may appear more than once: the spec lets a vendor keep duplicates or drop
/// them, and the filter passes `tracestate` on as it came.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceState {
    entries: Vec<(String, String)>,
}

/// Why a `tracestate` was rejected (it is then dropped as a whole).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceStateError {
    #[error("tracestate has {0} list-members; at most 32")]
    TooManyMembers(usize),
    #[error("tracestate list-member '{0}' has no '='")]
    NoEquals(String),
    #[error("tracestate key '{0}' is invalid")]
    Key(String),
    #[error("tracestate value '{0}' is invalid")]
    Value(String),
}

/// The most list-members a tracestate may have.
pub const MAX_TRACESTATE_MEMBERS: usize = 32;

/// The longest `tracestate` key.
pub const MAX_TRACESTATE_KEY: usize = 256;

/// `keychar = lcalpha / DIGIT / "_" / "-" / "*" / "/" / "@"`.
fn key_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'*' | b'/' | b'@')
}

/// `key = (lcalpha / DIGIT) 0*255(keychar)`: the current grammar, where `@`
/// may appear anywhere but first (the older `tenant@system` split, with its
/// 241 and 14 character parts, is gone).
fn valid_key(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() <= MAX_TRACESTATE_KEY
        && b.first()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && b.iter().all(|&c| key_char(c))
}

/// `value = 0*255(chr) nblk-chr`, `nblk-chr = %x21-2B / %x2D-3C / %x3E-7E`,
/// `chr = %x20 / nblk-chr`.
fn valid_value(value: &str) -> bool {
    let b = value.as_bytes();
    let nblk = |c: u8| (0x21..=0x7e).contains(&c) && c != b',' && c != b'=';
    !b.is_empty()
        && b.len() <= 256
        && b.last().is_some_and(|&c| nblk(c))
        && b.iter().all(|&c| c == b' ' || nblk(c))
}

/// Parses `tracestate`: comma-separated list-members with optional spaces
/// and tabs around them; empty members are ignored; at most 32 members; any
/// invalid member makes the whole header invalid. Duplicate keys are kept.
pub fn parse_tracestate(value: &str) -> Result<TraceState, TraceStateError> {
    let mut entries: Vec<(String, String)> = Vec::new();
    let mut count = 0usize;
    for member in value.split(',') {
        let member = member.trim_matches([' ', '\t']);
        if member.is_empty() {
            continue;
        }
        count += 1;
        if count > MAX_TRACESTATE_MEMBERS {
            let total = value
                .split(',')
                .filter(|m| !m.trim_matches([' ', '\t']).is_empty())
                .count();
            return Err(TraceStateError::TooManyMembers(total));
        }
        let (key, val) = member
            .split_once('=')
            .ok_or_else(|| TraceStateError::NoEquals(member.to_owned()))?;
        if !valid_key(key) {
            return Err(TraceStateError::Key(key.to_owned()));
        }
        if !valid_value(val) {
            return Err(TraceStateError::Value(val.to_owned()));
        }
        entries.push((key.to_owned(), val.to_owned()));
    }
    Ok(TraceState { entries })
}

impl TraceState {
    /// `key=value` members joined by `,`.
    pub fn to_header(&self) -> String {
        let mut out = String::new();
        for (i, (k, v)) in self.entries.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push('=');
            out.push_str(v);
        }
        out
    }

    /// The members, in order.
    pub fn entries(&self) -> &[(String, String)] {
        &self.entries
    }

    /// The value of the left-most member named `key` (the most recent
    /// position, when a key was sent twice).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What happened to the request's trace context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TraceOutcome {
    /// No usable context came in: a new trace was started.
    Started,
    /// A valid `traceparent` (or B3, when accepted) was continued.
    Continued,
    /// A `traceparent` came in but was invalid: a new trace was started.
    InvalidParent,
    /// Tracing is turned off; nothing was changed.
    Disabled,
}

impl TraceOutcome {
    /// `started`, `continued`, `invalid_parent`, `disabled` (stats, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            TraceOutcome::Started => "started",
            TraceOutcome::Continued => "continued",
            TraceOutcome::InvalidParent => "invalid_parent",
            TraceOutcome::Disabled => "disabled",
        }
    }
}

/// The trace decision for one request: headers to set and remove on the
/// request, and what to echo on the response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceDecision<'a> {
    pub outcome: TraceOutcome,
    /// Empty when disabled and no valid parent came in.
    pub trace_id_hex: String,
    /// Request headers to set (replacing any value).
    pub set_headers: Vec<(&'a str, String)>,
    /// Request headers to remove.
    pub remove_headers: Vec<&'a str>,
    pub sampled: bool,
    /// The response header that echoes the trace id, with its value.
    pub response_header: Option<(&'a str, String)>,
    /// The span id of this hop (the new parent-id), lowercase hex.
    pub span_id_hex: String,
}

/// Fills `N` bytes from `random`, never all zero.
fn nonzero<const N: usize>(random: &mut impl FnMut(&mut [u8])) -> [u8; N] {
    let mut id = [0u8; N];
    random(&mut id);
    if id.iter().all(|&b| b == 0) {
        id[N - 1] = 1;
    }
    id
}

/// A UUID v4 (RFC 9562) from 16 random bytes, lowercase.
pub fn uuid_v4(random: &mut impl FnMut(&mut [u8])) -> String {
    let mut b = [0u8; 16];
    random(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex_lower(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Decides the trace context of a request.
///
/// - A valid `traceparent` is continued: same trace id, a new parent-id (this
///   hop's span id), the sampled and random flags kept, other flags set to 0.
///   A valid `tracestate` is left as it is; an invalid one, or one without
///   list-members, is removed.
/// - A present but invalid `traceparent` starts a new trace (`InvalidParent`)
///   and removes `tracestate`.
/// - With `b3.accept` and no valid `traceparent`, B3 (single, else multi) is
///   continued; a B3 sampling-only header decides sampling of a new trace.
/// - Otherwise a new trace is started from `random`, sampled when a random
///   u64 is below `sampleRatio × 2^64`. A trace id drawn from `random` gets
///   the random flag (Level 2); one continued from B3 does not (B3 cannot say
///   how it was made).
///
/// The request id header is set (UUID v4) when absent; with `b3.emit` the
/// `b3` single header is written and stale `x-b3-*` headers removed.
/// `random` fills a buffer from a CSPRNG (the filter's); tests pass a seeded one.
pub fn decide<'a>(
    settings: &'a TraceSettings,
    request: &impl RequestView,
    random: &mut impl FnMut(&mut [u8]),
) -> TraceDecision<'a> {
    if !settings.enabled {
        let trace_id_hex = request
            .header(TRACEPARENT)
            .and_then(|v| parse_traceparent(v).ok())
            .map(|p| p.trace_id_hex())
            .unwrap_or_default();
        return TraceDecision {
            outcome: TraceOutcome::Disabled,
            trace_id_hex,
            set_headers: Vec::new(),
            remove_headers: Vec::new(),
            sampled: false,
            response_header: None,
            span_id_hex: String::new(),
        };
    }
    let mut set_headers: Vec<(&'a str, String)> = Vec::new();
    let mut remove_headers: Vec<&'a str> = Vec::new();
    let span_id: [u8; 8] = nonzero(random);
    // An empty header is no header.
    let incoming = request
        .header(TRACEPARENT)
        .filter(|v| !v.trim_matches([' ', '\t']).is_empty());
    let parsed = incoming.map(parse_traceparent);

    // (outcome, trace id, sampled, random flag, b3 sampling to emit, parent span for b3)
    let (outcome, trace_id, sampled, random_id, b3_sampling, b3_parent) = match parsed {
        Some(Ok(parent)) => {
            if let Some(state) = request.header(TRACESTATE) {
                // Invalid: dropped. Empty (no list-members): accepted, but
                // not sent on ("vendors SHOULD avoid sending them").
                if parse_tracestate(state).map_or(true, |s| s.is_empty()) {
                    remove_headers.push(TRACESTATE);
                }
            }
            let sampling = if parent.sampled() {
                b3::Sampling::Accept
            } else {
                b3::Sampling::Deny
            };
            (
                TraceOutcome::Continued,
                parent.trace_id,
                parent.sampled(),
                parent.random(),
                sampling,
                Some(parent.parent_id),
            )
        }
        other => {
            let invalid = other.is_some();
            if request.header(TRACESTATE).is_some() {
                remove_headers.push(TRACESTATE);
            }
            let started = if invalid {
                TraceOutcome::InvalidParent
            } else {
                TraceOutcome::Started
            };
            let from_b3 = if settings.b3_accept {
                b3::from_request(request).and_then(Result::ok)
            } else {
                None
            };
            let draw = |random: &mut dyn FnMut(&mut [u8])| {
                let mut bytes = [0u8; 8];
                random(&mut bytes);
                let threshold = settings.sample_threshold();
                threshold == u64::MAX || u64::from_le_bytes(bytes) < threshold
            };
            match from_b3 {
                Some(b3::B3::Context(ctx)) => {
                    let sampling = match ctx.sampling {
                        Some(s) => s,
                        None if draw(random) => b3::Sampling::Accept,
                        None => b3::Sampling::Deny,
                    };
                    (
                        TraceOutcome::Continued,
                        ctx.trace_id,
                        sampling.sampled(),
                        false,
                        sampling,
                        Some(ctx.span_id),
                    )
                }
                Some(b3::B3::SamplingOnly(sampling)) => {
                    let trace_id: [u8; 16] = nonzero(random);
                    (started, trace_id, sampling.sampled(), true, sampling, None)
                }
                None => {
                    let trace_id: [u8; 16] = nonzero(random);
                    let sampled = draw(random);
                    let sampling = if sampled {
                        b3::Sampling::Accept
                    } else {
                        b3::Sampling::Deny
                    };
                    (started, trace_id, sampled, true, sampling, None)
                }
            }
        }
    };

    let traceparent = TraceParent {
        version: 0,
        trace_id,
        parent_id: span_id,
        flags: if sampled { FLAG_SAMPLED } else { 0 } | if random_id { FLAG_RANDOM } else { 0 },
    };
    set_headers.push((TRACEPARENT, traceparent.to_header()));
    if settings.b3_emit {
        set_headers.push((
            b3::SINGLE,
            b3::single_header(&trace_id, &span_id, b3_sampling, b3_parent.as_ref()),
        ));
        for name in b3::MULTI {
            if request.header(name).is_some() {
                remove_headers.push(name);
            }
        }
    }
    if let Some(name) = settings.request_id_header.as_deref() {
        if request.header(name).is_none_or(|v| v.trim().is_empty()) {
            set_headers.push((name, uuid_v4(random)));
        }
    }
    let trace_id_hex = hex_lower(&trace_id);
    let response_header = settings
        .response_header
        .as_deref()
        .map(|name| (name, trace_id_hex.clone()));
    TraceDecision {
        outcome,
        trace_id_hex,
        set_headers,
        remove_headers,
        sampled,
        response_header,
        span_id_hex: hex_lower(&span_id),
    }
}
