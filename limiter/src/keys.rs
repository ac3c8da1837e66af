//! Where a (policy, key) lives in Redis.
//!
//! ```text
//! <prefix>:{<policy>:<hash>}:bucket    hash: t (micro-tokens), c (carry, nano-tokens), l (last refill, µs)
//! <prefix>:{<policy>:<hash>}:holders   hash: instance → open streams
//! <prefix>:{<policy>:<hash>}:leases    sorted set: instance → lease expiry (µs, Redis clock)
//! ```
//!
//! `<hash>` is the first 128 bits of SHA-256 of the limit key, in hex: the
//! key is the client's (a header value), so its length and bytes never reach
//! Redis key names, and a collision cannot be crafted to share another
//! tenant's bucket. The part in braces is a Redis Cluster hash tag: all three
//! keys of one (policy, key) hash to one slot, so each script touches one
//! slot. Policy names are `[A-Za-z0-9._-]`, so they cannot close the tag.

use sha2::{Digest, Sha256};

use crate::validate::Target;

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "sidestream:limits";
/// Longest key prefix, in bytes.
pub const MAX_PREFIX_LEN: usize = 64;

/// The Redis keys of one (policy, key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetKeys {
    /// The token bucket.
    pub bucket: String,
    /// Open streams per instance.
    pub holders: String,
    /// Lease expiry per instance.
    pub leases: String,
}

/// A checked key prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPrefix(String);

/// A prefix that would break the layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// Longer than [`MAX_PREFIX_LEN`].
    #[error("Redis key prefix is {0} bytes, more than {MAX_PREFIX_LEN}")]
    TooLong(usize),
    /// A brace (would move the Cluster hash tag), a space or a control
    /// character.
    #[error("Redis key prefix '{0}' has {1:?}; use letters, digits and : . _ -")]
    BadCharacter(String, char),
}

impl KeyPrefix {
    /// Checks a prefix: up to 64 bytes of letters, digits and `: . _ -`.
    pub fn new(prefix: &str) -> Result<KeyPrefix, PrefixError> {
        if prefix.len() > MAX_PREFIX_LEN {
            return Err(PrefixError::TooLong(prefix.len()));
        }
        if let Some(c) = prefix
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, ':' | '.' | '_' | '-')))
        {
            return Err(PrefixError::BadCharacter(prefix.to_owned(), c));
        }
        Ok(KeyPrefix(prefix.to_owned()))
    }

    /// The keys of `target`.
    pub fn keys(&self, target: &Target) -> TargetKeys {
        let digest = Sha256::digest(target.key.as_bytes());
        let hash = hex::encode(&digest[..16]);
        let base = format!("{}:{{{}:{hash}}}", self.0, target.policy);
        TargetKeys {
            bucket: format!("{base}:bucket"),
            holders: format!("{base}:holders"),
            leases: format!("{base}:leases"),
        }
    }

    /// The prefix as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for KeyPrefix {
    fn default() -> Self {
        KeyPrefix(DEFAULT_PREFIX.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::{MAX_KEY_LEN, MAX_POLICY_LEN};

    fn target(policy: &str, key: &str) -> Target {
        Target {
            policy: policy.into(),
            key: key.into(),
        }
    }

    /// The part Redis Cluster hashes: between the first `{` and the next `}`.
    fn hash_tag(key: &str) -> &str {
        let open = key.find('{').expect("a tag");
        let close = open + key[open..].find('}').expect("closed");
        &key[open + 1..close]
    }

    #[test]
    fn the_layout_is_as_documented() {
        let keys = KeyPrefix::default().keys(&target("tenant-streams", "h:acme"));
        let hash = hex::encode(&Sha256::digest(b"h:acme")[..16]);
        assert_eq!(
            keys.bucket,
            format!("sidestream:limits:{{tenant-streams:{hash}}}:bucket")
        );
        assert_eq!(
            keys.holders,
            format!("sidestream:limits:{{tenant-streams:{hash}}}:holders")
        );
        assert_eq!(
            keys.leases,
            format!("sidestream:limits:{{tenant-streams:{hash}}}:leases")
        );
    }

    #[test]
    fn one_target_one_hash_tag_and_targets_differ() {
        let prefix = KeyPrefix::new("p").expect("prefix");
        let a = prefix.keys(&target("x", "k1"));
        let b = prefix.keys(&target("x", "k2"));
        let c = prefix.keys(&target("y", "k1"));
        assert_eq!(hash_tag(&a.bucket), hash_tag(&a.holders));
        assert_eq!(hash_tag(&a.bucket), hash_tag(&a.leases));
        assert_ne!(hash_tag(&a.bucket), hash_tag(&b.bucket));
        assert_ne!(hash_tag(&a.bucket), hash_tag(&c.bucket));
    }

    /// Whatever the key holds (braces, long, empty), the Redis key length is
    /// bounded and the tag stays the policy and the hash.
    #[test]
    fn client_keys_do_not_shape_redis_keys() {
        let policy = "p".repeat(MAX_POLICY_LEN);
        let longest = KeyPrefix::new(&"x".repeat(MAX_PREFIX_LEN)).expect("prefix");
        for key in ["", "}{", "{evil}", &"k".repeat(MAX_KEY_LEN), "ü\u{1F600}"] {
            let keys = longest.keys(&target(&policy, key));
            assert!(
                keys.holders.len() <= MAX_PREFIX_LEN + MAX_POLICY_LEN + 44,
                "{keys:?}"
            );
            let tag = hash_tag(&keys.bucket);
            assert_eq!(tag.len(), MAX_POLICY_LEN + 1 + 32, "{tag}");
            assert!(tag.starts_with(&policy));
        }
    }

    #[test]
    fn prefixes_are_checked() {
        assert_eq!(
            KeyPrefix::new("team:limits").expect("ok").as_str(),
            "team:limits"
        );
        assert_eq!(
            KeyPrefix::new("a{b").expect_err("brace"),
            PrefixError::BadCharacter("a{b".into(), '{')
        );
        assert!(KeyPrefix::new("a b").is_err());
        assert_eq!(
            KeyPrefix::new(&"x".repeat(65)).expect_err("long"),
            PrefixError::TooLong(65)
        );
    }
}
