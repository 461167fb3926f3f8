//! The node's home directory and its `meshd.toml`, with the reference tools' environment
//! variables over it (`environment`).

mod environment;

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::bridge::signing::PublicKey;
use crate::bridge::TrustedKeys;
use crate::model::hlc::ClockBound;
use crate::replica::space;

pub const DEFAULT_LISTEN: &str = "0.0.0.0:7464";
/// The local HTTP API's address: the reference store API's port, on loopback only.
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:4078";
/// Largest request body the API reads: a skill may be 1 MiB, and JSON escaping can double it.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// How long the cache writer waits after a change for more changes before rewriting files.
pub const DEFAULT_DEBOUNCE_MS: u64 = 500;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} holds no meshd node: run `meshd init` first, or point --home / MESHD_HOME at the node's home")]
    NotInitialised(PathBuf),
    #[error("{0} already holds a meshd node; refusing to overwrite it (remove it yourself if you really mean to)")]
    AlreadyInitialised(PathBuf),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("'{0}' is not a HOST:PORT address such as 0.0.0.0:7464")]
    Listen(String),
    #[error("[bridge] trusted_keys.{node} in meshd.toml: {place}: {reason}; put the node's Ed25519 public key there (a file's path, or the PEM itself) in SPKI PEM form, as `crypto.generateKeyPairSync('ed25519', {{publicKeyEncoding: {{type: 'spki', format: 'pem'}}}})` prints it in node, or `meshd id --public-pem` for a meshd node")]
    TrustedKey {
        node: String,
        place: String,
        reason: String,
    },
    #[error("the environment variable {name}='{value}' is not {expected}: fix or unset it")]
    Environment {
        name: String,
        value: String,
        expected: &'static str,
    },
}

/// Where a node keeps everything: `--home`, `MESHD_HOME`, or `~/.openclaw/meshd`.
#[derive(Debug, Clone)]
pub struct Home {
    pub dir: PathBuf,
}

impl Home {
    pub fn new(dir: PathBuf) -> Home {
        Home { dir }
    }

    pub fn default_dir() -> PathBuf {
        dirs::home_dir()
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".openclaw")
            .join("meshd")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("meshd.toml")
    }
    pub fn key_path(&self) -> PathBuf {
        self.dir.join("node.key")
    }
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("node.crt")
    }
    pub fn store_path(&self) -> PathBuf {
        self.dir.join("store")
    }
    /// What meshd wrote into the cache directories (see `cache::CacheFiles`).
    pub fn cache_manifest_path(&self) -> PathBuf {
        self.dir.join("cache.manifest")
    }
    pub fn control_socket_path(&self) -> PathBuf {
        self.dir.join("control.sock")
    }
    /// The local API's token, for browser pages (see docs/architecture.md).
    pub fn api_token_path(&self) -> PathBuf {
        self.dir.join("api.token")
    }
    /// The search index: derived from the store, rebuilt when missing.
    pub fn search_index_path(&self) -> PathBuf {
        self.dir.join("search.db")
    }

    pub fn is_initialised(&self) -> bool {
        self.config_path().exists() || self.key_path().exists()
    }

    pub fn require_initialised(&self) -> Result<(), ConfigError> {
        if self.config_path().exists() && self.key_path().exists() {
            Ok(())
        } else {
            Err(ConfigError::NotInitialised(self.dir.clone()))
        }
    }

    /// `meshd.toml`, with the reference servers' variables from the environment over it.
    pub fn load_config(&self) -> Result<Config, ConfigError> {
        self.require_initialised()?;
        let path = self.config_path();
        let text = fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let mut config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path,
            source: Box::new(source),
        })?;
        environment::apply(&mut config, |var| std::env::var(var).ok())?;
        config.bridge.keys = config.bridge.read_keys(&self.dir)?;
        Ok(config)
    }

    pub fn write_new_config(&self, name: &str, listen: &str) -> Result<(), ConfigError> {
        let path = self.config_path();
        let text = config_template(name, listen);
        write_file(&path, &text)
    }
}

fn write_file(path: &Path, text: &str) -> Result<(), ConfigError> {
    fs::write(path, text).map_err(|source| ConfigError::Write {
        path: path.to_path_buf(),
        source,
    })
}

pub fn parse_listen(text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse()
        .map_err(|_| ConfigError::Listen(text.to_string()))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub search: SearchConfig,
    #[serde(default)]
    pub discovery: DiscoveryConfig,
    #[serde(default)]
    pub invites: InvitesConfig,
    #[serde(default)]
    pub bridge: BridgeConfig,
}

/// `[bridge]`: the reference mesh's message signatures (`bridge::signing`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeConfig {
    /// The Ed25519 public key (SPKI PEM, or the path of a file holding it; relative to the
    /// home) trusted for each node id a bridge message may claim: a message signed in that
    /// node's name must verify against it, or it is refused.
    pub trusted_keys: BTreeMap<String, String>,
    /// Sign the messages this node emits on the bridge (`meshd bridge emit`, answers to
    /// mesh_request) with its node key, in the reference scheme.
    pub sign: bool,
    /// Reference nodes' webhooks that `meshd bridge sync` without a URL syncs with.
    pub peers: Vec<BridgePeer>,
    /// `trusted_keys` read, by `Home::load_config`.
    #[serde(skip)]
    pub keys: TrustedKeys,
}

/// `[[bridge.peers]]`: a peer's bridge webhook for the Phase 3 sync over the bridge.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgePeer {
    /// The webhook, e.g. `http://nas.local:4077/bridge`.
    pub url: String,
    /// The peer's node id, as its messages name it (learned from it otherwise).
    pub node_id: Option<String>,
    /// Its webhook's bearer token (its BRIDGE_AUTH_BEARER).
    pub bearer: Option<String>,
    /// Its webhook's header and secret, `NAME:SECRET` (its BRIDGE_AUTH_HEADER and _SECRET).
    pub auth_header: Option<String>,
}

impl BridgeConfig {
    /// What the bridge checks and signs with, `key` being this node's.
    pub fn bridge_keys(&self, key: &crate::trust::NodeKey) -> crate::bridge::BridgeKeys {
        crate::bridge::BridgeKeys {
            trusted: self.keys.clone(),
            signer: self.sign.then(|| key.clone()),
        }
    }

    /// Reads every trusted key, failing on the first that is missing or not an Ed25519
    /// public key, so a mistake shows when the node starts, not when a message is refused.
    pub fn read_keys(&self, home: &Path) -> Result<TrustedKeys, ConfigError> {
        let mut keys = TrustedKeys::default();
        for (node, given) in &self.trusted_keys {
            let error = |place: String, reason: String| ConfigError::TrustedKey {
                node: node.clone(),
                place,
                reason,
            };
            let (place, pem) = if given.contains("-----BEGIN") {
                ("the PEM given".to_string(), given.clone())
            } else {
                let path = home.join(given);
                let place = path.display().to_string();
                let pem =
                    fs::read_to_string(&path).map_err(|e| error(place.clone(), e.to_string()))?;
                (place, pem)
            };
            let key = PublicKey::from_spki_pem(&pem).map_err(|e| error(place, e.to_string()))?;
            keys.insert(node.clone(), key);
        }
        Ok(keys)
    }
}

/// `[invites]`: how this node answers `meshd join`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InvitesConfig {
    /// Hold every valid join for `meshd peers approve` instead of admitting it at once.
    pub approve: bool,
}

/// `[discovery]`: finding other nodes on the LAN (`net::discovery`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// Announce this node over mDNS and listen for the others (`meshd peers discover`); a
    /// known peer found at new addresses gets them. Never pairs by itself.
    pub mdns: bool,
}

impl Default for DiscoveryConfig {
    fn default() -> DiscoveryConfig {
        DiscoveryConfig { mdns: true }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// A name for people; peers identify the node by its id.
    pub name: String,
    /// The QUIC address the daemon listens on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// How far ahead of this node's clock a stamp may be before it is refused.
    #[serde(default = "default_max_clock_offset_ms")]
    pub max_clock_offset_ms: u64,
}

impl NodeConfig {
    /// The clock bound the replica enforces.
    pub fn clock_bound(&self) -> ClockBound {
        ClockBound {
            max_offset_ms: self.max_clock_offset_ms,
        }
    }
}

fn default_listen() -> String {
    DEFAULT_LISTEN.to_string()
}

fn default_max_clock_offset_ms() -> u64 {
    ClockBound::default().max_offset_ms
}

/// `[api]`: the local HTTP API (Phase 2 endpoints and bridge ingest).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Serve the API while `meshd run` runs.
    pub enabled: bool,
    /// HOST:PORT; anything but loopback needs `bearer_token` or `auth_header`+`auth_secret`.
    pub listen: String,
    /// Require `Authorization: Bearer <token>` (env MESHD_API_BEARER, then the reference's
    /// MESH_STORE_AUTH_BEARER / BRIDGE_AUTH_BEARER per route group, override).
    pub bearer_token: Option<String>,
    /// Require this header to carry `auth_secret` (env MESHD_API_AUTH_HEADER, then
    /// MESH_STORE_AUTH_HEADER / BRIDGE_AUTH_HEADER, override).
    pub auth_header: Option<String>,
    /// The shared secret for `auth_header` (env MESHD_API_AUTH_SECRET, then
    /// MESH_STORE_AUTH_SECRET / BRIDGE_AUTH_SECRET, override).
    pub auth_secret: Option<String>,
    /// Host names (or addresses) clients use beside loopback ones, for a non-loopback
    /// `listen`; requests naming any other Host get 421 (DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// Web page origins (`http://localhost:3000`) that may call the API, with the node's
    /// token; requests from any other Origin get 403.
    pub allowed_origins: Vec<String>,
    /// Requests per minute per client before 429, counted apart on the store routes and the
    /// webhook routes (MESH_STORE_ / BRIDGE_RATE_LIMIT_PER_MIN override); 0 turns it off.
    pub rate_limit_per_min: u32,
    /// Larger request bodies get 413.
    pub max_body_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            enabled: true,
            listen: DEFAULT_API_LISTEN.to_string(),
            bearer_token: None,
            auth_header: None,
            auth_secret: None,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            rate_limit_per_min: 0,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// `[cache]`: the files OpenClaw and the reference tools read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Rewrite the caches while meshd serves; `meshd cache write` works either way.
    pub enabled: bool,
    /// Where `mesh-memory.json` and `mesh/skills/` go [default: $OPENCLAW_HOME, else ~/.openclaw].
    pub openclaw_home: Option<PathBuf>,
    /// `<name>/SKILL.md` folders [default: <openclaw_home>/mesh/agent-skills].
    pub skills_dir: Option<PathBuf>,
    /// One Markdown file per memory scope [default: <openclaw_home>/mesh/agent-memory].
    pub memory_dir: Option<PathBuf>,
    /// Quiet time after a change before the files are rewritten.
    pub debounce_ms: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            openclaw_home: None,
            skills_dir: None,
            memory_dir: None,
            debounce_ms: DEFAULT_DEBOUNCE_MS,
        }
    }
}

impl CacheConfig {
    /// The directories to write, given `OPENCLAW_HOME` from the environment.
    pub fn paths(&self, env_openclaw_home: Option<PathBuf>) -> crate::cache::CachePaths {
        let home = self
            .openclaw_home
            .clone()
            .or(env_openclaw_home)
            .unwrap_or_else(default_openclaw_home);
        crate::cache::CachePaths {
            skills_dir: self
                .skills_dir
                .clone()
                .unwrap_or_else(|| home.join("mesh").join("agent-skills")),
            memory_dir: self
                .memory_dir
                .clone()
                .unwrap_or_else(|| home.join("mesh").join("agent-memory")),
            openclaw_home: home,
        }
    }
}

/// `~/.openclaw`: OpenClaw's home when neither meshd.toml nor `OPENCLAW_HOME` names one.
pub fn default_openclaw_home() -> PathBuf {
    dirs::home_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".openclaw")
}

/// `[store]`: the Phase 2 SQLite file kept current for dashboards, the free space the
/// store's disk must keep (`replica::space`) and the memory loaded documents may take
/// (`replica::lazy`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub mirror: Option<PathBuf>,
    pub min_free_mb: u64,
    pub min_free_percent: u8,
    pub memory_budget_mb: u64,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            mirror: None,
            min_free_mb: space::DEFAULT_MIN_FREE_MB,
            min_free_percent: space::DEFAULT_MIN_FREE_PERCENT,
            memory_budget_mb: crate::replica::DEFAULT_MEMORY_BUDGET >> 20,
        }
    }
}

impl StoreConfig {
    pub fn reserve(&self) -> space::Reserve {
        space::Reserve {
            min_free_mb: self.min_free_mb,
            min_free_percent: self.min_free_percent,
        }
    }

    pub fn memory_budget(&self) -> u64 {
        self.memory_budget_mb.saturating_mul(1 << 20)
    }
}

/// `[search]`: the embedding endpoint for semantic search (`search::EmbeddingConfig`); the
/// reference's `MESH_EMBEDDING_*` variables win over it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchConfig {
    pub embedding_url: Option<String>,
    pub embedding_model: Option<String>,
    pub embedding_dimensions: Option<u32>,
}

fn config_template(name: &str, listen: &str) -> String {
    let name = toml::Value::String(name.to_string());
    let listen = toml::Value::String(listen.to_string());
    format!(
        "# meshd node configuration. Written by `meshd init`; edit freely, then restart meshd.\n\
         # The node's identity lives beside this file (node.key, node.crt): keep node.key private.\n\
         \n\
         [node]\n\
         # A name for people; peers pin this node by its id (`meshd id`), not by its name.\n\
         name = {name}\n\
         # The UDP address meshd listens on for QUIC connections from peers.\n\
         listen = {listen}\n\
         # Stamps further ahead of this machine's clock are refused (docs/architecture.md, Clock).\n\
         # max_clock_offset_ms = 60000\n\
         \n\
         # Optional sections (defaults shown); see docs/compatibility.md.\n\
         # [api]\n\
         # enabled = true                 # served by `meshd run`\n\
         # listen = \"{DEFAULT_API_LISTEN}\"  # an address other than loopback requires auth\n\
         # bearer_token = \"...\"           # or auth_header = \"X-API-Key\" + auth_secret = \"...\"\n\
         # allowed_hosts = [\"nas.local\"]    # Host names served beside loopback ones\n\
         # allowed_origins = []           # web pages that may call it, with api.token\n\
         # rate_limit_per_min = 0\n\
         # [cache]\n\
         # openclaw_home = \"/home/me/.openclaw\"  # default: $OPENCLAW_HOME, else ~/.openclaw\n\
         # [store]\n\
         # mirror = \"/path/to/mesh-store.sqlite\"\n\
         # min_free_mb = 256              # below max(this, min_free_percent) free, the node is read-only\n\
         # min_free_percent = 5\n\
         # memory_budget_mb = 192         # documents kept loaded; reads never need them\n\
         # [search]                       # semantic search; MESH_EMBEDDING_URL etc. win\n\
         # embedding_url = \"http://localhost:11434/api/embed\"  # Ollama, or .../v1/embeddings\n\
         # embedding_model = \"nomic-embed-text\"\n\
         # [invites]\n\
         # approve = false                # true: a join waits for `meshd peers approve ID`\n\
         # [discovery]\n\
         # mdns = true                    # announce on the LAN (the listen address's interfaces), find nodes\n\
         # [bridge]                       # reference message signatures (docs/operator-guide.md)\n\
         # sign = false                   # sign emitted messages; peers trust `meshd id --public-pem`\n\
         # trusted_keys = {{ ceo = \"/etc/meshd/ceo.pub.pem\" }}  # a message signed as ceo must verify with it\n\
         # [[bridge.peers]]               # `meshd bridge sync` with no URL syncs with each\n\
         # url = \"http://nas.local:4077/bridge\"\n\
         # node_id = \"nas\"                # optional: learned from the peer otherwise\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parses_back() {
        let config: Config =
            toml::from_str(&config_template("nas \"one\"", "127.0.0.1:1")).unwrap();
        assert_eq!(config.node.name, "nas \"one\"");
        assert_eq!(config.node.listen, "127.0.0.1:1");
        let off = toml::from_str::<Config>("[node]\nname = \"a\"\n[discovery]\nmdns = false\n");
        assert!(!off.unwrap().discovery.mdns);
        let held = toml::from_str::<Config>("[node]\nname = \"a\"\n[invites]\napprove = true\n");
        assert!(held.unwrap().invites.approve);
    }

    #[test]
    fn configs_without_the_new_sections_keep_working() {
        let config: Config = toml::from_str("[node]\nname = \"a\"\n").unwrap();
        assert_eq!(config.api.listen, DEFAULT_API_LISTEN);
        assert!(config.cache.enabled);
        assert!(config.store.mirror.is_none());
        assert!(config.discovery.mdns, "discovery is on unless turned off");
    }

    #[test]
    fn new_sections_parse_and_refuse_unknown_keys() {
        let text =
            "[node]\nname = \"a\"\n[api]\nlisten = \"127.0.0.1:1\"\nrate_limit_per_min = 5\n\
                    [cache]\nopenclaw_home = \"/oc\"\n[store]\nmirror = \"/m.sqlite\"\n";
        let config: Config = toml::from_str(text).unwrap();
        assert_eq!(config.api.rate_limit_per_min, 5);
        assert_eq!(config.store.mirror.as_deref(), Some(Path::new("/m.sqlite")));
        let paths = config.cache.paths(Some(PathBuf::from("/env")));
        assert_eq!(paths.openclaw_home, Path::new("/oc"));
        assert_eq!(paths.skills_dir, Path::new("/oc/mesh/agent-skills"));
        assert!(toml::from_str::<Config>("[node]\nname = \"a\"\n[api]\nport = 1\n").is_err());
        let browsers = "[node]\nname = \"a\"\n[api]\nallowed_hosts = [\"nas.local\"]\n\
                        allowed_origins = [\"http://localhost:3000\"]\n";
        let api = toml::from_str::<Config>(browsers).unwrap().api;
        assert_eq!(api.allowed_hosts, ["nas.local"]);
        assert_eq!(api.allowed_origins, ["http://localhost:3000"]);
    }

    #[test]
    fn openclaw_home_comes_from_the_environment_unless_configured() {
        let paths = CacheConfig::default().paths(Some(PathBuf::from("/env")));
        assert_eq!(paths.memory_dir, Path::new("/env/mesh/agent-memory"));
    }

    #[test]
    fn trusted_keys_are_read_from_files_or_inline_with_clear_errors() {
        let home = tempfile::tempdir().unwrap();
        let key = crate::trust::NodeKey::insecure_from_name("ceo");
        let pem = crate::bridge::signing::public_key_pem(&key);
        fs::write(home.path().join("ceo.pub.pem"), &pem).unwrap();
        let text = format!(
            "[node]\nname = \"a\"\n[bridge]\nsign = true\n[bridge.trusted_keys]\n\
             ceo = \"ceo.pub.pem\"\nsec = '''\n{pem}'''\n"
        );
        let config: Config = toml::from_str(&text).unwrap();
        assert!(config.bridge.sign);
        let keys = config.bridge.read_keys(home.path()).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.get("ceo"), keys.get("sec"));
        let refused = |given: &str| {
            let mut bridge = BridgeConfig::default();
            bridge.trusted_keys.insert("ceo".into(), given.into());
            bridge.read_keys(home.path()).unwrap_err().to_string()
        };
        let missing = refused("nope.pem");
        assert!(
            missing.contains("trusted_keys.ceo") && missing.contains("nope.pem"),
            "{missing}"
        );
        assert!(missing.contains("SPKI PEM"), "{missing}");
        let garbage = refused("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n");
        assert!(garbage.contains("not an Ed25519 key"), "{garbage}");
        assert!(toml::from_str::<Config>("[node]\nname = \"a\"\n[bridge]\nkeys = 1\n").is_err());
        assert!(
            !toml::from_str::<Config>("[node]\nname = \"a\"\n")
                .unwrap()
                .bridge
                .sign
        );
    }

    #[test]
    fn listen_must_be_host_and_port() {
        assert!(parse_listen("0.0.0.0:7464").is_ok());
        assert!(parse_listen("localhost").is_err());
    }
}
