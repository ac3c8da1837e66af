//! The request headers as the decisions see them, read from the host's
//! serialised header map without copying it into a string per name and value.
//!
//! The filter reads the whole map in one host call rather than each header the
//! active policies look at: bench/hostcall-probe measured both in Envoy (a
//! present header costs a call back into the VM to allocate its value; see
//! BENCHMARKS.md, "Where the filter's time goes"). The map arrives as
//! proxy-wasm serialises pairs (proxy-wasm-cpp-host's `marshalPairs`): a
//! little-endian `u32` count, then a `u32` name length and a `u32` value
//! length per pair, then each name and each value followed by a NUL byte.
//! [`RequestHeaders::parse`] keeps that buffer and records where each name and
//! value is: one allocation for the positions, none per header.

use std::fmt;
use std::ops::Range;

use sidestream_core::RequestView;

/// Merged request headers: repeated headers joined (`cookie` with `; `, others
/// with `, `), so one lookup sees every value.
#[derive(Debug, Default)]
pub struct RequestHeaders {
    /// The names and values, NUL-separated (the map without its length table).
    text: String,
    headers: Vec<Header>,
}

#[derive(Debug)]
struct Header {
    name: Range<usize>,
    value: Value,
}

#[derive(Debug)]
enum Value {
    /// A range of `text`.
    In(Range<usize>),
    /// Values of a repeated header, joined.
    Joined(String),
}

/// A serialised header map that does not hold together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMapError {
    /// What is wrong, with the numbers.
    pub reason: String,
}

impl fmt::Display for HeaderMapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed request header map: {}", self.reason)
    }
}

impl std::error::Error for HeaderMapError {}

fn malformed(reason: String) -> HeaderMapError {
    HeaderMapError { reason }
}

fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let word: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(word)).ok()
}

/// Serialises pairs as the host does (for the fake host and [`RequestHeaders::from_pairs`]).
pub fn serialize_pairs<N: AsRef<str>, V: AsRef<str>>(pairs: &[(N, V)]) -> Vec<u8> {
    if pairs.is_empty() {
        return Vec::new();
    }
    let data: usize = pairs
        .iter()
        .map(|(n, v)| n.as_ref().len() + v.as_ref().len() + 2)
        .sum();
    let mut out = Vec::with_capacity(4 + 8 * pairs.len() + data);
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    out.extend_from_slice(&len(pairs.len()));
    for (name, value) in pairs {
        out.extend_from_slice(&len(name.as_ref().len()));
        out.extend_from_slice(&len(value.as_ref().len()));
    }
    for (name, value) in pairs {
        out.extend_from_slice(name.as_ref().as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_ref().as_bytes());
        out.push(0);
    }
    out
}

impl RequestHeaders {
    /// Reads the host's serialised map (empty: no headers). A name or value
    /// that is not UTF-8 (Envoy passes obs-text bytes through) becomes lossy
    /// text, and so fails any strict parse (e.g. of a traceparent).
    pub fn parse(mut bytes: Vec<u8>) -> Result<Self, HeaderMapError> {
        if bytes.is_empty() {
            return Ok(Self::default());
        }
        let count = read_u32(&bytes, 0)
            .ok_or_else(|| malformed(format!("{} bytes, no pair count", bytes.len())))?;
        let table_end = count
            .checked_mul(8)
            .and_then(|n| n.checked_add(4))
            .filter(|end| *end <= bytes.len())
            .ok_or_else(|| {
                malformed(format!("{count} pairs do not fit in {} bytes", bytes.len()))
            })?;
        // (name, value) ranges relative to the data after the length table.
        let mut ranges = Vec::with_capacity(count);
        let mut at = 0usize;
        let data_len = bytes.len() - table_end;
        let mut field = |len: usize, pair: usize| -> Result<Range<usize>, HeaderMapError> {
            let range = at..at.saturating_add(len);
            if range.end >= data_len || bytes[table_end + range.end] != 0 {
                return Err(malformed(format!(
                    "pair {pair}: a field of {len} bytes at {} overruns the {data_len} data bytes or lacks its NUL",
                    range.start
                )));
            }
            at = range.end + 1;
            Ok(range)
        };
        for pair in 0..count {
            let name_len = read_u32(&bytes, 4 + 8 * pair).unwrap_or(0);
            let value_len = read_u32(&bytes, 8 + 8 * pair).unwrap_or(0);
            let name = field(name_len, pair)?;
            let value = field(value_len, pair)?;
            ranges.push((name, value));
        }
        if at != data_len {
            return Err(malformed(format!(
                "{} bytes after the last pair",
                data_len - at
            )));
        }
        // Drop the length table in place: the rest becomes the text.
        bytes.drain(..table_end);
        let text = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(error) => {
                let bytes = error.into_bytes();
                let mut text = String::with_capacity(bytes.len());
                for (name, value) in &mut ranges {
                    for range in [name, value] {
                        let start = text.len();
                        text.push_str(&String::from_utf8_lossy(&bytes[range.clone()]));
                        *range = start..text.len();
                    }
                }
                text
            }
        };
        let mut headers: Vec<Header> = Vec::with_capacity(count);
        for (name, value) in ranges {
            let seen = headers
                .iter_mut()
                .find(|h| text[h.name.clone()] == text[name.clone()]);
            match seen {
                None => headers.push(Header {
                    name,
                    value: Value::In(value),
                }),
                Some(header) => {
                    let separator = if &text[name] == "cookie" { "; " } else { ", " };
                    let mut joined = match std::mem::replace(&mut header.value, Value::In(0..0)) {
                        Value::In(range) => text[range].to_owned(),
                        Value::Joined(joined) => joined,
                    };
                    joined.push_str(separator);
                    joined.push_str(&text[value]);
                    header.value = Value::Joined(joined);
                }
            }
        }
        Ok(RequestHeaders { text, headers })
    }

    /// Headers from pairs (tests, the fuzz targets): serialised as the host
    /// does, then read by [`RequestHeaders::parse`].
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Self {
        // Pairs of strings always serialise to a well-formed map.
        Self::parse(serialize_pairs(&pairs)).unwrap_or_default()
    }
}

impl RequestView for RequestHeaders {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| self.text[h.name.clone()].eq_ignore_ascii_case(name))
            .map(|h| match &h.value {
                Value::In(range) => &self.text[range.clone()],
                Value::Joined(joined) => joined.as_str(),
            })
    }
}

#[cfg(test)]
mod tests {
    use sidestream_core::RequestView;

    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_map_serialised_as_the_host_does_reads_back() {
        let map = serialize_pairs(&pairs(&[
            (":method", "GET"),
            ("x-user-id", "user-42"),
            ("empty", ""),
        ]));
        // count, two lengths per pair, then name NUL value NUL.
        assert_eq!(&map[..4], &3u32.to_le_bytes());
        assert_eq!(&map[4..8], &7u32.to_le_bytes());
        assert_eq!(&map[28..], b":method\0GET\0x-user-id\0user-42\0empty\0\0");
        let headers = RequestHeaders::parse(map).expect("well-formed");
        assert_eq!(headers.header(":method"), Some("GET"));
        assert_eq!(headers.header("X-User-Id"), Some("user-42"));
        assert_eq!(headers.header("empty"), Some(""));
        assert_eq!(headers.header("absent"), None);
    }

    #[test]
    fn an_empty_map_has_no_headers() {
        let headers = RequestHeaders::parse(Vec::new()).expect("empty is fine");
        assert_eq!(headers.header(":path"), None);
        let headers = RequestHeaders::parse(0u32.to_le_bytes().to_vec()).expect("zero pairs");
        assert_eq!(headers.header(":path"), None);
    }

    #[test]
    fn repeated_headers_are_joined_and_others_kept_in_place() {
        let headers = RequestHeaders::from_pairs(pairs(&[
            ("cookie", "a=1"),
            ("x", "1"),
            ("cookie", "b=2"),
            ("x", "2"),
            ("x", "3"),
            ("y", "only"),
        ]));
        assert_eq!(headers.header("cookie"), Some("a=1; b=2"));
        assert_eq!(headers.header("x"), Some("1, 2, 3"));
        assert_eq!(headers.header("y"), Some("only"));
    }

    #[test]
    fn bytes_that_are_not_utf8_become_lossy_text_in_their_own_field() {
        let mut map = serialize_pairs(&pairs(&[("a", "xx"), ("traceparent", "yy"), ("b", "z")]));
        // Replace "xx" (a's value) with two bytes that are not UTF-8.
        let at = map.len() - b"xx\0traceparent\0yy\0b\0z\0".len();
        map[at] = 0xff;
        map[at + 1] = 0xfe;
        let headers = RequestHeaders::parse(map).expect("lossy, not an error");
        assert_eq!(headers.header("a"), Some("\u{fffd}\u{fffd}"));
        assert_eq!(headers.header("traceparent"), Some("yy"));
        assert_eq!(headers.header("b"), Some("z"));
    }

    #[test]
    fn malformed_maps_are_refused_with_the_reason() {
        let good = serialize_pairs(&pairs(&[("a", "1"), ("b", "2")]));
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![1, 0], "no pair count"),
            (
                vec![9, 0, 0, 0, 1, 0, 0, 0],
                "9 pairs do not fit in 8 bytes",
            ),
            (good[..good.len() - 1].to_vec(), "overruns"),
            (
                [good.as_slice(), b"x"].concat(),
                "1 bytes after the last pair",
            ),
            (
                {
                    let mut missing_nul = good.clone();
                    let at = missing_nul.len() - 1;
                    missing_nul[at] = b'!';
                    missing_nul
                },
                "lacks its NUL",
            ),
            (
                {
                    let mut huge = good.clone();
                    huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
                    huge
                },
                "overruns",
            ),
        ];
        for (map, reason) in cases {
            let error = RequestHeaders::parse(map.clone()).expect_err("malformed");
            assert!(error.to_string().contains(reason), "{map:?}: {error}");
        }
    }
}
