//! The limiter's requests as they arrive: any bytes decoded as an
//! `AcquireRequest`, `ReleaseRequest` or `SyncRequest` (the first byte
//! chooses, the rest is the protobuf message) and checked by
//! `validate`. A request that passes has names and keys in range, and the
//! Redis keys made from it keep their one hash tag.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use sidestream_limiter::keys::{KeyPrefix, DEFAULT_PREFIX};
use sidestream_limiter::validate::{
    Acquire, Release, Sync, Target, MAX_BURST, MAX_CONCURRENT, MAX_HOLDINGS, MAX_INSTANCE_LEN,
    MAX_KEY_LEN, MAX_POLICY_LEN, MAX_RATE_MILLI,
};
use sidestream_proto::limits::v1 as pb;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, message)) = data.split_first() else {
        return;
    };
    match kind % 3 {
        0 => {
            let Ok(raw) = pb::AcquireRequest::decode(message) else {
                return;
            };
            if let Ok(acquire) = Acquire::try_from(&raw) {
                check_instance(&acquire.instance);
                check_target(&acquire.target);
                let limits = acquire.limits;
                assert!((1..=MAX_RATE_MILLI).contains(&limits.rate_milli));
                assert!((1..=MAX_BURST).contains(&limits.burst));
                assert!(limits.max_concurrent <= MAX_CONCURRENT);
            }
        }
        1 => {
            let Ok(raw) = pb::ReleaseRequest::decode(message) else {
                return;
            };
            if let Ok(release) = Release::try_from(&raw) {
                check_instance(&release.instance);
                check_target(&release.target);
            }
        }
        _ => {
            let Ok(raw) = pb::SyncRequest::decode(message) else {
                return;
            };
            if let Ok(sync) = Sync::try_from(&raw) {
                check_instance(&sync.instance);
                assert!(sync.holdings.len() <= MAX_HOLDINGS);
                assert_eq!(sync.holdings.len(), raw.holdings.len());
                for (target, open) in &sync.holdings {
                    check_target(target);
                    assert!(*open <= MAX_CONCURRENT);
                }
            }
        }
    }
});

fn check_instance(instance: &str) {
    assert!(!instance.is_empty() && instance.len() <= MAX_INSTANCE_LEN);
    assert!(!instance.chars().any(char::is_control), "{instance:?}");
}

fn check_target(target: &Target) {
    let policy = target.policy.as_bytes();
    assert!(!policy.is_empty() && policy.len() <= MAX_POLICY_LEN);
    assert!(policy[0].is_ascii_alphanumeric(), "{:?}", target.policy);
    assert!(policy
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')));
    assert!(target.key.len() <= MAX_KEY_LEN);
    assert!(
        !target.key.chars().any(char::is_control),
        "{:?}",
        target.key
    );
    let Ok(prefix) = KeyPrefix::new(DEFAULT_PREFIX) else {
        panic!("the default prefix is refused");
    };
    let keys = prefix.keys(target);
    for key in [&keys.bucket, &keys.holders, &keys.leases] {
        // One hash tag, naming the policy: every key of a target in one slot.
        assert_eq!(key.matches('{').count(), 1, "{key}");
        assert_eq!(key.matches('}').count(), 1, "{key}");
        assert!(key.contains(&format!("{{{}:", target.policy)), "{key}");
    }
    let tag = |key: &str| {
        key.split('{')
            .nth(1)
            .and_then(|t| t.split('}').next())
            .map(str::to_owned)
    };
    assert_eq!(tag(&keys.bucket), tag(&keys.holders));
    assert_eq!(tag(&keys.bucket), tag(&keys.leases));
}
