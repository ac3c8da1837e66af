//! Requests as they arrive (proto messages, any bytes a client sends) are
//! checked here, before anything reaches Redis, into calls that can no longer
//! be invalid. An invalid request changes nothing and is answered with an
//! error naming the field and what was wrong with it.

#[cfg(test)]
mod tests;

use std::collections::HashMap;

use sidestream_proto::limits::v1 as pb;

/// Longest policy name, in bytes.
pub const MAX_POLICY_LEN: usize = 128;
/// Longest limit key, in bytes.
pub const MAX_KEY_LEN: usize = 256;
/// Longest instance id, in bytes. Istio's Envoy node ids alone
/// (`sidecar~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local`) can come
/// near 256, and the filter adds its node id, VM number and boot nonce.
pub const MAX_INSTANCE_LEN: usize = 512;
/// Longest policy version (logs only), in bytes.
pub const MAX_POLICY_VERSION_LEN: usize = 256;
/// Highest refill rate, in thousandths of a stream per second.
pub const MAX_RATE_MILLI: u64 = 1_000_000_000;
/// Largest bucket.
pub const MAX_BURST: u32 = 1_000_000;
/// Highest concurrency cap, and the most streams one instance may report
/// open on one (policy, key).
pub const MAX_CONCURRENT: u32 = 1_000_000;
/// Most holdings one Sync may carry (each costs one script call).
pub const MAX_HOLDINGS: usize = 100_000;

/// A request field that is not acceptable: the field's path
/// (`holdings[3].key`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct Invalid {
    /// The field, as named in `limits.proto` (`limits.burst`, `holdings[2].policy`).
    pub field: String,
    /// What is wrong, with the offending value where it is safe to repeat.
    pub problem: String,
}

impl Invalid {
    fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Invalid {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// A policy's numbers, in range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Refill rate in thousandths of a stream per second (1..=10^9).
    pub rate_milli: u64,
    /// Bucket size (1..=10^6).
    pub burst: u32,
    /// Cap on streams open at once per key, mesh-wide; 0 = no cap.
    pub max_concurrent: u32,
}

/// A (policy, key) whose names are checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// The policy name as the config has it: `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`.
    pub policy: String,
    /// The key within the policy: up to 256 bytes, no control characters.
    pub key: String,
}

/// A checked `AcquireRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acquire {
    /// The asking instance.
    pub instance: String,
    /// Where to take a token and a slot.
    pub target: Target,
    /// The policy's numbers.
    pub limits: Limits,
    /// For logs.
    pub policy_version: String,
}

/// A checked `ReleaseRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// The releasing instance.
    pub instance: String,
    /// Where to give a slot back.
    pub target: Target,
}

/// A checked `SyncRequest`: distinct (policy, key) pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sync {
    /// The syncing instance.
    pub instance: String,
    /// Each (policy, key) with the instance's true open-stream count there.
    pub holdings: Vec<(Target, u32)>,
}

/// Shows at most the first 64 characters of a client-supplied value, escaped.
fn shown(value: &str) -> String {
    let mut out: String = value
        .chars()
        .take(64)
        .flat_map(char::escape_debug)
        .collect();
    if value.chars().count() > 64 {
        out.push('…');
    }
    format!("'{out}'")
}

fn policy_name(field: &str, value: &str) -> Result<String, Invalid> {
    if value.is_empty() {
        return Err(Invalid::new(field, "must not be empty"));
    }
    if value.len() > MAX_POLICY_LEN {
        return Err(Invalid::new(
            field,
            format!(
                "{} is {} bytes, more than {MAX_POLICY_LEN}",
                shown(value),
                value.len()
            ),
        ));
    }
    if let Some((at, c)) = value
        .char_indices()
        .find(|&(at, c)| !(c.is_ascii_alphanumeric() || (at > 0 && matches!(c, '.' | '_' | '-'))))
    {
        return Err(Invalid::new(
            field,
            format!(
                "{} has {:?} at byte {at}; a policy name is A-Z a-z 0-9, then also . _ - (as in the config)",
                shown(value),
                c
            ),
        ));
    }
    Ok(value.to_owned())
}

/// Up to `max` bytes, no control characters; `empty_ok` for keys (a policy
/// keyed by route has one bucket, whatever the filter calls its key).
fn text(field: &str, value: &str, max: usize, empty_ok: bool) -> Result<String, Invalid> {
    if value.is_empty() && !empty_ok {
        return Err(Invalid::new(field, "must not be empty"));
    }
    if value.len() > max {
        // The value is not repeated: it may be long and is the client's.
        return Err(Invalid::new(
            field,
            format!("{} bytes, more than {max}", value.len()),
        ));
    }
    if let Some((at, c)) = value.char_indices().find(|(_, c)| c.is_control()) {
        return Err(Invalid::new(
            field,
            format!("control character U+{:04X} at byte {at}", u32::from(c)),
        ));
    }
    Ok(value.to_owned())
}

fn target(prefix: &str, policy: &str, key: &str) -> Result<Target, Invalid> {
    Ok(Target {
        policy: policy_name(&format!("{prefix}policy"), policy)?,
        key: text(&format!("{prefix}key"), key, MAX_KEY_LEN, true)?,
    })
}

fn instance(value: &str) -> Result<String, Invalid> {
    text("instance", value, MAX_INSTANCE_LEN, false)
}

fn limits(raw: Option<&pb::Limits>) -> Result<Limits, Invalid> {
    let Some(raw) = raw else {
        return Err(Invalid::new(
            "limits",
            "missing; the request carries the policy's rate_milli, burst and max_concurrent",
        ));
    };
    if !(1..=MAX_RATE_MILLI).contains(&raw.rate_milli) {
        return Err(Invalid::new(
            "limits.rate_milli",
            format!("{} is outside 1..={MAX_RATE_MILLI}", raw.rate_milli),
        ));
    }
    if !(1..=MAX_BURST).contains(&raw.burst) {
        return Err(Invalid::new(
            "limits.burst",
            format!("{} is outside 1..={MAX_BURST}", raw.burst),
        ));
    }
    if raw.max_concurrent > MAX_CONCURRENT {
        return Err(Invalid::new(
            "limits.max_concurrent",
            format!(
                "{} is outside 0..={MAX_CONCURRENT} (0 = no cap)",
                raw.max_concurrent
            ),
        ));
    }
    Ok(Limits {
        rate_milli: raw.rate_milli,
        burst: raw.burst,
        max_concurrent: raw.max_concurrent,
    })
}

impl TryFrom<&pb::AcquireRequest> for Acquire {
    type Error = Invalid;

    fn try_from(raw: &pb::AcquireRequest) -> Result<Self, Invalid> {
        Ok(Acquire {
            instance: instance(&raw.instance)?,
            target: target("", &raw.policy, &raw.key)?,
            limits: limits(raw.limits.as_ref())?,
            policy_version: text(
                "policy_version",
                &raw.policy_version,
                MAX_POLICY_VERSION_LEN,
                true,
            )?,
        })
    }
}

impl TryFrom<&pb::ReleaseRequest> for Release {
    type Error = Invalid;

    fn try_from(raw: &pb::ReleaseRequest) -> Result<Self, Invalid> {
        Ok(Release {
            instance: instance(&raw.instance)?,
            target: target("", &raw.policy, &raw.key)?,
        })
    }
}

impl TryFrom<&pb::SyncRequest> for Sync {
    type Error = Invalid;

    fn try_from(raw: &pb::SyncRequest) -> Result<Self, Invalid> {
        let instance = instance(&raw.instance)?;
        if raw.holdings.len() > MAX_HOLDINGS {
            return Err(Invalid::new(
                "holdings",
                format!("{} entries, more than {MAX_HOLDINGS}", raw.holdings.len()),
            ));
        }
        let mut holdings = Vec::with_capacity(raw.holdings.len());
        for (i, holding) in raw.holdings.iter().enumerate() {
            let target = target(&format!("holdings[{i}]."), &holding.policy, &holding.key)?;
            if holding.open > MAX_CONCURRENT {
                return Err(Invalid::new(
                    format!("holdings[{i}].open"),
                    format!("{} is more than {MAX_CONCURRENT}", holding.open),
                ));
            }
            holdings.push((target, holding.open));
        }
        let mut seen: HashMap<&Target, usize> = HashMap::with_capacity(holdings.len());
        for (i, (target, _)) in holdings.iter().enumerate() {
            if let Some(first) = seen.insert(target, i) {
                return Err(Invalid::new(
                    format!("holdings[{i}]"),
                    format!(
                        "policy {} key {} is listed twice (also at holdings[{first}])",
                        shown(&target.policy),
                        shown(&target.key)
                    ),
                ));
            }
        }
        Ok(Sync { instance, holdings })
    }
}
