//! ReleasePolicy (`v1/releases/<name>`). The decision lives in `crate::release`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::error::{deserialize, join_path};
use super::route::{RawRouteMatch, RouteMatch};
use super::{check, Problem, Problems};

/// A grey-release policy: which group (upstream colour) a request goes to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawReleasePolicy {
    /// Requests this policy applies to (default: all). A request is matched by
    /// the first policy in (priority desc, name asc) order.
    #[serde(rename = "match", default)]
    pub route: RawRouteMatch,
    /// Higher wins when several policies match a request.
    #[serde(default)]
    pub priority: i32,
    /// Request header the chosen group is written to (Envoy routes on it): a
    /// lowercase header name, not a pseudo-header nor one of host, cookie,
    /// set-cookie, content-length, transfer-encoding, connection, upgrade, te,
    /// traceparent, tracestate, x-request-id, authorization.
    #[serde(default = "default_tag_header")]
    pub tag_header: String,
    /// The release groups (1..=16 distinct names `^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`).
    pub groups: Vec<String>,
    /// The group when no rule decides; one of `groups`.
    pub default_group: String,
    /// Honour a client-sent tag header naming a known group. When false,
    /// a client-sent tag is stripped (and replaced by the decision).
    #[serde(default)]
    pub trust_client_tag: bool,
    /// Rules, tried in order; the first that matches decides (at most 64).
    #[serde(default)]
    pub rules: Vec<RawReleaseRule>,
    /// Sticky cookie: remembers a percent draw or default decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<RawSticky>,
}

fn default_tag_header() -> String {
    "x-sidestream-group".to_owned()
}

/// One rule, by `type`. Header and cookie rules take exactly one of
/// `equals` / `in`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum RawReleaseRule {
    /// The request header `name` equals `equals` or one of `in`.
    Header(RawValueRule),
    /// The request cookie `name` equals `equals` or one of `in`.
    Cookie(RawValueRule),
    /// The request header `header` names one of `tenants`.
    Tenant(RawTenantRule),
    /// `percent` of the values of `by`, by a stable hash.
    Percent(RawPercentRule),
}

/// A header or cookie rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawValueRule {
    /// Header name (lowercase) or cookie name (exact).
    pub name: String,
    /// The value must equal this (exact, case-sensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<String>,
    /// The value must be one of these (1..=1024 values).
    #[serde(rename = "in", default, skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<String>>,
    /// The group chosen when the rule matches.
    pub group: String,
}

/// A tenant rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawTenantRule {
    /// The header carrying the tenant id (lowercase).
    pub header: String,
    /// Tenant ids (exact, 1..=1024).
    pub tenants: Vec<String>,
    /// The group chosen when the rule matches.
    pub group: String,
}

/// A percent rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawPercentRule {
    /// Share of values sent to `group`, 0..=100 with at most 2 decimals.
    #[serde(serialize_with = "super::serialize_number")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub percent: f64,
    /// What is hashed; the rule does not match when it is absent.
    pub by: RawPercentSource,
    /// The group chosen when the value's draw is below `percent`.
    pub group: String,
}

/// Reads a policy, reading each rule on its own so that every bad rule is
/// reported with the path of its bad field.
pub(crate) fn deserialize_policy(
    mut spec: serde_json::Value,
) -> Result<RawReleasePolicy, Vec<Problem>> {
    let rules = match spec.as_object_mut() {
        Some(map) if map.get("rules").is_some_and(|r| r.is_array()) => map.remove("rules"),
        _ => None,
    };
    let base = deserialize::<RawReleasePolicy>(spec);
    let mut problems = Vec::new();
    let mut parsed = Vec::new();
    if let Some(serde_json::Value::Array(list)) = rules {
        for (i, rule) in list.into_iter().enumerate() {
            match deserialize_rule(rule) {
                Ok(rule) => parsed.push(rule),
                Err(found) => problems.extend(found.into_iter().map(|p| Problem {
                    field: join_path(&format!("rules[{i}]"), &p.field),
                    message: p.message,
                })),
            }
        }
    }
    match base {
        Ok(mut raw) if problems.is_empty() => {
            raw.rules = parsed;
            Ok(raw)
        }
        Ok(_) => Err(problems),
        Err(mut found) => {
            found.extend(problems);
            Err(found)
        }
    }
}

fn deserialize_rule(rule: serde_json::Value) -> Result<RawReleaseRule, Vec<Problem>> {
    let mut rule = rule;
    let kind = match rule.as_object_mut() {
        Some(map) => match map.get("type").and_then(|t| t.as_str()) {
            Some(t) => {
                let t = t.to_owned();
                map.remove("type");
                t
            }
            None => return deserialize::<RawReleaseRule>(rule),
        },
        None => return deserialize::<RawReleaseRule>(rule),
    };
    match kind.as_str() {
        "header" => deserialize(rule).map(RawReleaseRule::Header),
        "cookie" => deserialize(rule).map(RawReleaseRule::Cookie),
        "tenant" => deserialize(rule).map(RawReleaseRule::Tenant),
        "percent" => deserialize(rule).map(RawReleaseRule::Percent),
        other => Err(vec![Problem {
            field: "type".to_owned(),
            message: format!(
                "unknown variant `{other}`, expected one of `header`, `cookie`, `tenant`, `percent`"
            ),
        }]),
    }
}

/// What a percent rule hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "source", rename_all = "camelCase", deny_unknown_fields)]
pub enum RawPercentSource {
    /// A request header (e.g. a user id).
    Header {
        /// Header name (lowercase).
        name: String,
    },
    /// A request cookie.
    Cookie {
        /// Cookie name.
        name: String,
    },
    /// The trace id (a per-request draw unless the caller continues a trace).
    TraceId,
}

/// The sticky cookie.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawSticky {
    /// Cookie name.
    #[serde(default = "default_sticky_cookie")]
    pub cookie: String,
    /// Cookie lifetime in seconds, 1..=31536000.
    #[serde(default = "default_sticky_max_age")]
    #[schemars(range(min = 1, max = 31_536_000))]
    pub max_age_seconds: u64,
}

fn default_sticky_cookie() -> String {
    "sidestream-group".to_owned()
}

fn default_sticky_max_age() -> u64 {
    86_400
}

/// Header or cookie value test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueMatch {
    Equals(String),
    In(Vec<String>),
}

impl ValueMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatch::Equals(v) => v == value,
            ValueMatch::In(vs) => vs.iter().any(|v| v == value),
        }
    }
}

/// What a percent rule hashes (validated; header names lowercase).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PercentSource {
    Header(String),
    Cookie(String),
    TraceId,
}

/// A validated rule. `group` is always one of the policy's groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseRule {
    Header {
        name: String,
        value: ValueMatch,
        group: String,
    },
    Cookie {
        name: String,
        value: ValueMatch,
        group: String,
    },
    Tenant {
        header: String,
        tenants: Vec<String>,
        group: String,
    },
    Percent {
        /// 0..=10000 (hundredths of a percent).
        basis_points: u32,
        by: PercentSource,
        group: String,
    },
}

impl ReleaseRule {
    pub fn group(&self) -> &str {
        match self {
            ReleaseRule::Header { group, .. }
            | ReleaseRule::Cookie { group, .. }
            | ReleaseRule::Tenant { group, .. }
            | ReleaseRule::Percent { group, .. } => group,
        }
    }

    /// `header`, `cookie`, `tenant` or `percent`.
    pub fn type_name(&self) -> &'static str {
        match self {
            ReleaseRule::Header { .. } => "header",
            ReleaseRule::Cookie { .. } => "cookie",
            ReleaseRule::Tenant { .. } => "tenant",
            ReleaseRule::Percent { .. } => "percent",
        }
    }
}

/// The validated sticky cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sticky {
    pub cookie: String,
    pub max_age_seconds: u64,
}

/// A validated release policy.
#[derive(Debug, Clone, PartialEq)]
pub struct ReleasePolicy {
    pub name: String,
    pub route: RouteMatch,
    pub priority: i32,
    /// Lowercase header name.
    pub tag_header: String,
    pub groups: Vec<String>,
    pub default_group: String,
    pub trust_client_tag: bool,
    pub rules: Vec<ReleaseRule>,
    pub sticky: Option<Sticky>,
}

const MAX_GROUPS: usize = 16;
const MAX_RULES: usize = 64;
const MAX_VALUES: usize = 1024;

fn valid_group(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

fn value_match(
    problems: &mut Problems,
    field: &str,
    equals: Option<String>,
    one_of: Option<Vec<String>>,
) -> ValueMatch {
    match (equals, one_of) {
        (Some(v), None) => {
            check::match_value(problems, &format!("{field}.equals"), &v);
            ValueMatch::Equals(v)
        }
        (None, Some(vs)) => {
            if vs.is_empty() || vs.len() > MAX_VALUES {
                problems.push(
                    format!("{field}.in"),
                    format!("must list 1..={MAX_VALUES} values, found {}", vs.len()),
                );
            }
            for (i, v) in vs.iter().enumerate() {
                check::match_value(problems, &format!("{field}.in[{i}]"), v);
            }
            ValueMatch::In(vs)
        }
        (Some(_), Some(_)) => {
            problems.push(field, "has both `equals` and `in`; give exactly one");
            ValueMatch::In(Vec::new())
        }
        (None, None) => {
            problems.push(field, "needs `equals` or `in`");
            ValueMatch::In(Vec::new())
        }
    }
}

impl ReleasePolicy {
    pub(crate) fn from_raw(name: &str, raw: RawReleasePolicy) -> Result<Self, Vec<Problem>> {
        let mut problems = Problems::default();
        let route = RouteMatch::from_raw(raw.route, &mut problems);
        let tag_header = check::tag_header(&mut problems, "tagHeader", &raw.tag_header);
        if raw.groups.is_empty() || raw.groups.len() > MAX_GROUPS {
            problems.push(
                "groups",
                format!(
                    "must list 1..={MAX_GROUPS} groups, found {}",
                    raw.groups.len()
                ),
            );
        }
        for (i, g) in raw.groups.iter().enumerate() {
            if !valid_group(g) {
                problems.push(
                    format!("groups[{i}]"),
                    format!(
                        "'{g}' is not a valid group name (^[A-Za-z0-9][A-Za-z0-9._-]{{0,63}}$)"
                    ),
                );
            } else if raw.groups[..i].contains(g) {
                problems.push(format!("groups[{i}]"), format!("'{g}' is listed twice"));
            }
        }
        let known = |g: &str| raw.groups.iter().any(|k| k == g);
        if !known(&raw.default_group) {
            problems.push(
                "defaultGroup",
                format!("'{}' is not in groups", raw.default_group),
            );
        }
        if raw.rules.len() > MAX_RULES {
            problems.push(
                "rules",
                format!("{} rules; at most {MAX_RULES}", raw.rules.len()),
            );
        }
        let mut rules = Vec::with_capacity(raw.rules.len());
        for (i, rule) in raw.rules.into_iter().enumerate() {
            let field = format!("rules[{i}]");
            let rule = match rule {
                RawReleaseRule::Header(RawValueRule {
                    name,
                    equals,
                    one_of,
                    group,
                }) => ReleaseRule::Header {
                    name: check::lowercase_header_name(
                        &mut problems,
                        &format!("{field}.name"),
                        &name,
                    ),
                    value: value_match(&mut problems, &field, equals, one_of),
                    group,
                },
                RawReleaseRule::Cookie(RawValueRule {
                    name,
                    equals,
                    one_of,
                    group,
                }) => ReleaseRule::Cookie {
                    name: check::cookie_name(&mut problems, &format!("{field}.name"), &name),
                    value: value_match(&mut problems, &field, equals, one_of),
                    group,
                },
                RawReleaseRule::Tenant(RawTenantRule {
                    header,
                    tenants,
                    group,
                }) => {
                    let header = check::lowercase_header_name(
                        &mut problems,
                        &format!("{field}.header"),
                        &header,
                    );
                    if tenants.is_empty() || tenants.len() > MAX_VALUES {
                        problems.push(
                            format!("{field}.tenants"),
                            format!(
                                "must list 1..={MAX_VALUES} tenants, found {}",
                                tenants.len()
                            ),
                        );
                    }
                    for (j, t) in tenants.iter().enumerate() {
                        check::match_value(&mut problems, &format!("{field}.tenants[{j}]"), t);
                    }
                    ReleaseRule::Tenant {
                        header,
                        tenants,
                        group,
                    }
                }
                RawReleaseRule::Percent(RawPercentRule { percent, by, group }) => {
                    let basis_points = if !percent.is_finite() || percent < 0.0 {
                        problems.push(format!("{field}.percent"), format!("{percent} is below 0"));
                        0
                    } else if percent > 100.0 {
                        problems.push(
                            format!("{field}.percent"),
                            format!("{percent} is above 100"),
                        );
                        0
                    } else {
                        match check::fixed_point(percent, 2) {
                            Some(bp) => u32::try_from(bp).unwrap_or(10_000).min(10_000),
                            None => {
                                problems.push(
                                    format!("{field}.percent"),
                                    format!("{percent} has more than 2 decimals"),
                                );
                                0
                            }
                        }
                    };
                    let by = match by {
                        RawPercentSource::Header { name } => {
                            PercentSource::Header(check::lowercase_header_name(
                                &mut problems,
                                &format!("{field}.by.name"),
                                &name,
                            ))
                        }
                        RawPercentSource::Cookie { name } => PercentSource::Cookie(
                            check::cookie_name(&mut problems, &format!("{field}.by.name"), &name),
                        ),
                        RawPercentSource::TraceId => PercentSource::TraceId,
                    };
                    ReleaseRule::Percent {
                        basis_points,
                        by,
                        group,
                    }
                }
            };
            if !known(rule.group()) {
                problems.push(
                    format!("{field}.group"),
                    format!("'{}' is not in groups", rule.group()),
                );
            }
            rules.push(rule);
        }
        let sticky = raw.sticky.map(|s| {
            let cookie = check::cookie_name(&mut problems, "sticky.cookie", &s.cookie);
            if !(1..=31_536_000).contains(&s.max_age_seconds) {
                problems.push(
                    "sticky.maxAgeSeconds",
                    format!("{} is not within 1..=31536000", s.max_age_seconds),
                );
            }
            Sticky {
                cookie,
                max_age_seconds: s.max_age_seconds,
            }
        });
        problems.into_result(ReleasePolicy {
            name: name.to_owned(),
            route,
            priority: raw.priority,
            tag_header,
            groups: raw.groups,
            default_group: raw.default_group,
            trust_client_tag: raw.trust_client_tag,
            rules,
            sticky,
        })
    }

    pub fn to_raw(&self) -> RawReleasePolicy {
        let split = |v: &ValueMatch| match v {
            ValueMatch::Equals(e) => (Some(e.clone()), None),
            ValueMatch::In(vs) => (None, Some(vs.clone())),
        };
        RawReleasePolicy {
            route: self.route.to_raw(),
            priority: self.priority,
            tag_header: self.tag_header.clone(),
            groups: self.groups.clone(),
            default_group: self.default_group.clone(),
            trust_client_tag: self.trust_client_tag,
            rules: self
                .rules
                .iter()
                .map(|rule| match rule {
                    ReleaseRule::Header { name, value, group } => {
                        let (equals, one_of) = split(value);
                        RawReleaseRule::Header(RawValueRule {
                            name: name.clone(),
                            equals,
                            one_of,
                            group: group.clone(),
                        })
                    }
                    ReleaseRule::Cookie { name, value, group } => {
                        let (equals, one_of) = split(value);
                        RawReleaseRule::Cookie(RawValueRule {
                            name: name.clone(),
                            equals,
                            one_of,
                            group: group.clone(),
                        })
                    }
                    ReleaseRule::Tenant {
                        header,
                        tenants,
                        group,
                    } => RawReleaseRule::Tenant(RawTenantRule {
                        header: header.clone(),
                        tenants: tenants.clone(),
                        group: group.clone(),
                    }),
                    ReleaseRule::Percent {
                        basis_points,
                        by,
                        group,
                    } => RawReleaseRule::Percent(RawPercentRule {
                        percent: f64::from(*basis_points) / 100.0,
                        by: match by {
                            PercentSource::Header(name) => {
                                RawPercentSource::Header { name: name.clone() }
                            }
                            PercentSource::Cookie(name) => {
                                RawPercentSource::Cookie { name: name.clone() }
                            }
                            PercentSource::TraceId => RawPercentSource::TraceId,
                        },
                        group: group.clone(),
                    }),
                })
                .collect(),
            sticky: self.sticky.as_ref().map(|s| RawSticky {
                cookie: s.cookie.clone(),
                max_age_seconds: s.max_age_seconds,
            }),
        }
    }
}
