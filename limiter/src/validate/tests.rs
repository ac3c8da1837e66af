use super::*;

fn acquire() -> pb::AcquireRequest {
    pb::AcquireRequest {
        instance: "node-1/envoy-1/vm-0/4f2a".into(),
        policy: "tenant-streams".into(),
        key: "h:acme".into(),
        limits: Some(pb::Limits {
            rate_milli: 5_000,
            burst: 10,
            max_concurrent: 20,
        }),
        policy_version: "42-abcdef".into(),
    }
}

#[test]
fn a_good_acquire_passes_unchanged() {
    let call = Acquire::try_from(&acquire()).expect("valid");
    assert_eq!(call.instance, "node-1/envoy-1/vm-0/4f2a");
    assert_eq!(
        call.target,
        Target {
            policy: "tenant-streams".into(),
            key: "h:acme".into()
        }
    );
    assert_eq!(
        call.limits,
        Limits {
            rate_milli: 5_000,
            burst: 10,
            max_concurrent: 20
        }
    );
}

#[test]
fn edges_of_the_ranges_pass() {
    for (rate_milli, burst, max_concurrent) in
        [(1, 1, 0), (MAX_RATE_MILLI, MAX_BURST, MAX_CONCURRENT)]
    {
        let mut request = acquire();
        request.limits = Some(pb::Limits {
            rate_milli,
            burst,
            max_concurrent,
        });
        request.policy = "a".repeat(MAX_POLICY_LEN);
        request.key = "k".repeat(MAX_KEY_LEN);
        request.instance = "i".repeat(MAX_INSTANCE_LEN);
        Acquire::try_from(&request).expect("edges are valid");
    }
    let mut request = acquire();
    request.key = String::new();
    request.policy = "A.z_0-9".into();
    Acquire::try_from(&request).expect("an empty key and every policy character class");
}

/// Each broken field is named, with what is wrong.
#[test]
fn bad_acquires_name_the_field_and_the_value() {
    type Edit = fn(&mut pb::AcquireRequest);
    let cases: &[(Edit, &str, &str)] = &[
        (|r| r.instance.clear(), "instance", "must not be empty"),
        (
            |r| r.instance = "x".repeat(513),
            "instance",
            "513 bytes, more than 512",
        ),
        (|r| r.policy.clear(), "policy", "must not be empty"),
        (
            |r| r.policy = "p".repeat(129),
            "policy",
            "is 129 bytes, more than 128",
        ),
        (
            |r| r.policy = "tenant streams".into(),
            "policy",
            "'tenant streams' has ' ' at byte 6",
        ),
        (
            |r| r.policy = "-tenant".into(),
            "policy",
            "'-tenant' has '-' at byte 0",
        ),
        (
            |r| r.policy = "a{b}".into(),
            "policy",
            "'a{b}' has '{' at byte 1",
        ),
        (
            |r| r.key = "k".repeat(257),
            "key",
            "257 bytes, more than 256",
        ),
        (
            |r| r.key = "a\u{7}b".into(),
            "key",
            "control character U+0007 at byte 1",
        ),
        (|r| r.limits = None, "limits", "missing"),
        (
            |r| {
                r.limits = Some(pb::Limits {
                    rate_milli: 0,
                    burst: 1,
                    max_concurrent: 0,
                })
            },
            "limits.rate_milli",
            "0 is outside 1..=1000000000",
        ),
        (
            |r| {
                r.limits = Some(pb::Limits {
                    rate_milli: 1_000_000_001,
                    burst: 1,
                    max_concurrent: 0,
                })
            },
            "limits.rate_milli",
            "1000000001 is outside",
        ),
        (
            |r| {
                r.limits = Some(pb::Limits {
                    rate_milli: 1,
                    burst: 0,
                    max_concurrent: 0,
                })
            },
            "limits.burst",
            "0 is outside 1..=1000000",
        ),
        (
            |r| {
                r.limits = Some(pb::Limits {
                    rate_milli: 1,
                    burst: 1_000_001,
                    max_concurrent: 0,
                })
            },
            "limits.burst",
            "1000001 is outside",
        ),
        (
            |r| {
                r.limits = Some(pb::Limits {
                    rate_milli: 1,
                    burst: 1,
                    max_concurrent: 1_000_001,
                })
            },
            "limits.max_concurrent",
            "1000001 is outside 0..=1000000",
        ),
        (
            |r| r.policy_version = "v\n1".into(),
            "policy_version",
            "control character U+000A",
        ),
    ];
    for (edit, field, problem) in cases {
        let mut request = acquire();
        edit(&mut request);
        let error = Acquire::try_from(&request).expect_err(field);
        assert_eq!(error.field, *field, "{error}");
        assert!(error.problem.contains(problem), "{field}: {error}");
        assert!(
            error.to_string().starts_with(&format!("{field}: ")),
            "{error}"
        );
    }
}

#[test]
fn a_long_bad_policy_name_is_shown_cut() {
    let mut request = acquire();
    request.policy = format!("{} x", "p".repeat(100));
    let error = Acquire::try_from(&request).expect_err("space");
    assert!(error.problem.contains("…'"), "{error}");
    assert!(error.problem.contains("at byte 100"), "{error}");
}

#[test]
fn release_checks_instance_policy_and_key() {
    let good = pb::ReleaseRequest {
        instance: "vm".into(),
        policy: "p".into(),
        key: "k".into(),
    };
    Release::try_from(&good).expect("valid");
    let mut bad = good.clone();
    bad.policy = "p/q".into();
    assert_eq!(Release::try_from(&bad).expect_err("slash").field, "policy");
    let mut bad = good;
    bad.instance.clear();
    assert_eq!(
        Release::try_from(&bad).expect_err("empty").field,
        "instance"
    );
}

fn holding(policy: &str, key: &str, open: u32) -> pb::Holding {
    pb::Holding {
        policy: policy.into(),
        key: key.into(),
        open,
    }
}

#[test]
fn sync_names_the_bad_holding() {
    let sync = Sync::try_from(&pb::SyncRequest {
        instance: "vm".into(),
        holdings: vec![
            holding("p", "a", 3),
            holding("p", "b", 0),
            holding("q", "a", 1),
        ],
    })
    .expect("valid");
    assert_eq!(sync.holdings.len(), 3);
    assert_eq!(sync.holdings[0].1, 3);

    let error = Sync::try_from(&pb::SyncRequest {
        instance: "vm".into(),
        holdings: vec![holding("p", "a", 3), holding("p", &"k".repeat(300), 1)],
    })
    .expect_err("long key");
    assert_eq!(error.field, "holdings[1].key");

    let error = Sync::try_from(&pb::SyncRequest {
        instance: "vm".into(),
        holdings: vec![holding("p", "a", 3), holding("", "a", 1)],
    })
    .expect_err("empty policy");
    assert_eq!(error.field, "holdings[1].policy");

    let error = Sync::try_from(&pb::SyncRequest {
        instance: "vm".into(),
        holdings: vec![holding("p", "a", MAX_CONCURRENT + 1)],
    })
    .expect_err("open");
    assert_eq!(error.field, "holdings[0].open");

    let error = Sync::try_from(&pb::SyncRequest {
        instance: "vm".into(),
        holdings: vec![
            holding("p", "a", 3),
            holding("p", "b", 1),
            holding("p", "a", 1),
        ],
    })
    .expect_err("duplicate");
    assert_eq!(error.field, "holdings[2]");
    assert!(error.problem.contains("also at holdings[0]"), "{error}");

    let error = Sync::try_from(&pb::SyncRequest {
        instance: "vm".into(),
        holdings: (0..=MAX_HOLDINGS)
            .map(|i| holding("p", &i.to_string(), 1))
            .collect(),
    })
    .expect_err("too many");
    assert_eq!(error.field, "holdings");
}
