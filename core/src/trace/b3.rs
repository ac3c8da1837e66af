//! B3 propagation (Zipkin): the single `b3` header and the `x-b3-*` headers.
//! <https://github.com/openzipkin/b3-propagation>

use crate::{decode_hex_lower, hex_lower, RequestView};

pub const SINGLE: &str = "b3";
pub const TRACE_ID: &str = "x-b3-traceid";
pub const SPAN_ID: &str = "x-b3-spanid";
pub const PARENT_SPAN_ID: &str = "x-b3-parentspanid";
pub const SAMPLED: &str = "x-b3-sampled";
pub const FLAGS: &str = "x-b3-flags";
/// Every multi-header name.
pub const MULTI: [&str; 5] = [TRACE_ID, SPAN_ID, PARENT_SPAN_ID, SAMPLED, FLAGS];

/// The sampling state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampling {
    /// `0`
    Deny,
    /// `1`
    Accept,
    /// `d` (debug, implies accept)
    Debug,
}

impl Sampling {
    pub fn sampled(self) -> bool {
        !matches!(self, Sampling::Deny)
    }

    fn parse(text: &str) -> Option<Sampling> {
        match text {
            "0" => Some(Sampling::Deny),
            "1" => Some(Sampling::Accept),
            "d" => Some(Sampling::Debug),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Sampling::Deny => "0",
            Sampling::Accept => "1",
            Sampling::Debug => "d",
        }
    }
}

/// A B3 trace context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct B3Context {
    /// 128-bit; a 64-bit id is left-padded with zeros.
    pub trace_id: [u8; 16],
    /// Whether the id was sent as 64 bits (16 hex digits).
    pub trace_id_64bit: bool,
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    /// Absent: the decision is deferred to the receiver.
    pub sampling: Option<Sampling>,
}

/// What a B3 header (set) carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum B3 {
    Context(B3Context),
    /// Only a sampling decision (`b3: 0`, or `x-b3-sampled` alone).
    SamplingOnly(Sampling),
}

impl B3 {
    /// The sampling decision, if one was sent.
    pub fn sampling(&self) -> Option<Sampling> {
        match self {
            B3::Context(c) => c.sampling,
            B3::SamplingOnly(s) => Some(*s),
        }
    }
}

/// Why B3 was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum B3Error {
    #[error("b3 trace id '{0}' is not 16 or 32 lowercase hex digits, not all zero")]
    TraceId(String),
    #[error("b3 span id '{0}' is not 16 lowercase hex digits, not all zero")]
    SpanId(String),
    #[error("b3 parent span id '{0}' is not 16 lowercase hex digits, not all zero")]
    ParentSpanId(String),
    #[error("b3 sampling state '{0}' is not 0, 1 or d")]
    Sampling(String),
    #[error("b3 header '{0}' does not have the form traceid-spanid[-sampling[-parentspanid]]")]
    Shape(String),
    #[error("x-b3-traceid and x-b3-spanid must come together")]
    Incomplete,
}

fn parse_trace_id(text: &str) -> Result<([u8; 16], bool), B3Error> {
    let mut id = [0u8; 16];
    let ok = match text.len() {
        32 => decode_hex_lower(text, &mut id),
        16 => decode_hex_lower(text, &mut id[8..]),
        _ => false,
    };
    if !ok || id == [0; 16] {
        return Err(B3Error::TraceId(text.to_owned()));
    }
    Ok((id, text.len() == 16))
}

fn parse_span_id(text: &str) -> Option<[u8; 8]> {
    let mut id = [0u8; 8];
    (decode_hex_lower(text, &mut id) && id != [0; 8]).then_some(id)
}

/// Parses the single `b3` header:
/// `{traceid}-{spanid}`, `{traceid}-{spanid}-{sampling}`,
/// `{traceid}-{spanid}-{sampling}-{parentspanid}`, or `{sampling}` alone.
pub fn parse_single(value: &str) -> Result<B3, B3Error> {
    let value = value.trim_matches([' ', '\t']);
    let parts: Vec<&str> = value.split('-').collect();
    match parts.as_slice() {
        [sampling] => Sampling::parse(sampling)
            .map(B3::SamplingOnly)
            .ok_or_else(|| B3Error::Sampling((*sampling).to_owned())),
        [tid, sid, rest @ ..] if rest.len() <= 2 => {
            let (trace_id, trace_id_64bit) = parse_trace_id(tid)?;
            let span_id = parse_span_id(sid).ok_or_else(|| B3Error::SpanId((*sid).to_owned()))?;
            let sampling = match rest.first() {
                Some(s) => {
                    Some(Sampling::parse(s).ok_or_else(|| B3Error::Sampling((*s).to_owned()))?)
                }
                None => None,
            };
            let parent_span_id = match rest.get(1) {
                Some(p) => {
                    Some(parse_span_id(p).ok_or_else(|| B3Error::ParentSpanId((*p).to_owned()))?)
                }
                None => None,
            };
            Ok(B3::Context(B3Context {
                trace_id,
                trace_id_64bit,
                span_id,
                parent_span_id,
                sampling,
            }))
        }
        _ => Err(B3Error::Shape(value.to_owned())),
    }
}

/// Parses the `x-b3-*` headers; None when none of them is present.
/// `x-b3-flags: 1` means debug; `x-b3-sampled` accepts `1`/`0` (and the
/// legacy `true`/`false`).
pub fn parse_multi(request: &impl RequestView) -> Option<Result<B3, B3Error>> {
    if MULTI.iter().all(|h| request.header(h).is_none()) {
        return None;
    }
    Some(parse_multi_present(request))
}

fn parse_multi_present(request: &impl RequestView) -> Result<B3, B3Error> {
    let get = |name: &str| request.header(name).map(|v| v.trim_matches([' ', '\t']));
    let sampling = if get(FLAGS) == Some("1") {
        Some(Sampling::Debug)
    } else {
        match get(SAMPLED) {
            None => None,
            Some("1") | Some("true") => Some(Sampling::Accept),
            Some("0") | Some("false") => Some(Sampling::Deny),
            Some(other) => return Err(B3Error::Sampling(other.to_owned())),
        }
    };
    match (get(TRACE_ID), get(SPAN_ID)) {
        (Some(tid), Some(sid)) => {
            let (trace_id, trace_id_64bit) = parse_trace_id(tid)?;
            let span_id = parse_span_id(sid).ok_or_else(|| B3Error::SpanId(sid.to_owned()))?;
            let parent_span_id = match get(PARENT_SPAN_ID) {
                Some(p) => Some(span_id_or(p)?),
                None => None,
            };
            Ok(B3::Context(B3Context {
                trace_id,
                trace_id_64bit,
                span_id,
                parent_span_id,
                sampling,
            }))
        }
        (None, None) => sampling.map(B3::SamplingOnly).ok_or(B3Error::Incomplete),
        _ => Err(B3Error::Incomplete),
    }
}

fn span_id_or(text: &str) -> Result<[u8; 8], B3Error> {
    parse_span_id(text).ok_or_else(|| B3Error::ParentSpanId(text.to_owned()))
}

/// B3 from a request: the single header when present, else the multi headers.
pub fn from_request(request: &impl RequestView) -> Option<Result<B3, B3Error>> {
    match request.header(SINGLE) {
        Some(value) => Some(parse_single(value)),
        None => parse_multi(request),
    }
}

/// The single `b3` header value: `{traceid}-{spanid}-{0|1|d}[-{parentspanid}]`
/// (128-bit trace id).
pub fn single_header(
    trace_id: &[u8; 16],
    span_id: &[u8; 8],
    sampling: Sampling,
    parent_span_id: Option<&[u8; 8]>,
) -> String {
    let mut out = format!(
        "{}-{}-{}",
        hex_lower(trace_id),
        hex_lower(span_id),
        sampling.as_str()
    );
    if let Some(parent) = parent_span_id {
        out.push('-');
        out.push_str(&hex_lower(parent));
    }
    out
}

/// The `x-b3-*` headers for a context.
pub fn multi_headers(
    trace_id: &[u8; 16],
    span_id: &[u8; 8],
    sampling: Sampling,
    parent_span_id: Option<&[u8; 8]>,
) -> Vec<(&'static str, String)> {
    let mut out = vec![
        (TRACE_ID, hex_lower(trace_id)),
        (SPAN_ID, hex_lower(span_id)),
    ];
    if let Some(parent) = parent_span_id {
        out.push((PARENT_SPAN_ID, hex_lower(parent)));
    }
    match sampling {
        Sampling::Debug => out.push((FLAGS, "1".to_owned())),
        Sampling::Accept => out.push((SAMPLED, "1".to_owned())),
        Sampling::Deny => out.push((SAMPLED, "0".to_owned())),
    }
    out
}
