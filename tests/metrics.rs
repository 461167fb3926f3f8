//! `GET /metrics` of a real `meshd run`, read by a Prometheus text-format parser
//! (prometheus-parse): the counters move by what happened, and the route is guarded like
//! every other.

mod support;

use prometheus_parse::{Scrape, Value};
use support::{wait_until, TestNode};

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// The status and body of a GET with these headers.
fn get(api: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut request = agent().get(format!("http://{api}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = request.call().unwrap();
    let body = response.body_mut().read_to_string().unwrap();
    (response.status().as_u16(), body)
}

fn scrape(api: &str) -> Scrape {
    let (status, text) = get(api, "/metrics", &[]);
    assert_eq!(status, 200, "{text}");
    Scrape::parse(text.lines().map(|line| Ok(line.to_string()))).unwrap()
}

/// The value of the sample `name` whose labels include `labels`; 0 when there is none (a
/// counter not yet incremented has no labelled series).
fn sample(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)));
    match found.map(|s| &s.value) {
        Some(Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v)) => *v,
        Some(other) => panic!("{name} is {other:?}"),
        None => 0.0,
    }
}

fn put(api: &str, key: &str) {
    let body = format!(r#"{{"scope":"mesh","key":"{key}","value":"v"}}"#);
    let response = agent()
        .put(format!("http://{api}/mesh/memory"))
        .header("Content-Type", "application/json")
        .send(body)
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

fn connected(node: &TestNode) -> bool {
    let status: serde_json::Value =
        serde_json::from_str(&node.run(&["status", "--json"]).ok()).unwrap();
    status["peers"][0]["connected"] == true
}

#[test]
fn counters_follow_writes_sync_rounds_and_refusals() {
    let (a, api) = TestNode::init_with_api("alpha");
    let (b, b_addr) = TestNode::init_listening("beta");
    let a_addr = {
        let config = std::fs::read_to_string(a.file("meshd.toml")).unwrap();
        let line = config.lines().find(|l| l.starts_with("listen")).unwrap();
        line.split('"').nth(1).unwrap().to_string()
    };
    // A takes from beta only what beta writes in user:b.
    a.run(&[
        "peers",
        "add",
        &b.id(),
        &b_addr,
        "--name",
        "beta",
        "--write",
        "user:b",
    ])
    .ok();
    b.run(&["peers", "add", &a.id(), &a_addr]).ok();
    let _da = a.start();
    let _db = b.start();
    wait_until("the API answers", || get(&api, "/health", &[]).0 == 200);
    wait_until("linked", || connected(&a));
    let beta = [("peer", "beta")];

    let before = scrape(&api);
    assert_eq!(sample(&before, "meshd_peer_connected", &beta), 1.0);
    let writes = sample(&before, "meshd_writes_acknowledged_total", &[]);
    let commits = sample(&before, "meshd_store_commits_total", &[]);
    for i in 0..3 {
        put(&api, &format!("api-{i}"));
    }
    for i in 0..2 {
        a.run(&["mem", "put", "mesh", &format!("cli-{i}"), "1"])
            .ok();
    }
    let after_writes = scrape(&api);
    assert_eq!(
        sample(&after_writes, "meshd_writes_acknowledged_total", &[]) - writes,
        5.0,
        "five puts, five acknowledged writes"
    );
    // One after the other, each put is its own commit (changes from the peer may add more).
    let committed = sample(&after_writes, "meshd_store_commits_total", &[]) - commits;
    assert!(committed >= 5.0, "{committed} commits for five puts");
    assert_eq!(sample(&after_writes, "meshd_memory_entries", &[]), 5.0);

    let rounds = sample(&after_writes, "meshd_sync_rounds_total", &beta);
    let sent = sample(&after_writes, "meshd_bytes_sent_total", &beta);
    a.run(&["sync"]).ok();
    let after_sync = scrape(&api);
    assert!(
        sample(&after_sync, "meshd_sync_rounds_total", &beta) > rounds,
        "a round with beta completed"
    );
    assert!(sample(&after_sync, "meshd_bytes_sent_total", &beta) > sent);
    assert!(sample(&after_sync, "meshd_store_size_bytes", &[]) > 0.0);
    assert!(sample(&after_sync, "meshd_store_free_bytes", &[]) > 0.0);
    assert_eq!(sample(&after_sync, "meshd_read_only", &[]), 0.0);
    // Both daemons run on this machine's clock, and after the round nothing of beta's waits.
    wait_until("beta opened a round on the link", || {
        (scrape(&api).samples.iter()).any(|s| s.metric == "meshd_peer_clock_offset_milliseconds")
    });
    let skew = sample(&scrape(&api), "meshd_peer_clock_offset_milliseconds", &beta);
    assert!(skew.abs() < 1000.0, "same clock, {skew} ms apart");
    a.run(&["sync"]).ok();
    assert_eq!(
        sample(&scrape(&api), "meshd_peer_changes_awaited", &beta),
        0.0
    );

    // beta writes mesh, which A does not take from it: a refusal, by its kind.
    b.run(&["mem", "put", "mesh", "owner", "\"b\""]).ok();
    b.run(&["sync"]).ok();
    wait_until("A counts the refusal", || {
        sample(
            &scrape(&api),
            "meshd_refusals_total",
            &[("reason", "may_not_write")],
        ) >= 1.0
    });

    // A node A never added dials it: refused at the handshake, counted, and given no series.
    let (stranger, _) = TestNode::init_listening("stranger");
    stranger.run(&["peers", "add", &a.id(), &a_addr]).ok();
    let _ds = stranger.start();
    wait_until("A counts the stranger", || {
        sample(
            &scrape(&api),
            "meshd_refusals_total",
            &[("reason", "unknown_node")],
        ) >= 1.0
    });
    let last = scrape(&api);
    let peers: std::collections::BTreeSet<&str> = (last.samples.iter())
        .filter_map(|s| s.labels.get("peer"))
        .collect();
    assert_eq!(peers.into_iter().collect::<Vec<_>>(), ["beta"]);
}

#[test]
fn metrics_and_status_need_the_token_when_one_is_configured() {
    let (node, api) = TestNode::init_with_api_token("guarded", "s3cret-t0ken");
    let _daemon = node.start();
    wait_until("the API answers", || get(&api, "/health", &[]).0 == 200);
    let node_token = std::fs::read_to_string(node.file("api.token")).unwrap();
    let node_token = format!("Bearer {}", node_token.trim());
    for path in ["/metrics", "/mesh/status"] {
        assert_eq!(get(&api, path, &[]).0, 401, "{path}");
        assert_eq!(
            get(&api, path, &[("Authorization", "Bearer wrong")]).0,
            401,
            "{path}"
        );
        for token in ["Bearer s3cret-t0ken", node_token.as_str()] {
            let (status, body) = get(&api, path, &[("Authorization", token)]);
            assert_eq!(status, 200, "{path}: {body}");
        }
        let foreign = [
            ("Authorization", "Bearer s3cret-t0ken"),
            ("Origin", "http://evil.example"),
        ];
        assert_eq!(get(&api, path, &foreign).0, 403, "{path}");
    }
    let (_, text) = get(
        &api,
        "/metrics",
        &[("Authorization", "Bearer s3cret-t0ken")],
    );
    let parsed = Scrape::parse(text.lines().map(|line| Ok(line.to_string()))).unwrap();
    assert!(
        parsed
            .samples
            .iter()
            .any(|s| s.metric == "meshd_writes_acknowledged_total"),
        "{text}"
    );
}
