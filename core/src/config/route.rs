//! Which requests a policy applies to: host globs and path prefixes.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Problems;
use crate::RequestView;

/// Which requests a policy applies to. A request matches when its host
/// matches one of `hosts` and its path starts with one of `pathPrefixes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawRouteMatch {
    /// Host patterns: `*` (any), `*.example.com` (any subdomain, not the
    /// domain itself) or an exact host. Case-insensitive; a port in the
    /// request's host is ignored. At least one.
    #[serde(default = "default_hosts")]
    pub hosts: Vec<String>,
    /// Path prefixes, each starting with `/`; plain string prefixes of the
    /// request path. At least one.
    #[serde(default = "default_path_prefixes")]
    pub path_prefixes: Vec<String>,
}

fn default_hosts() -> Vec<String> {
    vec!["*".to_owned()]
}

fn default_path_prefixes() -> Vec<String> {
    vec!["/".to_owned()]
}

impl Default for RawRouteMatch {
    fn default() -> Self {
        RawRouteMatch {
            hosts: default_hosts(),
            path_prefixes: default_path_prefixes(),
        }
    }
}

/// A host pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `*`
    Any,
    /// `*.example.com`, stored as `.example.com`.
    Suffix(String),
    /// `example.com`
    Exact(String),
}

impl HostPattern {
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Suffix(suffix) => {
                host.len() > suffix.len()
                    && host.is_char_boundary(host.len() - suffix.len())
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
            HostPattern::Exact(exact) => host.eq_ignore_ascii_case(exact),
        }
    }

    fn to_raw(&self) -> String {
        match self {
            HostPattern::Any => "*".to_owned(),
            HostPattern::Suffix(s) => format!("*{s}"),
            HostPattern::Exact(e) => e.clone(),
        }
    }
}

/// The validated match of a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    pub hosts: Vec<HostPattern>,
    pub path_prefixes: Vec<String>,
}

impl Default for RouteMatch {
    fn default() -> Self {
        RouteMatch {
            hosts: vec![HostPattern::Any],
            path_prefixes: vec!["/".to_owned()],
        }
    }
}

/// The host without a port (`example.com:8080` → `example.com`,
/// `[::1]:80` → `[::1]`).
pub(crate) fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

impl RouteMatch {
    /// Whether the request is in scope.
    pub fn matches(&self, request: &impl RequestView) -> bool {
        let host_ok = self.hosts.iter().any(|p| matches!(p, HostPattern::Any))
            || request
                .host()
                .map(strip_port)
                .is_some_and(|host| self.hosts.iter().any(|p| p.matches(host)));
        if !host_ok {
            return false;
        }
        let path = request.path().unwrap_or("/");
        self.path_prefixes
            .iter()
            .any(|p| path.starts_with(p.as_str()))
    }

    pub(crate) fn from_raw(raw: RawRouteMatch, problems: &mut Problems) -> RouteMatch {
        if raw.hosts.is_empty() {
            problems.push("match.hosts", "must list at least one host pattern");
        }
        if raw.path_prefixes.is_empty() {
            problems.push("match.pathPrefixes", "must list at least one path prefix");
        }
        let mut hosts = Vec::with_capacity(raw.hosts.len());
        for (i, host) in raw.hosts.iter().enumerate() {
            let field = format!("match.hosts[{i}]");
            let lower = host.to_ascii_lowercase();
            let valid_host = |h: &str| {
                !h.is_empty()
                    && h.len() <= 253
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
                    && !h.starts_with('.')
                    && !h.ends_with('.')
            };
            if lower == "*" {
                hosts.push(HostPattern::Any);
            } else if let Some(rest) = lower.strip_prefix("*.") {
                if valid_host(rest) {
                    hosts.push(HostPattern::Suffix(format!(".{rest}")));
                } else {
                    problems.push(field, format!("'{host}' is not a valid host pattern"));
                }
            } else if valid_host(&lower) {
                hosts.push(HostPattern::Exact(lower));
            } else {
                problems.push(
                    field,
                    format!(
                        "'{host}' is not a valid host pattern (`*`, `*.example.com` or a host name without port)"
                    ),
                );
            }
        }
        for (i, prefix) in raw.path_prefixes.iter().enumerate() {
            if !prefix.starts_with('/') || prefix.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
                problems.push(
                    format!("match.pathPrefixes[{i}]"),
                    format!("'{prefix}' must start with '/' and hold only visible ASCII"),
                );
            }
        }
        RouteMatch {
            hosts,
            path_prefixes: raw.path_prefixes,
        }
    }

    pub(crate) fn to_raw(&self) -> RawRouteMatch {
        RawRouteMatch {
            hosts: self.hosts.iter().map(HostPattern::to_raw).collect(),
            path_prefixes: self.path_prefixes.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HeaderList;

    #[test]
    fn strip_port_handles_forms() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("::1"), "::1");
    }

    #[test]
    fn host_patterns() {
        let mut problems = Problems::default();
        let m = RouteMatch::from_raw(
            RawRouteMatch {
                hosts: vec!["*.Example.com".into(), "api.test".into()],
                path_prefixes: vec!["/push".into()],
            },
            &mut problems,
        );
        assert!(problems.is_empty());
        let req = |host: &str, path: &str| {
            HeaderList::from_pairs([(":authority", host), (":path", path)])
        };
        assert!(m.matches(&req("a.example.com", "/push/x")));
        assert!(m.matches(&req("a.b.EXAMPLE.com:443", "/push")));
        assert!(!m.matches(&req("example.com", "/push")));
        assert!(m.matches(&req("api.test:80", "/push")));
        assert!(!m.matches(&req("api.test", "/other")));
        assert!(!m.matches(&req("xapi.test", "/push")));
    }

    #[test]
    fn route_match_table() {
        let mut problems = Problems::default();
        let m = RouteMatch::from_raw(
            RawRouteMatch {
                hosts: vec!["*.example.com".into(), "API.test".into()],
                path_prefixes: vec!["/push".into(), "/v1/".into()],
            },
            &mut problems,
        );
        assert!(problems.is_empty());
        /// (authority, host, path, matches)
        type Case<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>, bool);
        let cases: Vec<Case> = vec![
            (Some("a.example.com"), None, Some("/push"), true),
            (Some("A.Example.COM:8443"), None, Some("/push?x=1"), true),
            (Some("deep.a.example.com"), None, Some("/pushy"), true),
            (Some("example.com"), None, Some("/push"), false),
            (Some("a.example.com.evil.test"), None, Some("/push"), false),
            (Some("aexample.com"), None, Some("/push"), false),
            (Some("api.test:80"), None, Some("/v1/x"), true),
            (Some("api.test"), None, Some("/v1"), false),
            (Some("api.test"), None, Some("/PUSH"), false),
            (None, Some("api.test"), Some("/push"), true),
            // :authority wins over host
            (Some("other.test"), Some("api.test"), Some("/push"), false),
            (None, None, Some("/push"), false),
            (Some("api.test"), None, None, false),
            (Some("[::1]:80"), None, Some("/push"), false),
            (Some("\u{e9}.example.com"), None, Some("/push"), true),
            (Some("\u{e9}"), None, Some("/push"), false),
        ];
        for (authority, host, path, expected) in cases {
            let mut req = HeaderList::default();
            if let Some(a) = authority {
                req = req.with(":authority", a);
            }
            if let Some(h) = host {
                req = req.with("host", h);
            }
            if let Some(p) = path {
                req = req.with(":path", p);
            }
            assert_eq!(m.matches(&req), expected, "{authority:?} {host:?} {path:?}");
        }
        // the defaults match everything, with or without a host or path
        let any = RouteMatch::default();
        assert!(any.matches(&HeaderList::default()));
        assert!(any.matches(&HeaderList::default().with(":path", "/x")));
    }

    #[test]
    fn bad_patterns_are_reported() {
        let mut problems = Problems::default();
        RouteMatch::from_raw(
            RawRouteMatch {
                hosts: vec!["exa mple".into(), "host:80".into()],
                path_prefixes: vec!["push".into()],
            },
            &mut problems,
        );
        let fields: Vec<_> = problems.0.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            ["match.hosts[0]", "match.hosts[1]", "match.pathPrefixes[0]"]
        );
    }
}
