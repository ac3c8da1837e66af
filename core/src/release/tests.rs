use super::*;
use crate::config::{parse_spec_value, Item, Kind};
use crate::HeaderList;
use serde_json::json;

fn policy(name: &str, spec: serde_json::Value) -> ReleasePolicy {
    match parse_spec_value(Kind::Release, name, spec) {
        Ok(Item::Release(p)) => p,
        other => panic!("not a release policy: {other:?}"),
    }
}

/// The standalone policy.
fn push_policy() -> ReleasePolicy {
    policy(
        "push",
        json!({
            "groups": ["stable", "canary"],
            "defaultGroup": "stable",
            "rules": [
                { "type": "header", "name": "x-env-tag", "equals": "canary", "group": "canary" },
                { "type": "cookie", "name": "sidestream-grey", "equals": "1", "group": "canary" },
                { "type": "percent", "percent": 10, "by": { "source": "header", "name": "x-user-id" }, "group": "canary" }
            ]
        }),
    )
}

type Headers<'a> = Vec<(&'a str, &'a str)>;

fn req(pairs: &[(&str, &str)]) -> HeaderList {
    HeaderList::from_pairs(pairs.iter().copied())
}

#[test]
fn rule_table() {
    let p = policy(
        "table",
        json!({
            "groups": ["stable", "canary", "beta", "tenants"],
            "defaultGroup": "stable",
            "rules": [
                { "type": "header", "name": "x-env-tag", "equals": "canary", "group": "canary" },
                { "type": "header", "name": "x-env-tag", "in": ["beta", "preview"], "group": "beta" },
                { "type": "cookie", "name": "grey", "equals": "1", "group": "canary" },
                { "type": "cookie", "name": "ring", "in": ["b", "c"], "group": "beta" },
                { "type": "tenant", "header": "x-tenant-id", "tenants": ["acme", "globex"], "group": "tenants" },
                { "type": "percent", "percent": 100, "by": { "source": "header", "name": "x-all" }, "group": "beta" },
                { "type": "percent", "percent": 0, "by": { "source": "traceId" }, "group": "canary" }
            ]
        }),
    );
    let cases: Vec<(Headers, &str, Reason)> = vec![
        (vec![], "stable", Reason::Default),
        (vec![("x-env-tag", "canary")], "canary", Reason::Rule(0)),
        (vec![("x-env-tag", "Canary")], "stable", Reason::Default),
        (vec![("x-env-tag", "beta")], "beta", Reason::Rule(1)),
        (vec![("x-env-tag", "preview")], "beta", Reason::Rule(1)),
        (vec![("x-env-tag", "other")], "stable", Reason::Default),
        (vec![("cookie", "a=b; grey=1")], "canary", Reason::Rule(2)),
        (vec![("cookie", "grey=0")], "stable", Reason::Default),
        (vec![("cookie", "ring=c")], "beta", Reason::Rule(3)),
        (vec![("x-tenant-id", "globex")], "tenants", Reason::Rule(4)),
        (vec![("x-tenant-id", "initech")], "stable", Reason::Default),
        // first matching rule wins
        (
            vec![("x-tenant-id", "acme"), ("x-env-tag", "canary")],
            "canary",
            Reason::Rule(0),
        ),
        (vec![("x-all", "anyone")], "beta", Reason::Rule(5)),
        // an empty percent source does not match
        (vec![("x-all", "")], "stable", Reason::Default),
    ];
    for (headers, group, reason) in cases {
        let d = p.decide(&req(&headers), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!((d.group, d.reason), (group, reason), "headers {headers:?}");
        assert_eq!(d.policy, "table");
        assert_eq!(d.tag_header, "x-sidestream-group");
        assert_eq!(d.set_cookie, None);
    }
}

#[test]
fn client_tag_is_stripped_unless_trusted() {
    let p = push_policy();
    let d = p.decide(&req(&[("x-sidestream-group", "canary")]), "");
    assert_eq!(d.group, "stable");
    assert!(d.stripped_client_tag);
    let d = p.decide(&req(&[]), "");
    assert!(!d.stripped_client_tag);

    let mut trusted = push_policy();
    trusted.trust_client_tag = true;
    let d = trusted.decide(&req(&[("x-sidestream-group", "canary")]), "");
    assert_eq!((d.group, d.reason), ("canary", Reason::ClientTag));
    assert!(!d.stripped_client_tag);
    // a trusted header naming an unknown group is stripped and rules apply
    let d = trusted.decide(
        &req(&[("x-sidestream-group", "evil"), ("x-env-tag", "canary")]),
        "",
    );
    assert_eq!((d.group, d.reason), ("canary", Reason::Rule(0)));
    assert!(d.stripped_client_tag);
}

#[test]
fn same_user_same_group() {
    let p = push_policy();
    for i in 0..2000 {
        let user = format!("user-{i}");
        let first = p.decide(&req(&[("x-user-id", &user)]), "aa").group;
        for trace in ["bb", "cc", "dd"] {
            assert_eq!(p.decide(&req(&[("x-user-id", &user)]), trace).group, first);
        }
    }
}

#[test]
fn percentages_hold_within_one_point() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    for percent in [1.0, 10.0, 12.5, 50.0, 99.99] {
        let p = policy(
            "pct",
            json!({
                "groups": ["stable", "canary"],
                "defaultGroup": "stable",
                "rules": [ { "type": "percent", "percent": percent, "by": { "source": "header", "name": "x-user-id" }, "group": "canary" } ]
            }),
        );
        let n = 100_000;
        let canary = (0..n)
            .filter(|_| {
                let user = format!("{:032x}", rng.random::<u128>());
                p.decide(&req(&[("x-user-id", &user)]), "").group == "canary"
            })
            .count();
        let share = canary as f64 * 100.0 / n as f64;
        assert!((share - percent).abs() <= 1.0, "{percent}%: got {share}%");
    }
}

#[test]
fn percent_by_cookie_and_trace_id() {
    let p = policy(
        "by",
        json!({
            "groups": ["stable", "canary"],
            "defaultGroup": "stable",
            "rules": [
                { "type": "percent", "percent": 100, "by": { "source": "cookie", "name": "uid" }, "group": "canary" }
            ]
        }),
    );
    assert_eq!(p.decide(&req(&[("cookie", "uid=7")]), "").group, "canary");
    assert_eq!(p.decide(&req(&[]), "").group, "stable");
    let t = policy(
        "trace",
        json!({
            "groups": ["stable", "canary"],
            "defaultGroup": "stable",
            "rules": [ { "type": "percent", "percent": 50, "by": { "source": "traceId" }, "group": "canary" } ]
        }),
    );
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let expected = if bucket("trace", trace) < 5000 {
        "canary"
    } else {
        "stable"
    };
    assert_eq!(t.decide(&req(&[]), trace).group, expected);
    assert_eq!(
        t.decide(&req(&[]), "").group,
        "stable",
        "no trace id: no draw"
    );
}

#[test]
fn bucket_is_stable_and_keyed_by_policy() {
    // The documented input: xxh3-64 of name, 0x00, value; changing it would move every user.
    assert_eq!(bucket("push", "alice"), bucket("push", "alice"));
    let moved = (0..100)
        .filter(|i| bucket("a", &i.to_string()) != bucket("b", &i.to_string()))
        .count();
    assert!(moved > 90, "different policies draw independently");
    assert_eq!(
        bucket("push", "alice"),
        u32::try_from(xxhash_rust::xxh3::xxh3_64(b"push\0alice") % 10_000).unwrap()
    );
    // Golden values: a change of hash (or of the xxh3 implementation) would
    // silently move users between groups on upgrade.
    assert_eq!(
        xxhash_rust::xxh3::xxh3_64(b"push\0alice"),
        0xb5b6_c07d_133f_565c
    );
    assert_eq!(
        [
            bucket("push", "alice"),
            bucket("push", "bob"),
            bucket("checkout", "4bf92f3577b34da6a3ce929d0e0e4736"),
        ],
        [8780, 3493, 2366]
    );
}

#[test]
fn sticky_cookie() {
    let p = policy(
        "sticky",
        json!({
            "groups": ["stable", "canary"],
            "defaultGroup": "stable",
            "rules": [
                { "type": "header", "name": "x-env-tag", "equals": "canary", "group": "canary" },
                { "type": "percent", "percent": 100, "by": { "source": "header", "name": "x-user-id" }, "group": "canary" }
            ],
            "sticky": { "cookie": "sidestream-group", "maxAgeSeconds": 600 }
        }),
    );
    // a draw sets the cookie
    let d = p.decide(&req(&[("x-user-id", "u1")]), "");
    assert_eq!((d.group, d.reason), ("canary", Reason::Rule(1)));
    assert_eq!(
        d.set_cookie.as_deref(),
        Some("sidestream-group=canary; Max-Age=600; Path=/; HttpOnly; SameSite=Lax")
    );
    // the default sets the cookie
    let d = p.decide(&req(&[]), "");
    assert_eq!((d.group, d.reason), ("stable", Reason::Default));
    assert!(d
        .set_cookie
        .unwrap()
        .starts_with("sidestream-group=stable;"));
    // a sticky cookie naming a known group wins over the draw, sets nothing
    let d = p.decide(
        &req(&[("x-user-id", "u1"), ("cookie", "sidestream-group=stable")]),
        "",
    );
    assert_eq!((d.group, d.reason), ("stable", Reason::Sticky(1)));
    assert_eq!(d.set_cookie, None);
    // an unknown group in the cookie is ignored
    let d = p.decide(
        &req(&[("x-user-id", "u1"), ("cookie", "sidestream-group=evil")]),
        "",
    );
    assert_eq!((d.group, d.reason), ("canary", Reason::Rule(1)));
    // explicit rules before the percent rule still win, and set no cookie
    let d = p.decide(
        &req(&[
            ("x-env-tag", "canary"),
            ("cookie", "sidestream-group=stable"),
        ]),
        "",
    );
    assert_eq!((d.group, d.reason), ("canary", Reason::Rule(0)));
    assert_eq!(d.set_cookie, None);
}

#[test]
fn select_by_priority_then_name() {
    let make =
        |name: &str, priority: i32, hosts: serde_json::Value, prefixes: serde_json::Value| {
            policy(
                name,
                json!({
                    "match": { "hosts": hosts, "pathPrefixes": prefixes },
                    "priority": priority,
                    "groups": ["stable"],
                    "defaultGroup": "stable"
                }),
            )
        };
    let policies = vec![
        make("b-all", 0, json!(["*"]), json!(["/"])),
        make("a-all", 0, json!(["*"]), json!(["/"])),
        make("api", 5, json!(["api.example.com"]), json!(["/"])),
        make("push", 10, json!(["*.example.com"]), json!(["/push"])),
    ];
    let name = |pairs: &[(&str, &str)]| select(&policies, &req(pairs)).map(|p| p.name.as_str());
    assert_eq!(
        name(&[(":authority", "x.test"), (":path", "/")]),
        Some("a-all")
    );
    assert_eq!(
        name(&[(":authority", "api.example.com:443"), (":path", "/push/a")]),
        Some("push")
    );
    assert_eq!(
        name(&[(":authority", "api.example.com"), (":path", "/other")]),
        Some("api")
    );
    assert_eq!(
        name(&[("host", "example.com"), (":path", "/push")]),
        Some("a-all")
    );
    let only_push = &policies[3..];
    assert_eq!(
        select(
            only_push,
            &req(&[(":authority", "x.test"), (":path", "/push")])
        )
        .map(|p| p.name.as_str()),
        None
    );
}

#[test]
fn sticky_table() {
    let sticky = policy(
        "s",
        json!({
            "groups": ["stable", "canary", "beta"],
            "defaultGroup": "stable",
            "rules": [
                { "type": "header", "name": "x-env-tag", "equals": "beta", "group": "beta" },
                { "type": "percent", "percent": 0, "by": { "source": "header", "name": "x-user-id" }, "group": "canary" },
                { "type": "percent", "percent": 100, "by": { "source": "header", "name": "x-user-id" }, "group": "beta" }
            ],
            "sticky": { "cookie": "grp", "maxAgeSeconds": 60 }
        }),
    );
    let mut plain = sticky.clone();
    plain.sticky = None;
    // (policy, headers, group, reason, cookie set to)
    let cases: Vec<(&ReleasePolicy, Headers, &str, Reason, Option<&str>)> = vec![
        // the first percent rule consults the cookie, whether or not its
        // source is present, and sets nothing
        (
            &sticky,
            vec![("cookie", "grp=canary")],
            "canary",
            Reason::Sticky(1),
            None,
        ),
        (
            &sticky,
            vec![("cookie", "grp=\"canary\""), ("x-user-id", "u")],
            "canary",
            Reason::Sticky(1),
            None,
        ),
        // rules before the first percent rule still decide
        (
            &sticky,
            vec![("cookie", "grp=canary"), ("x-env-tag", "beta")],
            "beta",
            Reason::Rule(0),
            None,
        ),
        // unknown or empty cookie values are not a group
        (
            &sticky,
            vec![("cookie", "grp=gold"), ("x-user-id", "u")],
            "beta",
            Reason::Rule(2),
            Some("beta"),
        ),
        (
            &sticky,
            vec![("cookie", "grp=")],
            "stable",
            Reason::Default,
            Some("stable"),
        ),
        (
            &sticky,
            vec![("cookie", "GRP=canary")],
            "stable",
            Reason::Default,
            Some("stable"),
        ),
        // a draw and the default set the cookie
        (
            &sticky,
            vec![("x-user-id", "u")],
            "beta",
            Reason::Rule(2),
            Some("beta"),
        ),
        (&sticky, vec![], "stable", Reason::Default, Some("stable")),
        // without sticky, the cookie means nothing and nothing is set
        (
            &plain,
            vec![("cookie", "grp=canary")],
            "stable",
            Reason::Default,
            None,
        ),
        (
            &plain,
            vec![("cookie", "grp=canary"), ("x-user-id", "u")],
            "beta",
            Reason::Rule(2),
            None,
        ),
    ];
    for (p, headers, group, reason, cookie) in cases {
        let d = p.decide(&req(&headers), "");
        assert_eq!((d.group, d.reason), (group, reason), "{headers:?}");
        let expected =
            cookie.map(|g| format!("grp={g}; Max-Age=60; Path=/; HttpOnly; SameSite=Lax"));
        assert_eq!(d.set_cookie, expected, "{headers:?}");
    }
    // what a client was told once, it keeps being told
    let first = sticky.decide(&req(&[("x-user-id", "u")]), "");
    let cookie = first.set_cookie.unwrap();
    let value = cookie.split(';').next().unwrap();
    let again = sticky.decide(&req(&[("cookie", value), ("x-user-id", "other")]), "");
    assert_eq!(again.group, first.group);
}

#[test]
fn client_tag_table() {
    let mut trusted = push_policy();
    trusted.trust_client_tag = true;
    let untrusted = push_policy();
    // (trusted?, tag value, group, reason, stripped)
    let cases: Vec<(bool, &str, &str, Reason, bool)> = vec![
        (true, "canary", "canary", Reason::ClientTag, false),
        (true, " canary ", "canary", Reason::ClientTag, false),
        (true, "Canary", "stable", Reason::Default, true),
        (true, "", "stable", Reason::Default, true),
        (true, "canary, canary", "stable", Reason::Default, true),
        (false, "canary", "stable", Reason::Default, true),
        (false, "stable", "stable", Reason::Default, true),
        (false, "", "stable", Reason::Default, true),
    ];
    for (trust, tag, group, reason, stripped) in cases {
        let p = if trust { &trusted } else { &untrusted };
        let d = p.decide(&req(&[("x-sidestream-group", tag)]), "");
        assert_eq!(
            (d.group, d.reason, d.stripped_client_tag),
            (group, reason, stripped),
            "trust {trust}, tag {tag:?}"
        );
        assert_eq!(d.tag_header, "x-sidestream-group");
    }
}

#[test]
fn percent_by_trace_id_holds_within_one_point() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let p = policy(
        "by-trace",
        json!({
            "groups": ["stable", "canary"],
            "defaultGroup": "stable",
            "rules": [ { "type": "percent", "percent": 5.25, "by": { "source": "traceId" }, "group": "canary" } ]
        }),
    );
    let n = 100_000;
    let canary = (0..n)
        .filter(|_| {
            let trace = format!("{:032x}", rng.random::<u128>());
            p.decide(&req(&[]), &trace).group == "canary"
        })
        .count();
    let share = canary as f64 * 100.0 / n as f64;
    assert!((share - 5.25).abs() <= 1.0, "got {share}%");
}
