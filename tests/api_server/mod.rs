//! Starts the API on 127.0.0.1:0 over a fresh replica and talks to it over HTTP.
#![allow(dead_code)] // each test file uses its own part of these helpers

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use meshd::api::{self, ApiSettings, ApiState, NodeView};
use meshd::cache::{CacheFiles, CachePaths};
use meshd::config::ApiConfig;
use meshd::control::{Command, Context, Status};
use meshd::metrics::Metrics;
use meshd::model::access::Access;
use meshd::model::NodeId;
use meshd::peers::{Peer, PeerStore};
use meshd::replica::{Replica, SharedReplica};
use meshd::search::{EmbeddingConfig, Searcher};
use serde_json::Value;

/// The node token every test server holds, as a node reads it from `<home>/api.token`.
pub const NODE_TOKEN: &str = "n0de-t0ken";

/// An answer with its headers, for the tests that look at them.
pub struct Answer {
    pub status: u16,
    pub headers: ureq::http::HeaderMap,
    pub body: Value,
}

pub struct Server {
    pub addr: SocketAddr,
    pub replica: SharedReplica,
    changes: Arc<AtomicUsize>,
    agent: ureq::Agent,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Server {
    pub fn start(config: ApiConfig) -> Server {
        Server::start_searching(config, None)
    }

    /// `start`, with these environment variables (the reference servers' ones, say).
    pub fn start_with_env(config: ApiConfig, env: &[(&str, &str)]) -> Server {
        let settings = ApiSettings::from_config(&config, |var| {
            (env.iter().find(|(name, _)| *name == var)).map(|(_, value)| value.to_string())
        });
        Server::launch(settings.unwrap(), None, true)
    }

    /// `start`, with search against an embedding endpoint.
    pub fn start_searching(config: ApiConfig, embedding: Option<EmbeddingConfig>) -> Server {
        Server::launch(settings(&config), embedding, true)
    }

    /// A server without the node's status and metrics, as `meshd api serve` runs.
    pub fn start_without_node(config: ApiConfig) -> Server {
        Server::launch(settings(&config), None, false)
    }

    /// This node's id (compact), as the API shows it.
    pub fn own_id() -> String {
        meshd::trust::NodeKey::insecure_from_name("me")
            .node_id()
            .compact()
    }

    fn launch(
        settings: ApiSettings,
        embedding: Option<EmbeddingConfig>,
        with_node: bool,
    ) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut replica = Replica::open(
            &dir.path().join("store"),
            meshd::trust::NodeKey::insecure_from_name("me"),
        )
        .unwrap();
        let metrics = Arc::new(Metrics::default());
        replica.set_metrics(metrics.clone());
        let peers = PeerStore::open(replica.db()).unwrap();
        let replica = SharedReplica::new(replica);
        let settings = settings.with_node_token(NODE_TOKEN);
        let changes = Arc::new(AtomicUsize::new(0));
        let counter = changes.clone();
        let search = Arc::new(Searcher::new(dir.path().join("search.db"), embedding));
        let mut state = ApiState::new(replica.clone(), settings)
            .with_search(search.clone())
            .on_change(move || {
                counter.fetch_add(1, Ordering::SeqCst);
            });
        if with_node {
            // The status as `meshd status` reports it without the daemon: no mesh.
            let paths = CachePaths {
                openclaw_home: dir.path().join("openclaw"),
                skills_dir: dir.path().join("skills"),
                memory_dir: dir.path().join("memory"),
            };
            let own = NodeId::from_public_key(b"me");
            // One peer, so that the status has a peer row to show.
            let nas = Peer {
                id: NodeId::from_public_key(b"nas"),
                name: Some("nas".into()),
                addresses: vec!["127.0.0.1:4000".into()],
                access: Access::default_for_peer(),
                last_sync: None,
            };
            peers.add(&own, nas).unwrap();
            let context = Context {
                replica: replica.clone(),
                peers,
                own,
                cache: Arc::new(CacheFiles::new(paths, dir.path().join("cache.manifest"))),
                mesh: None,
                search,
                bridge: Default::default(),
            };
            state = state.with_node(NodeView::new(move || Status {}.execute(&context), metrics));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            runtime
                .block_on(api::serve(listener, state, async {
                    let _ = stop.await;
                }))
                .unwrap();
        });
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        Server {
            addr,
            replica,
            changes,
            agent,
            shutdown: Some(shutdown),
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// How many times the API reported a change.
    pub fn changes(&self) -> usize {
        self.changes.load(Ordering::SeqCst)
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
        self.request("GET", path, headers, None)
    }

    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, Value) {
        self.request(method, path, headers, Some(body))
    }

    /// The status and the body as JSON (or as a JSON string when it is not JSON).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> (u16, Value) {
        let answer = self.exchange(method, path, headers, body);
        (answer.status, answer.body)
    }

    /// `request`, keeping the answer's headers.
    pub fn exchange(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Answer {
        let mut builder = ureq::http::Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.addr, path));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let response = match body {
            Some(body) => self.agent.run(builder.body(body.to_string()).unwrap()),
            None => self.agent.run(builder.body(()).unwrap()),
        };
        let mut response = response.unwrap();
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer {
            status,
            headers: response.headers().clone(),
            body,
        }
    }

    pub fn ingest_lines(&self, lines: &[&str]) {
        let (status, _) = self.send("POST", "/ingest", &[], &lines.join("\n"));
        assert_eq!(status, 200);
    }
}

/// `[api]` alone, with no environment.
fn settings(config: &ApiConfig) -> ApiSettings {
    ApiSettings::from_config(config, |_| None).unwrap()
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
