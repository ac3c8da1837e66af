//! Release-group choice (grey release): which group a request goes to.
//!
//! Order of decision: a trusted client tag (when `trustClientTag` and the tag
//! header names a known group) → the rules in order (a `percent` rule with
//! `sticky` on and a sticky cookie naming a known group yields that group
//! instead of drawing) → `defaultGroup`. With `sticky`, a decision made by a
//! percent draw or the default sets the cookie.

#[cfg(test)]
mod tests;

use crate::config::{PercentSource, ReleasePolicy, ReleaseRule};
use crate::{request_cookie, RequestView};

/// The policy for a request: among the matching policies, the one with the
/// highest priority (then the smallest name).
pub fn select<'a>(
    policies: &'a [ReleasePolicy],
    request: &impl RequestView,
) -> Option<&'a ReleasePolicy> {
    policies
        .iter()
        .filter(|p| p.route.matches(request))
        .min_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then_with(|| a.name.cmp(&b.name))
        })
}

/// Why a group was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The client's tag header, trusted by the policy.
    ClientTag,
    /// Rule `index` (0-based) matched (header, cookie, tenant or a percent draw).
    Rule(usize),
    /// The sticky cookie, at percent rule `index`.
    Sticky(usize),
    /// No rule matched.
    Default,
}

impl Reason {
    /// `client-tag`, `rule`, `sticky`, `default` (stats, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ClientTag => "client-tag",
            Reason::Rule(_) => "rule",
            Reason::Sticky(_) => "sticky",
            Reason::Default => "default",
        }
    }
}

/// The decision for one request. The glue writes `group` into `tag_header`
/// (replacing any client value), clears the route cache, and adds
/// `set_cookie` as a `set-cookie` response header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseDecision<'a> {
    pub policy: &'a str,
    pub group: &'a str,
    pub reason: Reason,
    pub tag_header: &'a str,
    /// The `set-cookie` value (sticky).
    pub set_cookie: Option<String>,
    /// The request carried a tag header that was not trusted (it must be
    /// replaced by `group`).
    pub stripped_client_tag: bool,
}

/// The stable draw of a value for a policy: xxh3-64 of
/// `<policy name> 0x00 <value>`, modulo 10000 (basis points).
pub fn bucket(policy_name: &str, value: &str) -> u32 {
    let mut input = Vec::with_capacity(policy_name.len() + 1 + value.len());
    input.extend_from_slice(policy_name.as_bytes());
    input.push(0);
    input.extend_from_slice(value.as_bytes());
    let hash = xxhash_rust::xxh3::xxh3_64(&input);
    // < 10000, fits.
    u32::try_from(hash % 10_000).unwrap_or(0)
}

impl ReleasePolicy {
    fn known_group(&self, group: &str) -> Option<&str> {
        self.groups
            .iter()
            .find(|g| g.as_str() == group)
            .map(String::as_str)
    }

    /// Chooses the group of a request. `trace_id_hex` is the request's
    /// trace id (for `percent` rules by `traceId`).
    pub fn decide<'a>(
        &'a self,
        request: &impl RequestView,
        trace_id_hex: &str,
    ) -> ReleaseDecision<'a> {
        let client_tag = request.header(&self.tag_header);
        let mut decision = ReleaseDecision {
            policy: &self.name,
            group: &self.default_group,
            reason: Reason::Default,
            tag_header: &self.tag_header,
            set_cookie: None,
            stripped_client_tag: false,
        };
        if let Some(tag) = client_tag {
            if self.trust_client_tag {
                if let Some(group) = self.known_group(tag.trim()) {
                    decision.group = group;
                    decision.reason = Reason::ClientTag;
                    return decision;
                }
            }
            decision.stripped_client_tag = true;
        }
        let sticky_group = self.sticky.as_ref().and_then(|s| {
            request_cookie(request, &s.cookie).and_then(|value| self.known_group(value))
        });
        for (index, rule) in self.rules.iter().enumerate() {
            let matched = match rule {
                ReleaseRule::Header { name, value, .. } => {
                    request.header(name).is_some_and(|v| value.matches(v))
                }
                ReleaseRule::Cookie { name, value, .. } => {
                    request_cookie(request, name).is_some_and(|v| value.matches(v))
                }
                ReleaseRule::Tenant {
                    header, tenants, ..
                } => request
                    .header(header)
                    .is_some_and(|v| tenants.iter().any(|t| t == v.trim())),
                ReleaseRule::Percent {
                    basis_points, by, ..
                } => {
                    if let Some(group) = sticky_group {
                        decision.group = group;
                        decision.reason = Reason::Sticky(index);
                        return decision;
                    }
                    let source = match by {
                        PercentSource::Header(name) => request.header(name),
                        PercentSource::Cookie(name) => request_cookie(request, name),
                        PercentSource::TraceId => Some(trace_id_hex),
                    };
                    match source.filter(|v| !v.is_empty()) {
                        Some(value) if bucket(&self.name, value) < *basis_points => {
                            decision.group = rule.group();
                            decision.reason = Reason::Rule(index);
                            decision.set_cookie = self.sticky_cookie(rule.group());
                            return decision;
                        }
                        _ => false,
                    }
                }
            };
            if matched {
                decision.group = rule.group();
                decision.reason = Reason::Rule(index);
                return decision;
            }
        }
        decision.set_cookie = self.sticky_cookie(&self.default_group);
        decision
    }

    /// The `set-cookie` value remembering `group`, if the policy is sticky.
    fn sticky_cookie(&self, group: &str) -> Option<String> {
        self.sticky.as_ref().map(|s| {
            format!(
                "{}={group}; Max-Age={}; Path=/; HttpOnly; SameSite=Lax",
                s.cookie, s.max_age_seconds
            )
        })
    }
}
