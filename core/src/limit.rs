//! Stream limits: recognising stream requests, choosing the policy and key,
//! and the per-key token bucket plus concurrent-stream count. Integer
//! arithmetic only (micro-tokens, nanoseconds); time is passed in.

pub mod mesh;
#[cfg(test)]
mod tests;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::{LimitKey, StreamLimitPolicy};
use crate::RequestView;

/// A kind of long-lived stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum StreamKind {
    /// Server-Sent Events: `GET` with `accept: text/event-stream`.
    #[serde(rename = "sse")]
    Sse,
    /// WebSocket: HTTP/1.1 `upgrade: websocket` or HTTP/2 extended CONNECT
    /// with `:protocol: websocket`.
    #[serde(rename = "websocket")]
    WebSocket,
    /// gRPC: `content-type: application/grpc*`.
    #[serde(rename = "grpc")]
    Grpc,
}

impl StreamKind {
    /// `sse`, `websocket`, `grpc` (as in config and stats).
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Sse => "sse",
            StreamKind::WebSocket => "websocket",
            StreamKind::Grpc => "grpc",
        }
    }
}

fn has_token(list: &str, token: &str) -> bool {
    list.split(',')
        .any(|t| t.trim_matches([' ', '\t']).eq_ignore_ascii_case(token))
}

fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// Recognises a stream request. WebSocket wins over the others, then gRPC,
/// then SSE.
pub fn detect_stream(request: &impl RequestView) -> Option<StreamKind> {
    let method = request.header(":method");
    if request
        .header("upgrade")
        .is_some_and(|u| has_token(u, "websocket"))
    {
        return Some(StreamKind::WebSocket);
    }
    if method.is_some_and(|m| m.eq_ignore_ascii_case("CONNECT"))
        && request
            .header(":protocol")
            .is_some_and(|p| p.eq_ignore_ascii_case("websocket"))
    {
        return Some(StreamKind::WebSocket);
    }
    if request.header("content-type").is_some_and(|ct| {
        ct.len() >= 16 && ct.as_bytes()[..16].eq_ignore_ascii_case(b"application/grpc")
    }) {
        return Some(StreamKind::Grpc);
    }
    if method.is_none_or(|m| m.eq_ignore_ascii_case("GET"))
        && request
            .header("accept")
            .is_some_and(|a| contains_ignore_case(a, "text/event-stream"))
    {
        return Some(StreamKind::Sse);
    }
    None
}

/// The policy for a stream: among the policies that list `kind` and match
/// the request, the one with the highest priority (then the smallest name).
pub fn select<'a>(
    policies: &'a [StreamLimitPolicy],
    request: &impl RequestView,
    kind: StreamKind,
) -> Option<&'a StreamLimitPolicy> {
    policies
        .iter()
        .filter(|p| p.stream_kinds.contains(&kind) && p.route.matches(request))
        .min_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then_with(|| a.name.cmp(&b.name))
        })
}

/// Keys longer than this are replaced by a hash.
pub const MAX_KEY_LEN: usize = 64;

/// The client address without its port: `10.0.0.1:5555` → `10.0.0.1`,
/// `[::1]:80` → `::1`.
pub fn client_ip(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(ip, _)| ip);
    }
    match address.rsplit_once(':') {
        Some((ip, port)) if !ip.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => ip,
        _ => address,
    }
}

fn bounded(prefix: &str, value: &str) -> String {
    if prefix.len() + value.len() <= MAX_KEY_LEN && value.bytes().all(|b| (0x21..0x7f).contains(&b))
    {
        format!("{prefix}{value}")
    } else {
        let hash = xxhash_rust::xxh3::xxh3_128(value.as_bytes());
        format!("{prefix}#{hash:032x}")
    }
}

impl StreamLimitPolicy {
    /// The bucket key of a request (without the policy name): `h:<value>`
    /// for a header, `a:<ip>` for the client address (port dropped), `route`
    /// for one bucket per policy, `a:unknown` when neither is known. Values
    /// longer than [`MAX_KEY_LEN`] or with unusual bytes are hashed
    /// (`h:#<xxh3-128 hex>`).
    pub fn key(&self, request: &impl RequestView, client_address: Option<&str>) -> String {
        let address = || match client_address.map(client_ip).filter(|a| !a.is_empty()) {
            Some(ip) => bounded("a:", ip),
            None => "a:unknown".to_owned(),
        };
        match &self.key {
            LimitKey::Route => "route".to_owned(),
            LimitKey::ClientAddress => address(),
            LimitKey::Header(name) => match request.header(name).filter(|v| !v.is_empty()) {
                Some(value) => bounded("h:", value),
                None => address(),
            },
        }
    }

    /// Whether [`StreamLimitPolicy::key`] would use the client address for
    /// this request, so the caller asks the host for it only then.
    pub fn needs_client_address(&self, request: &impl RequestView) -> bool {
        match &self.key {
            LimitKey::Route => false,
            LimitKey::ClientAddress => true,
            LimitKey::Header(name) => request.header(name).is_none_or(str::is_empty),
        }
    }

    /// The `ratelimit-policy` header value: `5;w=1;burst=5` (quota per
    /// window `w` seconds), plus `;concurrent=20` when capped.
    pub fn ratelimit_policy(&self) -> String {
        let (quota, window) = quota_window(self.rate_milli);
        let mut out = format!("{quota};w={window};burst={}", self.burst);
        if let Some(max) = self.max_concurrent {
            out.push_str(&format!(";concurrent={max}"));
        }
        out
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// A rate in thousandths per second as `quota` per `window` seconds.
fn quota_window(rate_milli: u64) -> (u64, u64) {
    let g = gcd(rate_milli.max(1), 1000);
    (rate_milli.max(1) / g, 1000 / g)
}

/// One token in micro-tokens.
const TOKEN: u64 = 1_000_000;
const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Per (policy, key) state kept in Envoy shared data. A new state starts
/// with a full bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimitState {
    /// Micro-tokens in the bucket.
    tokens: u64,
    /// Remainder of the last refill, in 10^-15 tokens (below one micro-token).
    carry: u64,
    /// Host time of the last refill, nanoseconds.
    last_nanos: u64,
    /// Streams admitted and not finished.
    active: u32,
}

/// Format: magic `SL`, version 1, then little-endian tokens u64, carry u64,
/// last_nanos u64, active u32.
const MAGIC: [u8; 2] = *b"SL";
const VERSION: u8 = 1;
const ENCODED_LEN: usize = 3 + 8 + 8 + 8 + 4;
/// Refill carry unit: femto-tokens per micro-token.
const CARRY_PER_MICRO: u64 = 1_000_000_000;

/// The outcome of [`StreamLimitState::admit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Admitted; `remaining` whole tokens are left in the bucket.
    Admitted {
        remaining: u32,
    },
    Refused(Refusal),
}

/// Why a stream was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// The bucket is empty.
    Rate,
    /// `maxConcurrent` streams are open.
    Concurrency,
}

impl RefusalReason {
    /// `rate` or `concurrency` (stats, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::Rate => "rate",
            RefusalReason::Concurrency => "concurrency",
        }
    }
}

/// A refusal with what the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: RefusalReason,
    /// Whole seconds until a retry can succeed (≥ 1); for concurrency, 1.
    pub retry_after_secs: u32,
    /// `burst` for rate, `maxConcurrent` for concurrency.
    pub limit: u32,
    /// Whole seconds until the bucket is full again (rate, ≥ 1); for
    /// concurrency, 1.
    pub reset_secs: u32,
}

impl Refusal {
    /// `retry-after`, `ratelimit-limit`, `ratelimit-remaining` (0),
    /// `ratelimit-reset`, `ratelimit-policy`.
    pub fn headers(&self, policy: &StreamLimitPolicy) -> Vec<(&'static str, String)> {
        vec![
            ("retry-after", self.retry_after_secs.to_string()),
            ("ratelimit-limit", self.limit.to_string()),
            ("ratelimit-remaining", "0".to_owned()),
            ("ratelimit-reset", self.reset_secs.to_string()),
            ("ratelimit-policy", policy.ratelimit_policy()),
        ]
    }
}

fn ceil_secs(nanos: u128) -> u32 {
    let secs = nanos.div_ceil(NANOS_PER_SEC).max(1);
    u32::try_from(secs).unwrap_or(u32::MAX)
}

impl StreamLimitState {
    /// A full bucket, no active streams.
    pub fn new(policy: &StreamLimitPolicy, now_nanos: u64) -> Self {
        StreamLimitState {
            tokens: capacity(policy),
            carry: 0,
            last_nanos: now_nanos,
            active: 0,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENCODED_LEN);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.tokens.to_le_bytes());
        out.extend_from_slice(&self.carry.to_le_bytes());
        out.extend_from_slice(&self.last_nanos.to_le_bytes());
        out.extend_from_slice(&self.active.to_le_bytes());
        out
    }

    /// None for anything [`encode`](Self::encode) did not write.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != ENCODED_LEN || bytes[..2] != MAGIC || bytes[2] != VERSION {
            return None;
        }
        let u64_at = |i: usize| -> Option<u64> {
            Some(u64::from_le_bytes(bytes.get(i..i + 8)?.try_into().ok()?))
        };
        let tokens = u64_at(3)?;
        let carry = u64_at(11)?;
        let last_nanos = u64_at(19)?;
        let active = u32::from_le_bytes(bytes.get(27..31)?.try_into().ok()?);
        if carry >= CARRY_PER_MICRO || tokens > u64::from(u32::MAX) * TOKEN {
            return None;
        }
        Some(StreamLimitState {
            tokens,
            carry,
            last_nanos,
            active,
        })
    }

    /// Streams admitted and not finished.
    pub fn active(&self) -> u32 {
        self.active
    }

    /// Whole tokens in the bucket (after the last refill).
    pub fn tokens(&self) -> u32 {
        u32::try_from(self.tokens / TOKEN).unwrap_or(u32::MAX)
    }

    /// Adds the tokens earned since the last refill.
    ///
    /// A clock that goes backwards (the host clock is the wall clock, which
    /// NTP or an operator may step back; a stored state may also carry a
    /// time from a host with a wrong clock) adds nothing, and the refill
    /// restarts from `now`: waiting for the clock to catch up with the
    /// stored time instead would freeze an empty bucket for as long as the
    /// step (forever for a time far in the future). Workers that read the
    /// clock a moment apart and update the shared state out of order see a
    /// step back of microseconds; restarting from the earlier reading grants
    /// at most that much extra refill.
    fn refill(&mut self, policy: &StreamLimitPolicy, now_nanos: u64) {
        let cap = capacity(policy);
        if self.tokens >= cap {
            self.tokens = cap;
            self.carry = 0;
            self.last_nanos = now_nanos;
            return;
        }
        let Some(elapsed) = now_nanos.checked_sub(self.last_nanos) else {
            self.last_nanos = now_nanos;
            return;
        };
        // elapsed ns × rate_milli (10^-3 tokens/s) = 10^-12 tokens... scaled to
        // femto-tokens (10^-15): × 1000. Micro-token = 10^9 femto-tokens.
        // Saturating: a validated rate (≤ 10^9) cannot overflow even after
        // u64::MAX ns, but the policy's fields are public.
        let femto = u128::from(elapsed)
            .saturating_mul(u128::from(policy.rate_milli))
            .saturating_mul(1000)
            .saturating_add(u128::from(self.carry));
        let micro = femto / u128::from(CARRY_PER_MICRO);
        let carry = femto % u128::from(CARRY_PER_MICRO);
        let added = u64::try_from(micro).unwrap_or(u64::MAX);
        let tokens = self.tokens.saturating_add(added);
        if tokens >= cap {
            self.tokens = cap;
            self.carry = 0;
        } else {
            self.tokens = tokens;
            self.carry = u64::try_from(carry).unwrap_or(0);
        }
        self.last_nanos = now_nanos;
    }

    /// Nanoseconds until the bucket holds `target` micro-tokens.
    fn nanos_until(&self, policy: &StreamLimitPolicy, target: u64) -> u128 {
        let missing_femto = (u128::from(target.saturating_sub(self.tokens))
            * u128::from(CARRY_PER_MICRO))
        .saturating_sub(u128::from(self.carry));
        let per_nano = u128::from(policy.rate_milli.max(1)) * 1000;
        missing_femto.div_ceil(per_nano)
    }

    /// Refills, then admits a stream (takes a token and counts it active) or
    /// refuses it. A concurrency refusal takes no token.
    pub fn admit(&mut self, policy: &StreamLimitPolicy, now_nanos: u64) -> Admission {
        self.refill(policy, now_nanos);
        if let Some(max) = policy.max_concurrent {
            if self.active >= max {
                return Admission::Refused(Refusal {
                    reason: RefusalReason::Concurrency,
                    retry_after_secs: 1,
                    limit: max,
                    reset_secs: 1,
                });
            }
        }
        if self.tokens < TOKEN {
            return Admission::Refused(Refusal {
                reason: RefusalReason::Rate,
                retry_after_secs: ceil_secs(self.nanos_until(policy, TOKEN)),
                limit: policy.burst,
                reset_secs: ceil_secs(self.nanos_until(policy, capacity(policy))),
            });
        }
        self.tokens -= TOKEN;
        self.active = self.active.saturating_add(1);
        Admission::Admitted {
            remaining: self.tokens(),
        }
    }

    /// A stream ended: active -= 1 (saturating).
    pub fn finish(&mut self) {
        self.active = self.active.saturating_sub(1);
    }
}

fn capacity(policy: &StreamLimitPolicy) -> u64 {
    u64::from(policy.burst) * TOKEN
}
