//! The control protocol: what the CLI asks of a node, and the answers. The same requests run
//! against the store directly when no daemon is running, or go over the daemon's control
//! socket when one is (sled allows one process per store: one store, one writer).

pub mod socket;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::bridge::{self, Selection, Unwrap};
use crate::cache::{self, CachePaths, CacheReport};
use crate::model::access::{Access, Pattern};
use crate::model::validate::ValidationError;
use crate::model::{DocId, MemoryEntry, NodeId, Scope, Skill};
use crate::peers::{Peer, PeerStore, Refused};
use crate::replica::{system_clock, Replica, SkillWrite};
use crate::store::{self, ExportReport, ImportReport};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    MemPut {
        scope: String,
        key: String,
        value: serde_json::Value,
    },
    MemGet {
        scope: String,
        key: String,
    },
    MemLs {
        scope: Option<String>,
    },
    MemRm {
        scope: String,
        key: String,
    },
    SkillPut {
        name: String,
        content: String,
        description: Option<String>,
        path: Option<String>,
    },
    SkillGet {
        name: String,
    },
    SkillLs,
    SkillRm {
        name: String,
    },
    DocExport {
        scope: String,
        out: PathBuf,
    },
    PeersAdd {
        id: String,
        addresses: Vec<String>,
        name: Option<String>,
        read: Option<String>,
        write: Option<String>,
    },
    PeersLs,
    PeersRm {
        peer: String,
    },
    PeersPending,
    Status,
    Sync {
        peer: Option<String>,
    },
    /// Bridge messages as the CLI read them (a file or stdin): the daemon may not see the file.
    BridgeIngest {
        payload: String,
        #[serde(with = "unwrap_name")]
        unwrap: Option<Unwrap>,
    },
    BridgeEmit {
        /// Unix seconds.
        since: Option<u64>,
        /// A memory scope or `skills`; everything when absent.
        scope: Option<String>,
    },
    BridgeRespond {
        payload: String,
        #[serde(with = "unwrap_name")]
        unwrap: Option<Unwrap>,
    },
    /// Paths are absolute: the daemon may run in another directory.
    StoreImport {
        path: PathBuf,
    },
    StoreExport {
        path: PathBuf,
        prune: bool,
    },
    /// Rewrites the caches where the node's meshd.toml and `$OPENCLAW_HOME` say, even when
    /// `[cache] enabled = false` (that only stops the daemon from keeping them current).
    CacheWrite,
}

impl Request {
    /// Whether the request may change memory or skills: then peers and views must hear of it.
    pub fn may_write(&self) -> bool {
        matches!(
            self,
            Request::MemPut { .. }
                | Request::MemRm { .. }
                | Request::SkillPut { .. }
                | Request::SkillRm { .. }
                | Request::BridgeIngest { .. }
                | Request::StoreImport { .. }
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    Done {
        message: String,
    },
    Entry {
        winner: MemoryEntry,
        conflicts: Vec<MemoryEntry>,
    },
    Entries {
        entries: Vec<MemoryEntry>,
    },
    Skill {
        skill: Skill,
    },
    Skills {
        skills: Vec<Skill>,
    },
    Peers {
        peers: Vec<PeerStatus>,
    },
    Pending {
        refused: Vec<Refused>,
    },
    Status {
        status: NodeStatus,
    },
    /// `BridgeIngest`: the counts, how many messages changed the replica, and why each
    /// ignored item (by its 1-based position) was ignored.
    Ingested {
        #[serde(with = "remote::Summary")]
        summary: bridge::Summary,
        changed: usize,
        ignored: Vec<(usize, String)>,
    },
    /// Bridge messages, one JSON text each (`BridgeEmit`, `BridgeRespond`).
    Messages {
        lines: Vec<String>,
    },
    Imported {
        #[serde(with = "remote::ImportReport")]
        report: ImportReport,
    },
    Exported {
        #[serde(with = "remote::ExportReport")]
        report: ExportReport,
    },
    /// `CacheWrite`, with where the caches went (the daemon's paths when it served it).
    CachesWritten {
        #[serde(with = "remote::CacheReport")]
        report: CacheReport,
        #[serde(with = "remote::CachePaths")]
        paths: CachePaths,
    },
    NotFound {
        message: String,
    },
    Error {
        message: String,
    },
}

/// A peer as `meshd peers ls` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    #[serde(flatten)]
    pub peer: Peer,
    pub connected: bool,
    /// Documents whose state differs from what this peer last confirmed; `None` when unknown.
    pub documents_behind: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node_id: String,
    pub running: bool,
    /// The QUIC address the daemon listens on, when it runs.
    #[serde(default)]
    pub listen: Option<String>,
    /// UDP bytes sent to peers since the daemon started.
    #[serde(default)]
    pub bytes_sent: u64,
    pub documents: usize,
    pub memory_entries: usize,
    pub skills: usize,
    pub peers: Vec<PeerStatus>,
}

fn error(message: impl ToString) -> Response {
    Response::Error {
        message: message.to_string(),
    }
}

/// A node's store, opened by whoever serves requests: the CLI or the daemon.
pub struct Local<'a> {
    pub replica: &'a mut Replica,
    pub peers: &'a PeerStore,
    pub own: NodeId,
    /// Where `CacheWrite` writes: `[cache]` of meshd.toml with `$OPENCLAW_HOME`.
    pub cache: &'a CachePaths,
}

impl Local<'_> {
    /// Answers every request that needs only the store; `None` for those that need the
    /// running daemon (status of connections, sync).
    pub fn execute(&mut self, request: Request) -> Option<Response> {
        Some(match request {
            Request::MemPut { scope, key, value } => self.mem_put(&scope, &key, value),
            Request::MemGet { scope, key } => self.mem_get(&scope, &key),
            Request::MemLs { scope } => self.mem_ls(scope.as_deref()),
            Request::MemRm { scope, key } => self.mem_rm(&scope, &key),
            Request::SkillPut {
                name,
                content,
                description,
                path,
            } => {
                let write = SkillWrite {
                    name,
                    content,
                    description,
                    path,
                };
                match self.replica.put_skill(write) {
                    Ok(skill) => Response::Done {
                        message: format!(
                            "stored skill {} ({} bytes)",
                            skill.name,
                            skill.content.len()
                        ),
                    },
                    Err(e) => error(e),
                }
            }
            Request::SkillGet { name } => match self.replica.get_skill(&name) {
                Some(skill) => Response::Skill { skill },
                None => not_found_skill(&name),
            },
            Request::SkillLs => Response::Skills {
                skills: self.replica.list_skills(),
            },
            Request::SkillRm { name } => match self.replica.delete_skill(&name) {
                Ok(true) => Response::Done {
                    message: format!("deleted skill {name}"),
                },
                Ok(false) => not_found_skill(&name),
                Err(e) => error(e),
            },
            Request::DocExport { scope, out } => self.doc_export(&scope, &out),
            Request::PeersAdd {
                id,
                addresses,
                name,
                read,
                write,
            } => self.peers_add(&id, addresses, name, read, write),
            Request::PeersLs => match self.peers.list() {
                Ok(peers) => Response::Peers {
                    peers: peers
                        .into_iter()
                        .map(|peer| PeerStatus {
                            peer,
                            connected: false,
                            documents_behind: None,
                        })
                        .collect(),
                },
                Err(e) => error(e),
            },
            Request::PeersRm { peer } => match self.peers.remove(&peer) {
                Ok(peer) => Response::Done {
                    message: format!("removed peer {}", peer.label()),
                },
                Err(e) => error(e),
            },
            Request::PeersPending => match self.peers.refused() {
                Ok(refused) => Response::Pending { refused },
                Err(e) => error(e),
            },
            Request::BridgeIngest { payload, unwrap } => {
                let items = bridge::items(&payload, unwrap);
                match bridge::ingest(self.replica, items, system_clock()) {
                    Ok(report) => Response::Ingested {
                        summary: report.summary,
                        changed: report.changed,
                        ignored: report.reasons,
                    },
                    Err(e) => error(e),
                }
            }
            Request::BridgeEmit { since, scope } => self.bridge_emit(since, scope.as_deref()),
            Request::BridgeRespond { payload, unwrap } => self.bridge_respond(&payload, unwrap),
            Request::StoreImport { path } => match store::import(&path, self.replica) {
                Ok(report) => Response::Imported { report },
                Err(e) => error(e),
            },
            Request::StoreExport { path, prune } => {
                match store::export(self.replica, &path, prune) {
                    Ok(report) => Response::Exported { report },
                    Err(e) => error(e),
                }
            }
            Request::CacheWrite => match cache::write_all(self.replica, self.cache) {
                Ok(report) => Response::CachesWritten {
                    report,
                    paths: self.cache.clone(),
                },
                Err(e) => error(e),
            },
            Request::Status | Request::Sync { .. } => return None,
        })
    }

    fn bridge_emit(&self, since: Option<u64>, scope: Option<&str>) -> Response {
        let selection = match scope {
            None => Selection::Everything,
            Some("skills") => Selection::Skills,
            Some(scope) => match self.scope(scope) {
                Ok(scope) => Selection::Memory(scope),
                Err(e) => return error(e),
            },
        };
        Response::Messages {
            lines: bridge::emit(self.replica, since, &selection),
        }
    }

    /// A `mesh_response` for every `mesh_request` in the payload; everything else is not a
    /// question and is passed over.
    fn bridge_respond(&self, payload: &str, unwrap: Option<Unwrap>) -> Response {
        let lines = bridge::items(payload, unwrap)
            .iter()
            .filter_map(|item| item.as_ref().ok())
            .filter_map(|value| match bridge::classify(value) {
                Ok(bridge::Message::Request(request)) => Some(request),
                _ => None,
            })
            .map(|request| bridge::respond(self.replica, &request, system_clock() / 1000))
            .collect();
        Response::Messages { lines }
    }

    fn scope(&self, text: &str) -> Result<Scope, ValidationError> {
        Scope::parse(text, self.replica.node_id())
    }

    fn mem_put(&mut self, scope: &str, key: &str, value: serde_json::Value) -> Response {
        let scope = match self.scope(scope) {
            Ok(scope) => scope,
            Err(e) => return error(e),
        };
        match self.replica.put_memory(&scope, key, value) {
            Ok(entry) => Response::Entry {
                winner: entry,
                conflicts: Vec::new(),
            },
            Err(e) => error(e),
        }
    }

    fn mem_get(&mut self, scope: &str, key: &str) -> Response {
        let scope = match self.scope(scope) {
            Ok(scope) => scope,
            Err(e) => return error(e),
        };
        match self.replica.memory_versions(&scope, key) {
            Some((winner, conflicts)) if !winner.deleted => Response::Entry { winner, conflicts },
            _ => not_found_key(&scope, key),
        }
    }

    fn mem_ls(&mut self, scope: Option<&str>) -> Response {
        let scope = match scope.map(|s| self.scope(s)).transpose() {
            Ok(scope) => scope,
            Err(e) => return error(e),
        };
        Response::Entries {
            entries: self.replica.list_memory(scope.as_ref()),
        }
    }

    fn mem_rm(&mut self, scope: &str, key: &str) -> Response {
        let scope = match self.scope(scope) {
            Ok(scope) => scope,
            Err(e) => return error(e),
        };
        match self.replica.delete_memory(&scope, key) {
            Ok(true) => Response::Done {
                message: format!("deleted {scope}:{key}"),
            },
            Ok(false) => not_found_key(&scope, key),
            Err(e) => error(e),
        }
    }

    fn doc_export(&mut self, scope: &str, out: &std::path::Path) -> Response {
        let doc = if scope == "skills" {
            DocId::Skills
        } else {
            match self.scope(scope) {
                Ok(scope) => DocId::Memory(scope),
                Err(e) => return error(e),
            }
        };
        let Some(bytes) = self.replica.export(&doc) else {
            return Response::NotFound {
                message: format!("this node has no {doc} document yet"),
            };
        };
        match std::fs::write(out, &bytes) {
            Ok(()) => Response::Done {
                message: format!("wrote {doc} ({} bytes) to {}", bytes.len(), out.display()),
            },
            Err(e) => error(format!("cannot write {}: {e}", out.display())),
        }
    }

    fn peers_add(
        &mut self,
        id: &str,
        addresses: Vec<String>,
        name: Option<String>,
        read: Option<String>,
        write: Option<String>,
    ) -> Response {
        let id: NodeId = match id.parse() {
            Ok(id) => id,
            Err(e) => return error(e),
        };
        let defaults = Access::default_for_peer();
        let parse = |list: Option<String>, default: Vec<Pattern>| {
            list.map_or(Ok(default), |l| Pattern::parse_list(&l))
        };
        let access = match (parse(read, defaults.read), parse(write, defaults.write)) {
            (Ok(read), Ok(write)) => Access { read, write },
            (Err(e), _) | (_, Err(e)) => return error(e),
        };
        let peer = Peer {
            id,
            name,
            addresses,
            access,
            last_sync: None,
        };
        let label = peer.label();
        match self.peers.add(&self.own, peer) {
            Ok(replaced) => Response::Done {
                message: format!(
                    "{} peer {label}",
                    if replaced { "updated" } else { "added" }
                ),
            },
            Err(e) => error(e),
        }
    }
}

fn not_found_key(scope: &Scope, key: &str) -> Response {
    Response::NotFound {
        message: format!("no entry {key} in scope {scope}"),
    }
}

fn not_found_skill(name: &str) -> Response {
    Response::NotFound {
        message: format!("no skill named {name}"),
    }
}

/// An envelope travels by the name the CLI takes (`telegram`, `discord`, `generic`).
mod unwrap_name {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::bridge::Unwrap;

    pub fn serialize<S: Serializer>(unwrap: &Option<Unwrap>, s: S) -> Result<S::Ok, S::Error> {
        unwrap.map(|u| u.to_string()).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Unwrap>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|name| name.parse().map_err(D::Error::custom))
            .transpose()
    }
}

/// The wire form of the library's reports, which serialize only (in the shape the CLI
/// prints). serde's remote derive builds and reads the real types field by field, so a field
/// added there fails to compile here instead of going missing on the socket.
mod remote {
    use std::path::PathBuf;

    use serde::{Deserialize, Serialize};

    use crate::{bridge, cache, store};

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "bridge::Summary")]
    pub struct Summary {
        ingested: usize,
        memory: usize,
        skill: usize,
        ignored: usize,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "store::ImportReport")]
    pub struct ImportReport {
        memory: usize,
        skills: usize,
        unchanged: usize,
        skipped: usize,
        /// Skipped when the report is printed, but the CLI prints each reason itself.
        reasons: Vec<String>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "store::ExportReport")]
    pub struct ExportReport {
        memory: usize,
        skills: usize,
        removed: usize,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "cache::CacheReport")]
    pub struct CacheReport {
        written: usize,
        unchanged: usize,
        removed: usize,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "cache::CachePaths")]
    pub struct CachePaths {
        openclaw_home: PathBuf,
        skills_dir: PathBuf,
        memory_dir: PathBuf,
    }
}
