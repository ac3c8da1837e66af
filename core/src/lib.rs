//! sidestream-core: the config model and every pure decision (see design.md).
//!
//! Nothing in here reads a clock, spawns a thread or touches the network: time
//! and randomness are arguments, so the same code runs natively (control plane,
//! push server, tests) and inside the Envoy Wasm filter (wasm32-wasip1).

pub mod backoff;
pub mod config;
pub mod duration;
pub mod limit;
pub mod release;
pub mod trace;

use std::collections::{BTreeMap, HashMap};

/// Request headers as the glue sees them: lowercase names, pseudo-headers
/// included (`:path`, `:authority`, `:method`, `:protocol`).
pub trait RequestView {
    /// The value of the header `name` (lowercase), if present.
    fn header(&self, name: &str) -> Option<&str>;

    /// The host the request is for: `:authority`, else `host`.
    fn host(&self) -> Option<&str> {
        self.header(":authority").or_else(|| self.header("host"))
    }

    /// The request path including the query string (`:path`).
    fn path(&self) -> Option<&str> {
        self.header(":path")
    }
}

impl<T: RequestView + ?Sized> RequestView for &T {
    fn header(&self, name: &str) -> Option<&str> {
        (**self).header(name)
    }
}

/// A list of `(name, value)` pairs; the first pair whose name equals (ASCII
/// case-insensitively) the asked name wins. Handy in tests and in daemons.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderList(pub Vec<(String, String)>);

impl HeaderList {
    /// Builds a list from borrowed pairs.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        HeaderList(
            pairs
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect(),
        )
    }

    /// Adds a header.
    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.0.push((name.to_owned(), value.to_owned()));
        self
    }
}

impl RequestView for HeaderList {
    fn header(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl RequestView for [(&str, &str)] {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

impl<const N: usize> RequestView for [(&str, &str); N] {
    fn header(&self, name: &str) -> Option<&str> {
        self.as_slice().header(name)
    }
}

impl RequestView for Vec<(String, String)> {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl RequestView for HashMap<String, String> {
    fn header(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

impl RequestView for BTreeMap<String, String> {
    fn header(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

/// The value of cookie `name` in a `cookie` request header
/// (`a=1; b=2`), without surrounding double quotes. The first match wins.
pub fn cookie<'a>(cookie_header: &'a str, name: &str) -> Option<&'a str> {
    cookie_header.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        if key.trim_matches([' ', '\t']) != name {
            return None;
        }
        let value = value.trim_matches([' ', '\t']);
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        Some(value)
    })
}

/// The cookie `name` of a request (reads the `cookie` header).
pub fn request_cookie<'a>(request: &'a impl RequestView, name: &str) -> Option<&'a str> {
    request.header("cookie").and_then(|h| cookie(h, name))
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Decodes lowercase hex into `out` (exact length); uppercase is rejected.
pub(crate) fn decode_hex_lower(text: &str, out: &mut [u8]) -> bool {
    let bytes = text.as_bytes();
    if bytes.len() != out.len() * 2 {
        return false;
    }
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    for (i, slot) in out.iter_mut().enumerate() {
        match (nibble(bytes[2 * i]), nibble(bytes[2 * i + 1])) {
            (Some(h), Some(l)) => *slot = (h << 4) | l,
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_finds_values() {
        let header = "a=1; sidestream-grey=1;b=\"two\" ; empty=";
        assert_eq!(cookie(header, "a"), Some("1"));
        assert_eq!(cookie(header, "sidestream-grey"), Some("1"));
        assert_eq!(cookie(header, "b"), Some("two"));
        assert_eq!(cookie(header, "empty"), Some(""));
        assert_eq!(cookie(header, "c"), None);
        assert_eq!(cookie(header, "sidestream"), None);
        assert_eq!(cookie("", "a"), None);
    }

    #[test]
    fn hex_round_trip() {
        let mut out = [0u8; 4];
        assert!(decode_hex_lower("00ff10ab", &mut out));
        assert_eq!(out, [0, 255, 16, 171]);
        assert_eq!(hex_lower(&out), "00ff10ab");
        assert!(!decode_hex_lower("00FF10AB", &mut out));
        assert!(!decode_hex_lower("00ff10a", &mut out));
        assert!(!decode_hex_lower("00ff10ag", &mut out));
    }

    /// The parsers see hostile input: none of them may panic.
    #[test]
    fn parsers_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let alphabet: Vec<char> = "0123456789abcdefABCDEF-=,@ ;\t\"é\u{0}zx".chars().collect();
        for _ in 0..20_000 {
            let len = rng.random_range(0..80);
            let text: String = (0..len)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect();
            let _ = trace::parse_traceparent(&text);
            let _ = trace::parse_tracestate(&text);
            let _ = trace::b3::parse_single(&text);
            let _ = cookie(&text, "a");
            let _ = config::classify_key(&text);
            let _ = limit::client_ip(&text);
            let bytes: Vec<u8> = (0..rng.random_range(0..40)).map(|_| rng.random()).collect();
            let _ = limit::StreamLimitState::decode(&bytes);
            let _ = config::parse_spec(config::Kind::Release, "x", &bytes);
        }
    }

    #[test]
    fn header_list_is_case_insensitive() {
        let h = HeaderList::from_pairs([("X-A", "1")]).with(":path", "/x");
        assert_eq!(h.header("x-a"), Some("1"));
        assert_eq!(h.path(), Some("/x"));
        assert_eq!(h.host(), None);
    }
}
