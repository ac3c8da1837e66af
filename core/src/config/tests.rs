use super::*;
use serde_json::json;

fn err(kind: Kind, name: &str, spec: serde_json::Value) -> ConfigError {
    match parse_spec_value(kind, name, spec) {
        Err(e) => e,
        Ok(item) => panic!("accepted: {item:?}"),
    }
}

fn fields(e: &ConfigError) -> Vec<&str> {
    e.problems.iter().map(|p| p.field.as_str()).collect()
}

/// Compares numbers by value (`1` and `1.0` alike).
fn numbers_as_f64(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Number(n) => json!(n.as_f64()),
        Value::Array(a) => Value::Array(a.into_iter().map(numbers_as_f64).collect()),
        Value::Object(o) => {
            Value::Object(o.into_iter().map(|(k, v)| (k, numbers_as_f64(v))).collect())
        }
        other => other,
    }
}

fn release_spec() -> serde_json::Value {
    json!({
        "match": { "hosts": ["*"], "pathPrefixes": ["/"] },
        "priority": 0,
        "tagHeader": "x-sidestream-group",
        "groups": ["stable", "canary"],
        "defaultGroup": "stable",
        "trustClientTag": false,
        "rules": [
            { "type": "header", "name": "x-env-tag", "equals": "canary", "group": "canary" },
            { "type": "header", "name": "x-env-tag", "in": ["canary", "beta"], "group": "canary" },
            { "type": "cookie", "name": "sidestream-grey", "equals": "1", "group": "canary" },
            { "type": "tenant", "header": "x-tenant-id", "tenants": ["acme"], "group": "canary" },
            { "type": "percent", "percent": 10, "by": { "source": "header", "name": "x-user-id" }, "group": "canary" }
        ],
        "sticky": { "cookie": "sidestream-group", "maxAgeSeconds": 86400 }
    })
}

fn limit_spec() -> serde_json::Value {
    json!({
        "match": { "hosts": ["*"], "pathPrefixes": ["/"] },
        "priority": 0,
        "streamKinds": ["sse", "websocket"],
        "key": { "source": "header", "name": "x-tenant-id" },
        "newStreamsPerSecond": 5, "burst": 5, "maxConcurrent": 20,
        "failMode": "open",
        "scope": "envoy"
    })
}

fn mesh_limit_spec() -> serde_json::Value {
    let mut spec = limit_spec();
    spec["scope"] = json!("mesh");
    spec["mesh"] = json!({ "fallback": "refuse", "timeoutMs": 80 });
    spec
}

#[test]
fn contract_examples_parse() {
    let trace = json!({ "enabled": true, "sampleRatio": 1.0, "requestIdHeader": "x-request-id",
        "b3": { "accept": false, "emit": false }, "responseHeader": "x-trace-id" });
    let topic = json!({ "historySize": 1000, "historyMaxAgeSeconds": 3600, "maxMessageBytes": 65536,
        "publishKeys": [], "subscribeAuth": "token", "revokedSubjects": ["mallory"],
        "revokedTokenIds": ["0f1e2d3c"] });
    for (kind, name, spec) in [
        (Kind::Trace, "default", trace),
        (Kind::Release, "push", release_spec()),
        (Kind::StreamLimit, "tenant-streams", limit_spec()),
        (Kind::StreamLimit, "mesh-streams", mesh_limit_spec()),
        (Kind::Topic, "ticker", topic),
    ] {
        let item =
            parse_spec_value(kind, name, spec.clone()).unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(item.kind(), kind);
        // the canonical spec of a fully written spec is the spec itself
        assert_eq!(
            numbers_as_f64(item.to_spec()),
            numbers_as_f64(spec),
            "{kind}"
        );
        let again = parse_spec(kind, name, &serde_json::to_vec(&item.to_spec()).unwrap()).unwrap();
        assert_eq!(again, item);
    }
}

#[test]
fn defaults_are_filled_in() {
    let Item::Trace(t) = parse_spec(Kind::Trace, "", b"{}").unwrap() else {
        panic!()
    };
    assert_eq!(t, TraceSettings::default());
    assert_eq!(t.request_id_header.as_deref(), Some("x-request-id"));
    let Item::Trace(t) = parse_spec(Kind::Trace, "", br#"{"requestIdHeader": null}"#).unwrap()
    else {
        panic!()
    };
    assert_eq!(t.request_id_header, None);

    let item = parse_spec_value(
        Kind::Release,
        "min",
        json!({ "groups": ["stable"], "defaultGroup": "stable" }),
    )
    .unwrap();
    assert_eq!(
        item.to_spec(),
        json!({
            "match": { "hosts": ["*"], "pathPrefixes": ["/"] },
            "priority": 0,
            "tagHeader": "x-sidestream-group",
            "groups": ["stable"],
            "defaultGroup": "stable",
            "trustClientTag": false,
            "rules": []
        })
    );
    let item = parse_spec_value(
        Kind::StreamLimit,
        "min",
        json!({ "newStreamsPerSecond": 2.5, "burst": 1 }),
    )
    .unwrap();
    let Item::StreamLimit(p) = &item else {
        panic!()
    };
    assert_eq!(p.rate_milli, 2500);
    assert_eq!(p.key, LimitKey::ClientAddress);
    assert_eq!(p.stream_kinds.len(), 3);
    assert_eq!(p.fail_mode, FailMode::Open);
    let Item::Topic(t) = parse_spec(Kind::Topic, "t", b"{}").unwrap() else {
        panic!()
    };
    assert_eq!(t, TopicSettings::defaults("t"));
}

#[test]
fn error_names_subject_field_and_value() {
    let mut spec = release_spec();
    spec["rules"][1] = json!({ "type": "percent", "percent": 140, "by": { "source": "traceId" }, "group": "canary" });
    let e = err(Kind::Release, "checkout", spec);
    assert_eq!(
        e.to_string(),
        "release policy 'checkout': rules[1].percent: 140 is above 100"
    );
}

#[test]
fn every_problem_is_reported() {
    let spec = json!({
        "match": { "hosts": ["bad host"], "pathPrefixes": ["nope"] },
        "tagHeader": "bad header",
        "groups": ["stable", "stable", "-x"],
        "defaultGroup": "blue",
        "rules": [
            { "type": "header", "name": "x-a", "group": "stable" },
            { "type": "header", "name": "x-a", "equals": "1", "in": ["2"], "group": "stable" },
            { "type": "percent", "percent": 12.345, "by": { "source": "cookie", "name": "c" }, "group": "green" },
            { "type": "tenant", "header": "x-t", "tenants": [], "group": "stable" }
        ],
        "sticky": { "maxAgeSeconds": 0 }
    });
    let e = err(Kind::Release, "many", spec);
    assert_eq!(
        fields(&e),
        [
            "match.hosts[0]",
            "match.pathPrefixes[0]",
            "tagHeader",
            "groups[1]",
            "groups[2]",
            "defaultGroup",
            "rules[0]",
            "rules[1]",
            "rules[2].percent",
            "rules[2].group",
            "rules[3].tenants",
            "sticky.maxAgeSeconds",
        ],
        "{e}"
    );
    let text = e.to_string();
    assert!(
        text.starts_with("release policy 'many': 12 problems: "),
        "{text}"
    );
    assert!(
        text.contains("defaultGroup: 'blue' is not in groups"),
        "{text}"
    );
    assert!(
        text.contains("rules[2].percent: 12.345 has more than 2 decimals"),
        "{text}"
    );

    let e = err(
        Kind::StreamLimit,
        "l",
        json!({ "streamKinds": [], "newStreamsPerSecond": 0.0001, "burst": 0, "maxConcurrent": 0,
                "key": { "source": "header", "name": "" } }),
    );
    assert_eq!(
        fields(&e),
        [
            "streamKinds",
            "key.name",
            "newStreamsPerSecond",
            "burst",
            "maxConcurrent"
        ],
        "{e}"
    );
    let e = err(
        Kind::StreamLimit,
        "l",
        json!({ "newStreamsPerSecond": 2e6, "burst": 1 }),
    );
    assert_eq!(
        e.to_string(),
        "stream limit policy 'l': newStreamsPerSecond: 2000000 is above 1000000"
    );

    let e = err(
        Kind::Topic,
        "t",
        json!({ "historySize": 2000000, "historyMaxAgeSeconds": 0, "maxMessageBytes": 0, "publishKeys": ["short"] }),
    );
    assert_eq!(
        fields(&e),
        [
            "historySize",
            "historyMaxAgeSeconds",
            "maxMessageBytes",
            "publishKeys[0]"
        ]
    );
    let long = "x".repeat(257);
    let e = err(
        Kind::Topic,
        "t",
        json!({ "revokedSubjects": ["alice", "", "alice", long], "revokedTokenIds": ["a\nb"] }),
    );
    assert_eq!(
        e.to_string(),
        "topic 't': 4 problems: revokedSubjects[1]: must be 1..=256 bytes, not 0; revokedSubjects[2]: 'alice' is listed twice; revokedSubjects[3]: must be 1..=256 bytes, not 257; revokedTokenIds[0]: \"a\\nb\" holds a control character"
    );
    let too_many: Vec<String> = (0..=MAX_REVOKED).map(|i| format!("s{i}")).collect();
    let e = err(Kind::Topic, "t", json!({ "revokedTokenIds": too_many }));
    assert_eq!(
        e.to_string(),
        "topic 't': revokedTokenIds: 10001 entries is above 10000"
    );
    let e = err(
        Kind::Trace,
        "",
        json!({ "sampleRatio": 1.5, "requestIdHeader": "traceparent" }),
    );
    assert_eq!(fields(&e), ["sampleRatio", "requestIdHeader"]);
    assert_eq!(e.subject, "trace settings");
}

#[test]
fn typos_and_types_are_caught_with_their_path() {
    let mut spec = release_spec();
    spec["defaultGroupp"] = json!("stable");
    let e = err(Kind::Release, "typo", spec);
    assert_eq!(fields(&e), ["defaultGroupp"]);
    assert!(
        e.to_string().contains("unknown field `defaultGroupp`"),
        "{e}"
    );

    let mut spec = release_spec();
    spec["rules"][2]["equal"] = json!("1");
    let e = err(Kind::Release, "typo", spec);
    assert_eq!(fields(&e), ["rules[2].equal"], "{e}");
    assert!(e.to_string().contains("unknown field `equal`"), "{e}");

    let mut spec = release_spec();
    spec["rules"][4]["by"] = json!({ "source": "query", "name": "u" });
    let e = err(Kind::Release, "typo", spec);
    assert_eq!(fields(&e), ["rules[4].by.source"], "{e}");
    assert!(e.to_string().contains("unknown variant `query`"), "{e}");

    // every bad rule is reported, with problems elsewhere
    let mut spec = release_spec();
    spec["rules"][0]["group"] = json!(7);
    spec["rules"][3] = json!({ "type": "tenants", "header": "x" });
    spec["rules"][4]["percent"] = json!("ten");
    spec["prioriti"] = json!(1);
    let e = err(Kind::Release, "typo", spec);
    assert_eq!(
        fields(&e),
        [
            "prioriti",
            "rules[0].group",
            "rules[3].type",
            "rules[4].percent"
        ],
        "{e}"
    );

    let mut spec = limit_spec();
    spec["burst"] = json!("five");
    let e = err(Kind::StreamLimit, "types", spec);
    assert_eq!(fields(&e), ["burst"], "{e}");

    let e = err(Kind::Trace, "", json!({ "b3": { "acept": true } }));
    assert_eq!(fields(&e), ["b3.acept"], "{e}");

    let e = parse_spec(Kind::Topic, "t", b"{not json").unwrap_err();
    assert!(e.to_string().starts_with("topic 't': invalid JSON"), "{e}");
}

#[test]
fn names_are_checked() {
    assert!(valid_name("push"));
    assert!(valid_name("a.b_c-9"));
    assert!(valid_name(&"a".repeat(128)));
    assert!(!valid_name(&"a".repeat(129)));
    assert!(!valid_name("-push"));
    assert!(!valid_name("a/b"));
    assert!(!valid_name(""));
    let e = err(Kind::Release, "bad name", release_spec());
    assert_eq!(fields(&e), ["name"]);
    assert!(parse_spec(Kind::Trace, "other", b"{}").is_err());
    assert!(parse_spec(Kind::Trace, "default", b"{}").is_ok());
}

#[test]
fn kinds_and_keys() {
    for kind in Kind::ALL {
        assert_eq!(Kind::parse(kind.document_kind()), Some(kind));
        assert_eq!(Kind::parse(kind.key_segment()), Some(kind));
        let key = key_for(kind, "x1");
        let name = if kind.is_singleton() {
            TRACE_NAME
        } else {
            "x1"
        };
        assert_eq!(classify_key(&key), Ok((kind, name.to_owned())));
    }
    for (alias, kind) in [
        ("trace", Kind::Trace),
        ("release", Kind::Release),
        ("releases", Kind::Release),
        ("ReleasePolicy", Kind::Release),
        ("stream-limit", Kind::StreamLimit),
        ("stream-limits", Kind::StreamLimit),
        ("StreamLimitPolicy", Kind::StreamLimit),
        ("topic", Kind::Topic),
        ("topics", Kind::Topic),
        ("TopicSettings", Kind::Topic),
    ] {
        assert_eq!(Kind::parse(alias), Some(kind), "{alias}");
    }
    assert_eq!(Kind::parse("policy"), None);
    assert_eq!(key_for(Kind::Release, "push"), "v1/releases/push");
    assert_eq!(key_for(Kind::Trace, "ignored"), "v1/trace");
    assert_eq!(key_for(Kind::StreamLimit, "s"), "v1/stream-limits/s");
    assert_eq!(key_for(Kind::Topic, "t"), "v1/topics/t");
    assert_eq!(
        classify_key("/v1/releases/push"),
        Ok((Kind::Release, "push".to_owned()))
    );
    assert!(matches!(
        classify_key("v2/releases/push"),
        Err(KeyError::NotConfig(_))
    ));
    assert!(matches!(
        classify_key("v1/other/x"),
        Err(KeyError::UnknownKind(_))
    ));
    assert!(matches!(
        classify_key("v1/releases"),
        Err(KeyError::UnknownKind(_))
    ));
    assert!(matches!(
        classify_key("v1/trace/x"),
        Err(KeyError::UnknownKind(_))
    ));
    assert!(matches!(
        classify_key("v1/releases/a/b"),
        Err(KeyError::InvalidName { .. })
    ));
    assert!(matches!(
        classify_key("v1/topics/"),
        Err(KeyError::InvalidName { .. })
    ));
}

fn sample_snapshot() -> Snapshot {
    let json = json!({
        "trace": { "sampleRatio": 0.5, "b3": { "accept": true } },
        "releases": {
            "z-low": { "groups": ["stable"], "defaultGroup": "stable" },
            "push": release_spec(),
            "a-high": { "priority": 7, "groups": ["stable"], "defaultGroup": "stable" }
        },
        "streamLimits": { "tenant-streams": limit_spec() },
        "topics": { "ticker": { "historySize": 10 } }
    });
    Snapshot::from_json(&serde_json::to_vec(&json).unwrap()).unwrap()
}

#[test]
fn snapshot_round_trip_is_canonical() {
    let s = sample_snapshot();
    let names: Vec<&str> = s.releases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["a-high", "push", "z-low"],
        "priority desc, name asc"
    );
    let bytes = s.to_json();
    let again = Snapshot::from_json(&bytes).unwrap();
    assert_eq!(again, s);
    assert_eq!(again.to_json(), bytes);
    // built from items in another order: same bytes
    let mut items = s.items();
    items.reverse();
    assert_eq!(Snapshot::from_items(items).to_json(), bytes);
    assert_eq!(Snapshot::from_json(b"{}").unwrap(), Snapshot::default());
    assert_eq!(
        Snapshot::from_json(br#"{"trace": null}"#).unwrap(),
        Snapshot::default()
    );
}

/// Found by the `etcd_value` fuzz target: a number written with more digits
/// than an f64 holds, read by serde_json's fast float parser, came back from
/// the snapshot JSON one unit in the last place off, so the data planes got a
/// value the control plane never validated.
#[test]
#[allow(clippy::excessive_precision)] // the literal is the fuzzer's input text, digits and all
fn numbers_survive_the_snapshot_json_exactly() {
    let spec = br#"{"sampleRatio":0.11844674407370955166165}"#;
    let item = parse_spec(Kind::Trace, TRACE_NAME, spec).unwrap();
    let snapshot = Snapshot::from_items([item]);
    assert_eq!(snapshot.trace.sample_ratio, 0.11844674407370955166165_f64);
    assert_eq!(Snapshot::from_json(&snapshot.to_json()).unwrap(), snapshot);
    for text in [
        "0.1",
        "1e-300",
        "0.30000000000000004",
        "2.2250738585072011e-308",
    ] {
        let value: f64 = text.parse().unwrap();
        let parsed: f64 = serde_json::from_str(text).unwrap();
        assert_eq!(parsed.to_bits(), value.to_bits(), "{text}");
        let written = serde_json::to_string(&value).unwrap();
        let again: f64 = serde_json::from_str(&written).unwrap();
        assert_eq!(
            again.to_bits(),
            value.to_bits(),
            "{text} written as {written}"
        );
    }
}

#[test]
fn snapshot_reports_every_bad_object() {
    let json = json!({
        "releases": {
            "ok": { "groups": ["stable"], "defaultGroup": "stable" },
            "bad": { "groups": ["stable"], "defaultGroup": "blue" }
        },
        "streamLimits": { "also-bad": { "newStreamsPerSecond": 1, "burst": 0 } },
        "topics": { "bad name": {} }
    });
    let e = Snapshot::from_json(&serde_json::to_vec(&json).unwrap()).unwrap_err();
    assert_eq!(e.subject, "snapshot");
    assert_eq!(
        fields(&e),
        [
            "releases.bad.defaultGroup",
            "streamLimits.also-bad.burst",
            "topics.bad name.name"
        ],
        "{e}"
    );
    let e = Snapshot::from_json(br#"{"releasez": {}}"#).unwrap_err();
    assert_eq!(fields(&e), ["releasez"]);
}

#[test]
fn snapshot_only_keeps_kinds() {
    let s = sample_snapshot();
    let filter = s.only(&[Kind::Trace, Kind::Release, Kind::StreamLimit]);
    assert!(filter.topics.is_empty());
    assert_eq!(filter.releases.len(), 3);
    assert_eq!(filter.trace, s.trace);
    let push = s.only(&[Kind::Topic]);
    assert_eq!(push.topics.len(), 1);
    assert!(push.releases.is_empty() && push.stream_limits.is_empty());
    assert_eq!(push.trace, TraceSettings::default());
}

#[test]
fn mesh_scope_is_validated() {
    let parse = |spec: serde_json::Value| parse_spec_value(Kind::StreamLimit, "m", spec);
    let Item::StreamLimit(p) = parse(mesh_limit_spec()).unwrap() else {
        panic!()
    };
    assert_eq!(p.scope(), LimitScope::Mesh);
    assert_eq!(
        p.mesh,
        Some(MeshSettings {
            fallback: MeshFallback::Refuse,
            timeout: std::time::Duration::from_millis(80)
        })
    );
    // `scope: mesh` alone takes the defaults, written out in the canonical form.
    let item = parse(json!({ "newStreamsPerSecond": 1, "burst": 1, "scope": "mesh" })).unwrap();
    let Item::StreamLimit(p) = &item else {
        panic!()
    };
    assert_eq!(
        p.mesh,
        Some(MeshSettings {
            fallback: MeshFallback::Local,
            timeout: std::time::Duration::from_millis(DEFAULT_MESH_TIMEOUT_MS)
        })
    );
    assert_eq!(
        item.to_spec()["mesh"],
        json!({ "fallback": "local", "timeoutMs": 50 })
    );
    // The default scope is envoy, with no mesh settings.
    let Item::StreamLimit(p) = parse(json!({ "newStreamsPerSecond": 1, "burst": 1 })).unwrap()
    else {
        panic!()
    };
    assert_eq!((p.scope(), p.mesh), (LimitScope::Envoy, None));

    let e = parse(json!({ "newStreamsPerSecond": 1, "burst": 1,
                          "mesh": { "fallback": "admit" } }))
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "stream limit policy 'm': mesh: mesh settings need scope: mesh (this policy's scope is envoy)"
    );
    for timeout in [0, 5001] {
        let e = parse(
            json!({ "newStreamsPerSecond": 1, "burst": 1, "scope": "mesh",
                              "mesh": { "timeoutMs": timeout } }),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "stream limit policy 'm': mesh.timeoutMs: {timeout} is not within 1..=5000 milliseconds"
            )
        );
    }
    let e = parse(json!({ "newStreamsPerSecond": 1, "burst": 1, "scope": "global" })).unwrap_err();
    assert_eq!(fields(&e), ["scope"], "{e}");
    assert!(e.to_string().contains("global"), "{e}");
    let e = parse(
        json!({ "newStreamsPerSecond": 1, "burst": 1, "scope": "mesh",
                          "mesh": { "fallback": "open" } }),
    )
    .unwrap_err();
    assert_eq!(fields(&e), ["mesh.fallback"], "{e}");
    let e = parse(
        json!({ "newStreamsPerSecond": 1, "burst": 1, "scope": "mesh",
                          "mesh": { "timeout": "50ms" } }),
    )
    .unwrap_err();
    assert_eq!(fields(&e), ["mesh.timeout"], "{e}");
}

#[test]
fn bootstrap_names_the_limiter() {
    let mesh_defaults = json!({ "streamLimits": { "tenant-streams": mesh_limit_spec() } });
    let json = json!({
        "limiter": { "cluster": "sidestream-limiter" },
        "defaults": mesh_defaults
    });
    let b = FilterBootstrap::from_json(&serde_json::to_vec(&json).unwrap()).unwrap();
    assert_eq!(
        b.limiter,
        Some(LimiterSettings {
            cluster: "sidestream-limiter".to_owned()
        })
    );
    let again = FilterBootstrap::from_json(&serde_json::to_vec(&b.to_raw()).unwrap()).unwrap();
    assert_eq!(again, b);
    // Embedded mesh-scoped defaults without a limiter could only fall back.
    let e = FilterBootstrap::from_json(
        &serde_json::to_vec(&json!({ "defaults": mesh_defaults })).unwrap(),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "filter bootstrap: defaults.streamLimits.tenant-streams.scope: mesh needs the limiter's \
         cluster (limiter.cluster); without it the policy could only ever apply its fallback"
    );
    let e = FilterBootstrap::from_json(br#"{"limiter": {"cluster": "two words"}}"#).unwrap_err();
    assert_eq!(
        e.to_string(),
        "filter bootstrap: limiter.cluster: 'two words' is not a cluster name"
    );
    let e = FilterBootstrap::from_json(br#"{"limiter": {}}"#).unwrap_err();
    assert_eq!(fields(&e), ["limiter"], "{e}");
}

#[test]
fn bootstrap_parses() {
    let json = json!({
        "nodeId": "ingress",
        "controlPlane": { "cluster": "sidestream-control-plane" },
        "failMode": "closed",
        "defaults": { "releases": { "push": release_spec() } }
    });
    let b = FilterBootstrap::from_json(&serde_json::to_vec(&json).unwrap()).unwrap();
    assert_eq!(b.node_id, "ingress");
    assert_eq!(b.fail_mode, FailMode::Closed);
    let cp = b.control_plane.as_ref().unwrap();
    assert_eq!(cp.cluster, "sidestream-control-plane");
    assert_eq!(cp.timeout, std::time::Duration::ZERO);
    assert_eq!(cp.initial_backoff, std::time::Duration::from_millis(250));
    assert_eq!(cp.max_backoff, std::time::Duration::from_millis(30_000));
    assert_eq!(b.defaults.releases.len(), 1);
    let again = FilterBootstrap::from_json(&serde_json::to_vec(&b.to_raw()).unwrap()).unwrap();
    assert_eq!(again, b);

    let empty = FilterBootstrap::from_json(b"  ").unwrap();
    assert_eq!(empty.control_plane, None);
    assert_eq!(empty.defaults, Snapshot::default());

    let bad = json!({
        "nodeId": "",
        "controlPlane": { "cluster": "cp", "initialBackoffMs": 0 },
        "defaults": { "releases": { "push": { "groups": [], "defaultGroup": "x" } } }
    });
    let e = FilterBootstrap::from_json(&serde_json::to_vec(&bad).unwrap()).unwrap_err();
    assert_eq!(e.subject, "filter bootstrap");
    assert_eq!(
        fields(&e),
        [
            "nodeId",
            "controlPlane.initialBackoffMs",
            "defaults.releases.push.groups",
            "defaults.releases.push.defaultGroup"
        ],
        "{e}"
    );
    let e = FilterBootstrap::from_json(br#"{"controlplane": {}}"#).unwrap_err();
    assert_eq!(fields(&e), ["controlplane"]);
}

#[test]
fn documents() {
    let one = json!({ "kind": "ReleasePolicy", "name": "push", "spec": release_spec() });
    let docs = documents_from_value(one).unwrap();
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0].kind, Kind::Release);
    assert_eq!(docs[0].key(), "v1/releases/push");
    assert!(docs[0].validate().is_ok());

    let list = json!([
        { "kind": "TraceSettings", "spec": {} },
        { "kind": "TopicSettings", "name": "ticker", "spec": { "historySize": 5 } }
    ]);
    let docs = documents_from_value(list).unwrap();
    assert_eq!(docs[0].name, "default");
    assert_eq!(docs[1].kind, Kind::Topic);

    let bad = json!([
        { "kind": "Nope", "name": "x", "spec": {} },
        { "kind": "ReleasePolicy", "spec": {} },
        { "kind": "ReleasePolicy", "name": "bad/name", "spec": {} },
        { "kind": "TopicSettings", "name": "t", "spec": [] , "extra": 1 },
        "text"
    ]);
    let e = documents_from_value(bad).unwrap_err();
    assert_eq!(
        fields(&e),
        [
            "[0].kind",
            "[1].name",
            "[2].name",
            "[3].extra",
            "[3].spec",
            "[4]"
        ],
        "{e}"
    );
    // spec problems come from validate()
    let docs = documents_from_value(
        json!({ "kind": "topic", "name": "t", "spec": { "historySize": -1 } }),
    )
    .unwrap();
    assert_eq!(fields(&docs[0].validate().unwrap_err()), ["historySize"]);
}

#[test]
fn schemas_describe_the_raw_types() {
    let release = schema::for_kind(Kind::Release);
    assert_eq!(release["type"], "object");
    assert_eq!(release["additionalProperties"], false);
    let props = release["properties"].as_object().unwrap();
    for field in [
        "match",
        "priority",
        "tagHeader",
        "groups",
        "defaultGroup",
        "trustClientTag",
        "rules",
        "sticky",
    ] {
        assert!(props.contains_key(field), "{field}");
    }
    let required: Vec<&str> = release["required"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(required, ["groups", "defaultGroup"]);
    assert_eq!(
        schema::for_kind(Kind::Trace)["properties"]["sampleRatio"]["default"],
        1.0
    );
    assert!(schema::snapshot()["properties"]["streamLimits"].is_object());
    assert!(schema::bootstrap()["properties"]["controlPlane"].is_object());
    assert!(schema::document().get("anyOf").is_some());
}

#[test]
fn fixed_point_accepts_every_decimal_and_nothing_finer() {
    // Every 2-decimal percent and every 3-decimal rate, read from JSON text
    // as the parser reads it, comes out exact.
    for bp in 0..=10_000u64 {
        let text = format!("{}.{:02}", bp / 100, bp % 100);
        let value: f64 = serde_json::from_str(&text).unwrap();
        assert_eq!(check::fixed_point(value, 2), Some(bp), "{text}");
    }
    for milli in (1..=2_000_000u64).chain((0..2_000u64).map(|i| 1_000_000_000 - i * 7_777)) {
        let text = format!("{}.{:03}", milli / 1000, milli % 1000);
        let value: f64 = serde_json::from_str(&text).unwrap();
        assert_eq!(check::fixed_point(value, 3), Some(milli), "{text}");
    }
    for (value, decimals) in [
        (10.000001, 2),
        (12.345, 2),
        (0.001, 2),
        (99.999, 2),
        (0.0001, 3),
        (2.0005, 3),
        (999_999.999_5, 3),
        (-1.0, 2),
        (f64::NAN, 2),
        (f64::INFINITY, 3),
    ] {
        assert_eq!(check::fixed_point(value, decimals), None, "{value}");
    }
    let e = err(
        Kind::Release,
        "fine",
        json!({ "groups": ["a"], "defaultGroup": "a",
                "rules": [ { "type": "percent", "percent": 10.000001, "by": { "source": "traceId" }, "group": "a" } ] }),
    );
    assert_eq!(
        e.to_string(),
        "release policy 'fine': rules[0].percent: 10.000001 has more than 2 decimals"
    );
    let e = err(
        Kind::Release,
        "lists",
        json!({ "groups": ["a"], "defaultGroup": "a",
                "rules": [ { "type": "header", "name": "x", "in": [], "group": "a" },
                           { "type": "tenant", "header": "x", "tenants": [], "group": "a" } ] }),
    );
    assert_eq!(
        e.to_string(),
        "release policy 'lists': 2 problems: rules[0].in: must list 1..=1024 values, found 0; \
         rules[1].tenants: must list 1..=1024 tenants, found 0"
    );
}

#[test]
fn tag_header_must_be_a_lowercase_unreserved_header_name() {
    let with_tag = |tag: &str| {
        let mut spec = release_spec();
        spec["tagHeader"] = json!(tag);
        parse_spec_value(Kind::Release, "p", spec)
    };
    for good in ["x-sidestream-group", "x-grp", "grp_1", "x.y~z!#$%&'*+^`|"] {
        assert!(with_tag(good).is_ok(), "{good}");
    }
    for (bad, message) in [
        (
            "X-Sidestream-Group",
            "'X-Sidestream-Group' is not lowercase; header names are compared in lowercase, \
             write 'x-sidestream-group'",
        ),
        (
            ":authority",
            "':authority' is a pseudo-header; name a regular request header",
        ),
        (
            ":path",
            "':path' is a pseudo-header; name a regular request header",
        ),
        (
            "x group",
            "'x group' is not a valid header name (a token of at most 128 characters)",
        ),
        (
            "",
            "'' is not a valid header name (a token of at most 128 characters)",
        ),
        (
            "x-grüppe",
            "'x-grüppe' is not a valid header name (a token of at most 128 characters)",
        ),
        (
            "x-g\"",
            "'x-g\"' is not a valid header name (a token of at most 128 characters)",
        ),
    ] {
        let e = with_tag(bad).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("release policy 'p': tagHeader: {message}")
        );
    }
    for reserved in check::RESERVED_TAG_HEADERS {
        let e = with_tag(reserved).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "release policy 'p': tagHeader: '{reserved}' is reserved (Envoy, the upstream \
                 or tracing rely on it); choose another tag header"
            )
        );
    }
    assert_eq!(check::RESERVED_TAG_HEADERS.len(), 12);
    // In uppercase a reserved name is reported once, as not lowercase.
    let e = with_tag("Host").unwrap_err();
    assert_eq!(fields(&e), ["tagHeader"]);
    assert!(e.to_string().contains("write 'host'"), "{e}");
}

#[test]
fn rule_and_key_header_names_must_be_lowercase_header_names() {
    let mut spec = release_spec();
    spec["rules"][0]["name"] = json!("X-Env-Tag");
    spec["rules"][1]["name"] = json!(":path");
    spec["rules"][3]["header"] = json!("X-Tenant-Id");
    spec["rules"][4]["by"]["name"] = json!("x user");
    // Cookie names are exact tokens: case is kept.
    spec["rules"][2]["name"] = json!("Sidestream-Grey");
    let e = err(Kind::Release, "rules", spec);
    assert_eq!(
        e.to_string(),
        "release policy 'rules': 4 problems: \
         rules[0].name: 'X-Env-Tag' is not lowercase; header names are compared in lowercase, \
         write 'x-env-tag'; \
         rules[1].name: ':path' is a pseudo-header; name a regular request header; \
         rules[3].header: 'X-Tenant-Id' is not lowercase; header names are compared in \
         lowercase, write 'x-tenant-id'; \
         rules[4].by.name: 'x user' is not a valid header name (a token of at most 128 characters)"
    );
    // Rules may read headers the tag may not be written to.
    let mut spec = release_spec();
    spec["rules"][0]["name"] = json!("authorization");
    spec["rules"][3]["header"] = json!("host");
    assert!(parse_spec_value(Kind::Release, "ok", spec).is_ok());

    let limit = |name: &str| {
        parse_spec_value(
            Kind::StreamLimit,
            "l",
            json!({ "newStreamsPerSecond": 1, "burst": 1,
                    "key": { "source": "header", "name": name } }),
        )
    };
    assert!(limit("x-tenant-id").is_ok());
    assert_eq!(
        limit("X-Tenant-Id").unwrap_err().to_string(),
        "stream limit policy 'l': key.name: 'X-Tenant-Id' is not lowercase; header names are \
         compared in lowercase, write 'x-tenant-id'"
    );
    assert_eq!(
        limit(":authority").unwrap_err().to_string(),
        "stream limit policy 'l': key.name: ':authority' is a pseudo-header; name a regular \
         request header"
    );
}

#[test]
fn a_topic_refuses_revoked_subjects_and_token_ids() {
    let Item::Topic(topic) = parse_spec_value(
        Kind::Topic,
        "t",
        json!({ "subscribeAuth": "token", "revokedSubjects": ["mallory"], "revokedTokenIds": ["jti-7"] }),
    )
    .unwrap() else {
        panic!("a topic")
    };
    assert_eq!(topic.revokes(Some("mallory"), None), Some(Revoked::Subject));
    assert_eq!(
        topic.revokes(Some("alice"), Some("jti-7")),
        Some(Revoked::TokenId)
    );
    assert_eq!(
        topic
            .revokes(Some("mallory"), Some("jti-7"))
            .map(Revoked::field),
        Some("revokedSubjects")
    );
    assert_eq!(topic.revokes(Some("alice"), Some("jti-8")), None);
    assert_eq!(topic.revokes(None, None), None);
    assert_eq!(
        TopicSettings::defaults("t").revokes(Some("mallory"), None),
        None
    );
}
