//! The control protocol: what the CLI asks of a node, and the answers. The same requests run
//! against the store directly when no daemon is running, or go over the daemon's control
//! socket when one is (sled allows one process per store: one store, one writer).

pub mod socket;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::model::access::{Access, Pattern};
use crate::model::validate::ValidationError;
use crate::model::{DocId, MemoryEntry, NodeId, Scope, Skill};
use crate::peers::{Peer, PeerStore, Refused};
use crate::replica::{Replica, SkillWrite};

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
            Request::Status | Request::Sync { .. } => return None,
        })
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
