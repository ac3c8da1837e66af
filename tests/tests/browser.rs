//! A real browser on the live-ticker page, through the whole stack (started as
//! `make run` starts it): headless Chromium opens the page from Envoy, the
//! page subscribes with `EventSource`; the test kills the push server serving
//! it mid-stream (SIGKILL: every connection cut; run-stack.sh restarts it)
//! while messages keep being published; the browser reconnects with its last
//! event id, and the page has received every message exactly once, in order.
//!
//! And a browser `EventSource` on two topics of one push server, opened with
//! `eventName=topic`, tells the topics apart by event name.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use std::time::Duration;

use serde_json::{json, Value};
use sidestream_tests::assert_eventually;
use sidestream_tests::browser::Chromium;
use sidestream_tests::push::PushServer;
use sidestream_tests::run_dir;
use sidestream_tests::stack::Stack;

const TOPIC: &str = "browser-e2e";

/// Publishes `{"seq": n}` through Envoy; `canary` routes it to the canary push
/// server (the seeded policy's `x-env-tag: canary` rule).
async fn publish(client: &reqwest::Client, stack: &Stack, seq: u32, canary: bool) {
    let mut request = client
        .post(format!("{}/v1/topics/{TOPIC}/messages", stack.envoy_url()))
        .header("content-type", "text/plain")
        .body(json!({ "seq": seq }).to_string());
    if canary {
        request = request.header("x-env-tag", "canary");
    }
    let response = request.send().await.expect("publish");
    assert_eq!(
        response.status(),
        201,
        "publish {seq}: {:?}",
        response.text().await
    );
}

/// The page's record: (seq of every message received, in order; connections opened).
async fn page_state(browser: &Chromium) -> anyhow::Result<(Vec<u64>, Vec<String>, u64)> {
    let text = browser
        .evaluate("JSON.stringify(window.sidestreamTicker || null)")
        .await?;
    let state: Value = serde_json::from_str(text.as_str().unwrap_or("null"))?;
    anyhow::ensure!(state.is_object(), "the page has no ticker state yet");
    let mut seqs = Vec::new();
    let mut ids = Vec::new();
    for message in state["received"].as_array().into_iter().flatten() {
        let data: Value = serde_json::from_str(message["data"].as_str().unwrap_or(""))?;
        seqs.push(data["seq"].as_u64().unwrap_or(0));
        ids.push(message["id"].as_str().unwrap_or("").to_owned());
    }
    Ok((seqs, ids, state["opens"].as_u64().unwrap_or(0)))
}

async fn wait_received(
    browser: &Chromium,
    count: usize,
    what: &str,
) -> (Vec<u64>, Vec<String>, u64) {
    assert_eventually!(Duration::from_secs(30), what, async {
        let (seqs, ids, opens) = page_state(browser).await?;
        anyhow::ensure!(
            seqs.len() >= count,
            "{} of {count} so far: {seqs:?}",
            seqs.len()
        );
        Ok((seqs, ids, opens))
    })
}

async fn resumes(stack: &Stack) -> f64 {
    let text = reqwest::get(format!("{}/metrics", stack.push_url("stable")))
        .await
        .expect("push metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .filter(|l| l.starts_with("sidestream_push_resumes"))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_ticker_page_resumes_exactly_once_after_the_push_server_is_killed() {
    let stack = Stack::start("browser").await.expect("stack starts");
    let client = reqwest::Client::new();
    stack
        .apply(
            "topic",
            &json!({ "kind": "TopicSettings", "name": TOPIC, "spec": { "historySize": 1000, "historyMaxAgeSeconds": 3600 } }),
        )
        .expect("apply topic");
    // The topic reached both push servers (through etcd and the control plane).
    for group in ["stable", "canary"] {
        let url = format!("{}/v1/topics", stack.push_url(group));
        assert_eventually!(
            Duration::from_secs(10),
            "topic on the push servers",
            async {
                let text = reqwest::get(&url).await?.text().await?;
                anyhow::ensure!(text.contains(TOPIC), "{group}: {text}");
                Ok(())
            }
        );
    }

    let page = format!("{}/?topic={TOPIC}", stack.envoy_url());
    let browser = Chromium::open(&page, &stack.dir)
        .await
        .expect("Chromium opens the page");
    assert_eventually!(
        Duration::from_secs(20),
        "the page's EventSource is open",
        async {
            let (_, _, opens) = page_state(&browser).await?;
            anyhow::ensure!(opens >= 1, "not connected yet");
            Ok(())
        }
    );
    let group: Value = browser
        .evaluate("window.sidestreamTicker.group")
        .await
        .expect("group");
    assert_eq!(
        group, "stable",
        "a browser without the grey cookie is on stable"
    );

    for seq in 1..=10 {
        publish(&client, &stack, seq, false).await;
    }
    let (_, _, opens_before) =
        wait_received(&browser, 10, "the first ten messages reach the page").await;

    // Kill the push server serving the page: its connections die with it.
    let old_pid = stack.pid("push-stable").expect("pid");
    stack.signal("push-stable", 9).expect("kill push-stable");
    // Published while the stable push server is down: the canary one takes
    // them (same topic through Redis).
    for seq in 11..=20 {
        publish(&client, &stack, seq, true).await;
    }
    assert_eventually!(
        Duration::from_secs(30),
        "run-stack.sh restarts the push server",
        async {
            let pid = stack.pid("push-stable")?;
            anyhow::ensure!(pid != old_pid, "still the old pid");
            reqwest::get(format!("{}/healthz/ready", stack.push_url("stable")))
                .await?
                .error_for_status()?;
            Ok(())
        }
    );
    for seq in 21..=30 {
        publish(&client, &stack, seq, false).await;
    }

    // A last message marks the end: the page's stream delivers in order, so
    // once it is there, a duplicate of an earlier message (a replay that
    // overlapped what the page already had) would be there too.
    publish(&client, &stack, 31, false).await;
    let (seqs, ids, opens) = assert_eventually!(
        Duration::from_secs(30),
        "all thirty-one messages reach the page",
        async {
            let (seqs, ids, opens) = page_state(&browser).await?;
            anyhow::ensure!(
                seqs.contains(&31),
                "{} messages so far, not the last one: {seqs:?}",
                seqs.len()
            );
            Ok((seqs, ids, opens))
        }
    );
    assert_eq!(
        seqs,
        (1..=31).collect::<Vec<u64>>(),
        "every message exactly once (nothing twice), in order"
    );
    let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "every event id once: {ids:?}");
    assert!(
        opens > opens_before,
        "the EventSource reconnected ({opens_before} → {opens} connections)"
    );
    // The new push server process resumed the browser from its last event id.
    let resumes_after = resumes(&stack).await;
    eprintln!(
        "page received {} messages in order; connections {opens_before} -> {opens}; resumes on the restarted push server: {resumes_after}",
        seqs.len()
    );
    assert!(
        resumes_after >= 1.0,
        "the restarted push server resumed the browser from its last event id (resumes: {resumes_after})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_source_on_two_topics_tells_them_apart_by_event_name() {
    let dir = run_dir("browser-event-names").expect("run dir");
    let push = PushServer::start("push", &dir, &[])
        .await
        .expect("push server starts");
    // A page of the push server's origin (any of its URLs will do).
    let browser = Chromium::open(&format!("{}/healthz/live", push.url()), &dir)
        .await
        .expect("Chromium opens the page");
    let origin = push.url();
    assert_eventually!(Duration::from_secs(20), "the page is loaded", async {
        let location = browser
            .evaluate("document.readyState === 'complete' ? location.origin : ''")
            .await?;
        anyhow::ensure!(location == origin.as_str(), "at {location}");
        Ok(())
    });
    let opened = browser
        .evaluate(
            r#"new Promise((resolve, reject) => {
                const seen = window.seen = [];
                const source = window.source =
                  new EventSource("/v1/events?topic=prices&topic=news&eventName=topic");
                // "message" would get events without a name: there must be none.
                for (const name of ["prices", "news", "prices:tick", "message"]) {
                  source.addEventListener(name, (e) => seen.push([e.type, e.data, e.lastEventId]));
                }
                source.onopen = () => resolve(true);
                source.onerror = () => reject(new Error("EventSource failed"));
              })"#,
        )
        .await
        .expect("the EventSource opens");
    assert_eq!(opened, true);

    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for (topic, data, event) in [
        ("prices", "101.5", None),
        ("news", "markets open", None),
        ("prices", "102", Some("tick")),
    ] {
        let mut url = format!("{}/v1/topics/{topic}/messages", push.url());
        if let Some(event) = event {
            url.push_str(&format!("?event={event}"));
        }
        let response = client.post(url).body(data).send().await.expect("publish");
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.expect("json");
        ids.push(body["id"].as_str().expect("id").to_owned());
    }
    let epoch = ids[0].split_once('-').expect("an id").0.to_owned();
    let seen = assert_eventually!(
        Duration::from_secs(20),
        "three events reach the page",
        async {
            let seen = browser.evaluate("window.seen").await?;
            anyhow::ensure!(
                seen.as_array().is_some_and(|s| s.len() >= 3),
                "so far {seen}"
            );
            Ok(seen)
        }
    );
    assert_eq!(
        seen,
        json!([
            ["prices", "101.5", format!("{epoch}-1.0")],
            ["news", "markets open", format!("{epoch}-1.1")],
            ["prices:tick", "102", format!("{epoch}-2.1")],
        ]),
        "each event named by its topic (and its publisher's event name)"
    );
    browser
        .evaluate("window.source.close()")
        .await
        .expect("close");
}
