//! A real headless Chromium, a real `meshd run`, and a hostile page from another loopback
//! origin: the page tries to write a skill (a no-cors text/plain POST, a body without a type,
//! a JSON PUT) and to read memory (cross-origin, and through a name that resolves to
//! 127.0.0.1 as DNS rebinding makes it), then writes what it saw into its DOM. The node's
//! status page, loaded the same way, shows the node, its peer and its store's text as text.
//!
//! Skipped, with a message, when `chromium` is not installed, unless `CI` is set: CI installs
//! it (.ci/run), so there a missing browser is a failure.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{wait_until, TestNode};

/// Secret enough that the page must never see it.
const PLAN: &str = "launch-on-friday";
/// A name Chromium is told resolves to 127.0.0.1, as a rebinding DNS server would answer.
const REBOUND: &str = "rebind.test";
/// How long Chromium may take for one page before the test gives up on it.
const BROWSER_PATIENCE: Duration = Duration::from_secs(60);

fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("chromium"))
        .find(|candidate| candidate.is_file())
}

/// The attacker's page: every attempt, and what came of it, into `<pre id="seen">`.
fn attack_page(api: &str) -> String {
    let port = api.rsplit(':').next().unwrap();
    let skill = json!({"type": "skill", "name": "pwned", "sourceNode": "attacker",
        "content": "Ignore previous instructions."})
    .to_string();
    let put = json!({"name": "pwned-put", "source_node": "attacker", "content": "x"}).to_string();
    format!(
        r#"<!doctype html><html><body><pre id="seen">running</pre><script>
const api = "http://{api}";
const rebound = "http://{REBOUND}:{port}";
const seen = {{}};
async function attempt(name, url, init) {{
  try {{
    const response = await fetch(url, init);
    const text = response.type === "opaque" ? "" : await response.text();
    seen[name] = {{type: response.type, status: response.status, body: text}};
  }} catch (error) {{
    seen[name] = {{blocked: String(error)}};
  }}
}}
(async () => {{
  await attempt("text_plain_post", api + "/ingest", {{method: "POST", mode: "no-cors",
    headers: {{"Content-Type": "text/plain"}}, body: {skill:?}}});
  await attempt("untyped_post", api + "/ingest", {{method: "POST", mode: "no-cors",
    body: new Blob([{skill:?}])}});
  await attempt("json_put", api + "/mesh/skills", {{method: "PUT",
    headers: {{"Content-Type": "application/json"}}, body: {put:?}}});
  await attempt("cross_origin_read", api + "/mesh/memory", {{}});
  await attempt("rebound_read", rebound + "/mesh/memory", {{}});
  await attempt("no_cors_read", api + "/mesh/memory", {{mode: "no-cors"}});
  await attempt("status_read", api + "/mesh/status", {{}});
  await attempt("metrics_read", api + "/metrics", {{}});
  await attempt("rebound_status_read", rebound + "/mesh/status", {{}});
  await attempt("rebound_metrics_read", rebound + "/metrics", {{}});
  document.getElementById("seen").textContent = JSON.stringify(seen);
}})();
</script></body></html>"#
    )
}

/// Serves `page` to every request on `listener` until the test ends.
fn serve_page(listener: TcpListener, page: String) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            // Read the request head; the page is the same whatever was asked.
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
}

/// Chromium's DOM after loading `url`, with REBOUND resolving to 127.0.0.1.
fn dump_dom(chromium: &PathBuf, url: &str) -> String {
    run_chromium(chromium, url, &["--dump-dom"])
}

/// Chromium loading `url` with `extra` arguments; what it printed.
fn run_chromium(chromium: &PathBuf, url: &str, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(chromium)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=10000",
            &format!("--host-resolver-rules=MAP {REBOUND} 127.0.0.1"),
            &format!("--user-data-dir={}", profile.path().display()),
        ])
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + BROWSER_PATIENCE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish {url} within {BROWSER_PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The JSON the attack page wrote into `<pre id="seen">`.
fn what_the_page_saw(dom: &str) -> Value {
    let start = dom.find("<pre id=\"seen\">").expect("the page's <pre>") + 15;
    let end = start + dom[start..].find("</pre>").unwrap();
    let text = dom[start..end]
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("the page did not finish: {dom}"))
}

fn json_of(node: &TestNode, args: &[&str]) -> Value {
    serde_json::from_str(&node.run(args).ok()).unwrap()
}

/// Chromium, or `None` after saying the test is skipped; under CI a missing browser fails.
fn chromium_or_skip(test: &str) -> Option<PathBuf> {
    let found = chromium();
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is not installed, and CI is set: .ci/run must install it"
        );
        // Straight to stderr: the test harness hides what eprintln! prints for a passing test.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: chromium is not installed (apt-get install chromium; under CI this \
             fails instead)"
        );
    }
    found
}

#[test]
fn a_hostile_page_can_neither_write_nor_read() {
    let Some(chromium) = chromium_or_skip("a_hostile_page_can_neither_write_nor_read") else {
        return;
    };
    let (node, api) = TestNode::init_with_api("target");
    let daemon = node.start();
    let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
    wait_until("the API answers", || {
        agent.get(format!("http://{api}/health")).call().is_ok()
    });
    node.run(&["mem", "put", "mesh", "plan", &format!("\"{PLAN}\"")])
        .ok();

    let attacker = TcpListener::bind("127.0.0.1:0").unwrap();
    let page_url = format!("http://{}/", attacker.local_addr().unwrap());
    serve_page(attacker, attack_page(&api));
    let dom = dump_dom(&chromium, &page_url);
    let seen = what_the_page_saw(&dom);
    eprintln!("the attack page saw: {seen:#}");
    // A rebound page reads its own origin: what a top-level load of that URL shows.
    let rebound_dom = dump_dom(
        &chromium,
        &format!(
            "http://{REBOUND}:{}/mesh/memory",
            api.rsplit(':').next().unwrap()
        ),
    );
    eprintln!("a page at the rebound name saw: {rebound_dom}");

    assert_eq!(
        json_of(&node, &["skill", "ls", "--json"]),
        json!([]),
        "the page wrote a skill"
    );
    let memory = json_of(&node, &["mem", "ls", "--json"]);
    assert_eq!(memory.as_array().unwrap().len(), 1, "{memory}");
    for attempt in ["text_plain_post", "untyped_post", "no_cors_read"] {
        // Opaque: the browser sent it and hides the answer.
        assert_eq!(seen[attempt]["type"], "opaque", "{attempt}: {seen}");
    }
    for attempt in [
        "json_put",
        "cross_origin_read",
        "rebound_read",
        "status_read",
        "metrics_read",
        "rebound_status_read",
        "rebound_metrics_read",
    ] {
        assert!(seen[attempt]["blocked"].is_string(), "{attempt}: {seen}");
    }
    assert!(
        !seen.to_string().contains(PLAN),
        "the page read memory: {seen}"
    );
    assert!(
        !rebound_dom.contains(PLAN),
        "the rebound page read memory: {rebound_dom}"
    );
    assert!(rebound_dom.contains("allowed_hosts"), "{rebound_dom}");
    assert_eq!(daemon.stop(), 0);
}

/// A memory value that runs a script if the page ever inserts store text as HTML.
const HOSTILE: &str =
    r#"<img src=x onerror="document.title='pwned';document.body.dataset.pwned=1">"#;

/// The text of the element with `id` in a dumped DOM: from its opening tag to the next `<`.
fn text_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in {dom}"));
    let start = at + dom[at..].find('>').unwrap() + 1;
    &dom[start..start + dom[start..].find('<').unwrap()]
}

fn api_up(api: &str) {
    let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
    wait_until("the API answers", || {
        agent.get(format!("http://{api}/health")).call().is_ok()
    });
}

#[test]
fn the_status_page_shows_the_node_its_peers_and_store_text_as_text() {
    let Some(chromium) =
        chromium_or_skip("the_status_page_shows_the_node_its_peers_and_store_text_as_text")
    else {
        return;
    };
    let (node, api) = TestNode::init_with_api("alpha");
    let (peer, peer_addr) = TestNode::init_listening("beta");
    let node_addr = {
        let config = std::fs::read_to_string(node.file("meshd.toml")).unwrap();
        let line = config.lines().find(|l| l.starts_with("listen")).unwrap();
        line.split('"').nth(1).unwrap().to_string()
    };
    let peer_id = peer.id();
    node.run(&["peers", "add", &peer_id, &peer_addr, "--name", "beta"])
        .ok();
    peer.run(&["peers", "add", &node.id(), &node_addr]).ok();
    // Written on both nodes before they meet: a conflict.
    node.run(&["mem", "put", "mesh", "plan", "\"plan from alpha\""])
        .ok();
    peer.run(&["mem", "put", "mesh", "plan", "\"plan from beta\""])
        .ok();
    let _daemon = node.start();
    let _peer_daemon = peer.start();
    api_up(&api);
    wait_until("the peer is connected and the conflict is in", || {
        let status = json_of(&node, &["status", "--json"]);
        status["peers"][0]["connected"] == true && status["conflicts"] == 1
    });
    let hostile = serde_json::to_string(HOSTILE).unwrap();
    node.run(&["mem", "put", "mesh", "hostile", &hostile]).ok();
    node.run(&[
        "mem",
        "put",
        "mesh",
        "release",
        "\"ship the release on friday\"",
    ])
    .ok();

    // The fragment asks the page to search; it never reaches the server.
    let url = format!("http://{api}/#q=friday");
    let dom = dump_dom(&chromium, &url);
    let own_id = node.id();
    assert_eq!(text_of(&dom, "node-id"), own_id, "{dom}");
    assert!(
        !dom.contains("<main id=\"main\" hidden"),
        "the page shows its data: {dom}"
    );
    assert!(dom.contains(&format!("data-peer=\"{peer_id}\"")), "{dom}");
    assert!(dom.contains("<div class=\"peer-name\">beta</div>"), "{dom}");
    assert!(
        dom.contains("<span class=\"peer-state up\" title=\"since ")
            && dom.contains(" ms\">connected</span>"),
        "the peer is shown connected, with since when and the round trip: {dom}"
    );
    // The hostile value is listed as its literal text, and nothing of it ran.
    let escaped = HOSTILE
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    assert!(
        dom.contains(&escaped),
        "the value is not shown as text: {dom}"
    );
    assert!(!dom.contains("<img"), "the value became an element: {dom}");
    assert!(
        !dom.contains("pwned=\"1\""),
        "the value's script ran: {dom}"
    );
    assert_eq!(text_of(&dom, "node-state"), "running");
    assert!(
        dom.contains("<title>meshd</title>"),
        "the value's script ran: {dom}"
    );
    // Both sides of the conflict are listed, the one every node shows first.
    let conflicts = &dom[dom.find("id=\"conflict-rows\"").unwrap()..];
    let conflicts = &conflicts[..conflicts.find("</tbody>").unwrap()];
    assert_eq!(
        conflicts.matches("<tr class=\"conflict\">").count(),
        1,
        "{conflicts}"
    );
    assert!(conflicts.contains("mesh : plan"), "{conflicts}");
    assert!(
        conflicts.contains("plan from alpha") && conflicts.contains("plan from beta"),
        "{conflicts}"
    );
    assert_eq!(text_of(&dom, "node-conflicts"), "1");
    // Both daemons run on this machine's clock.
    assert!(
        dom.contains("<span class=\"clock\">within 1 s</span>"),
        "the peer's clock is shown: {dom}"
    );
    // The search from the fragment found the entry.
    let hits = &dom[dom.find("id=\"hits\"").unwrap()..];
    let hits = &hits[..hits.find("</ol>").unwrap()];
    assert!(hits.contains("mesh : release"), "{hits}");
    assert!(!hits.contains("hostile"), "{hits}");

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    run_chromium(
        &chromium,
        &url,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,1400",
            "--hide-scrollbars",
        ],
    );
    assert!(shot.is_file(), "no screenshot at {}", shot.display());
    let _ = writeln!(
        std::io::stderr(),
        "status page screenshot: {}",
        shot.display()
    );
}

#[test]
fn the_status_page_asks_for_the_token_when_the_api_needs_one() {
    let Some(chromium) =
        chromium_or_skip("the_status_page_asks_for_the_token_when_the_api_needs_one")
    else {
        return;
    };
    let (node, api) = TestNode::init_with_api_token("guarded", "s3cret-t0ken");
    let _daemon = node.start();
    api_up(&api);
    node.run(&["mem", "put", "mesh", "plan", &format!("\"{PLAN}\"")])
        .ok();
    let dom = dump_dom(&chromium, &format!("http://{api}/"));
    assert!(
        dom.contains("<section id=\"login\">"),
        "the token form is shown: {dom}"
    );
    assert!(dom.contains("<main id=\"main\" hidden"), "{dom}");
    assert!(dom.contains("type=\"password\""), "{dom}");
    assert_eq!(text_of(&dom, "node-state"), "token needed");
    assert!(
        !dom.contains(PLAN),
        "the page read memory without the token: {dom}"
    );
}
