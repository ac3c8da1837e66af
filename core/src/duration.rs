//! The one parser for duration flags of every sidestream daemon.
//!
//! The grammar is `humantime`'s (`250ms`, `15s`, `10m`, `1h`, `100us`,
//! `1h 30m`), with one rule of ours: a unit is required. A bare number is
//! refused, since tools disagree on what it means (the push server once read
//! it as seconds, the control plane as milliseconds).

use std::time::Duration;

/// Parses a duration flag value; the error names the value and what to write.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(format!(
            "'{text}' needs a unit: {text}ms, {text}s, {text}m (or us, h)"
        ));
    }
    humantime::parse_duration(text).map_err(|error| {
        format!("'{text}' is not a duration like 250ms, 15s, 10m or 1h 30m: {error}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        for (text, want) in [
            ("250ms", Duration::from_millis(250)),
            ("0ms", Duration::ZERO),
            ("15s", Duration::from_secs(15)),
            ("10m", Duration::from_secs(600)),
            ("2h", Duration::from_secs(7200)),
            ("100us", Duration::from_micros(100)),
            ("1h 30m", Duration::from_secs(5400)),
            (" 5s ", Duration::from_secs(5)),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn bad_durations_say_what_is_wrong() {
        for bare in ["7", "0", "2.5"] {
            assert_eq!(
                parse_duration(bare),
                Err(format!(
                    "'{bare}' needs a unit: {bare}ms, {bare}s, {bare}m (or us, h)"
                ))
            );
        }
        for bad in ["fast", "ms", "1x", "", "99999999999999999999h", "-5s"] {
            let error = parse_duration(bad).expect_err(bad);
            assert!(error.starts_with(&format!("'{}'", bad.trim())), "{error}");
        }
    }
}
