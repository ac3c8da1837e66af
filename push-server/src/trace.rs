//! W3C trace context of publish and subscribe requests, continued in spans
//! and carried with each message to the delivery log.

use sidestream_core::trace::parse_traceparent;

/// The `traceparent` header, re-serialised, when it is valid (W3C Level 1).
pub fn accept_traceparent(header: Option<&str>) -> Option<String> {
    header
        .and_then(|value| parse_traceparent(value).ok())
        .map(|parent| parent.to_header())
}

/// The trace id (32 hex digits) of a valid, re-serialised traceparent.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    traceparent.get(3..35)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_valid_parents_only() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let accepted = accept_traceparent(Some(valid));
        assert_eq!(accepted.as_deref(), Some(valid));
        assert_eq!(
            accepted.as_deref().and_then(trace_id),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            accept_traceparent(Some(
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
            )),
            None
        );
        assert_eq!(accept_traceparent(Some("garbage")), None);
        assert_eq!(accept_traceparent(None), None);
    }
}
