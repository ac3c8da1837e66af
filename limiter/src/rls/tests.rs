use super::*;

const CONFIG: &str = r#"{
  "domain": "sidestream",
  "descriptors": [
    { "key": "tenant", "policy": "tenant-streams",
      "spec": { "key": { "source": "header", "name": "x-tenant-id" },
                "newStreamsPerSecond": 5, "burst": 5, "maxConcurrent": 20 } },
    { "key": "remote_address", "policy": "per-client",
      "spec": { "key": { "source": "clientAddress" }, "newStreamsPerSecond": 0.5, "burst": 2 } },
    { "key": "route", "policy": "whole-route",
      "spec": { "key": { "source": "route" }, "newStreamsPerSecond": 100, "burst": 10 } }
  ]
}"#;

fn descriptor(entries: &[(&str, &str)]) -> pb::RateLimitDescriptor {
    pb::RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(key, value)| pb::rate_limit_descriptor::Entry {
                key: (*key).into(),
                value: (*value).into(),
            })
            .collect(),
    }
}

#[test]
fn descriptors_map_to_the_filters_buckets() {
    let config = RlsConfig::parse("rls.json", CONFIG.as_bytes()).expect("valid");
    assert_eq!(config.domain, "sidestream");
    let (policy, target) = config
        .target(&descriptor(&[("tenant", "acme")]))
        .expect("tenant");
    assert_eq!((policy.burst, policy.rate_milli), (5, 5000));
    assert_eq!(
        target,
        Target {
            policy: "tenant-streams".into(),
            key: "h:acme".into()
        }
    );
    // Long values are hashed exactly as the filter hashes them.
    let long = "x".repeat(100);
    let (_, target) = config
        .target(&descriptor(&[("tenant", &long)]))
        .expect("tenant");
    assert!(
        target.key.starts_with("h:#") && target.key.len() == 35,
        "{target:?}"
    );
    let (_, target) = config
        .target(&descriptor(&[("remote_address", "10.0.0.1")]))
        .expect("address");
    assert_eq!(target.key, "a:10.0.0.1");
    let (_, target) = config
        .target(&descriptor(&[("route", "anything")]))
        .expect("route");
    assert_eq!(target.key, "route");
    assert!(config.target(&descriptor(&[("other", "x")])).is_none());
    assert!(config.target(&descriptor(&[])).is_none());
    assert!(config
        .target(&descriptor(&[("tenant", "a"), ("route", "b")]))
        .is_none());
}

#[test]
fn bad_configs_name_the_value() {
    for (text, message) in [
        (
            r#"{"domain": "", "descriptors": []}"#,
            "rls.json: domain: must not be empty",
        ),
        (
            r#"{"domain": "d"}"#,
            "rls.json: missing field `descriptors`",
        ),
        (
            r#"{"domain": "d", "descriptors": [], "extra": 1}"#,
            "rls.json: unknown field `extra`",
        ),
        (
            r#"{"domain": "d", "descriptors": [
                {"key": "t", "policy": "p", "spec": {"newStreamsPerSecond": 1, "burst": 1}},
                {"key": "t", "policy": "q", "spec": {"newStreamsPerSecond": 1, "burst": 1}}]}"#,
            "rls.json: descriptors[1].key: 't' is listed twice",
        ),
        (
            r#"{"domain": "d", "descriptors": [{"key": "t", "policy": "p", "spec": {"burst": 0}}]}"#,
            "rls.json: descriptors[0]: ",
        ),
        (
            r#"{"domain": "d", "descriptors": [{"key": "t", "policy": "bad name", "spec": {}}]}"#,
            "'bad name' is not a valid name",
        ),
    ] {
        let error = RlsConfig::parse("rls.json", text.as_bytes()).expect_err(message);
        assert!(error.to_string().contains(message), "{text}: {error}");
        assert!(
            error.to_string().starts_with("--rls-config rls.json: "),
            "{error}"
        );
    }
}

#[test]
fn rates_in_envoys_units() {
    for (rate_milli, per_unit, unit) in [
        (5_000, 5, Unit::Second),
        (500, 30, Unit::Minute),
        (1, 87, Unit::Day),
        (1_000_000_000, 1_000_000, Unit::Second),
        (1_200, 72, Unit::Minute),
        (7, 605, Unit::Day),
        (250, 15, Unit::Minute),
        (10, 36, Unit::Hour),
    ] {
        let limit = rate_limit("p", rate_milli);
        assert_eq!(limit.requests_per_unit, per_unit, "{rate_milli}");
        assert_eq!(limit.unit, i32::from(unit), "{rate_milli}");
        assert_eq!(limit.name, "p");
    }
    assert_eq!(
        duration(2_500),
        pb::Duration {
            seconds: 2,
            nanos: 500_000_000
        }
    );
}
