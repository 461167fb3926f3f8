//! `meshd backup DIR` and `meshd restore DIR`: a consistent copy of the store's documents and
//! peer list, taken while the node runs, and merged back.
//!
//! A backup is a directory: `docs/<n>.automerge` per document (Automerge's standard format),
//! `peers.json`, and `manifest.json`, written last, naming each document with its heads. The
//! documents are copied out under one hold of the replica lock, so the backup is one moment
//! of the store; they are saved to disk after the lock is released. Restoring merges: an
//! Automerge merge is a union, so restoring never loses what the store holds now, and the
//! heads of each file must match the manifest (a damaged or partial backup is refused before
//! anything is written). The identity (`node.key`) is not in a backup: it stays in the home.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Command, CommandError, Context, Effects, WHOLE_STORE_PATIENCE};
use crate::model::hlc::rfc3339_seconds;
use crate::model::DocId;
use crate::peers::Peer;
use crate::replica::system_clock;
use crate::trust::ChangeSignature;

const FORMAT: &str = "meshd-backup";
const VERSION: u32 = 1;
const MANIFEST: &str = "manifest.json";
const PEERS: &str = "peers.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    format: String,
    version: u32,
    node_id: String,
    created_at: String,
    docs: Vec<BackedUpDoc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct BackedUpDoc {
    /// The document's name (`mesh`, `node:<id>`, `skills`, ...).
    name: String,
    /// The file under the backup directory.
    file: String,
    heads: Vec<String>,
    bytes: usize,
    /// The signatures that vouch for the document's changes (`trust`); a backup made
    /// before meshd signed changes has none.
    #[serde(default)]
    signatures: Vec<ChangeSignature>,
}

/// Writes a backup of every document and the peer list into a new directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Backup {
    /// Absolute: the daemon may run in another directory. Must not exist, or be empty.
    pub dir: PathBuf,
}

/// What a backup or restore did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupReport {
    pub dir: PathBuf,
    pub documents: usize,
    pub bytes: usize,
    pub peers: usize,
}

impl Command for Backup {
    type Reply = BackupReport;
    const EFFECTS: Effects = Effects::NONE;

    fn patience(&self) -> Duration {
        WHOLE_STORE_PATIENCE
    }

    fn execute(self, node: &Context) -> Result<BackupReport, CommandError> {
        prepare_dir(&self.dir)?;
        let peers = node.peers.list().map_err(CommandError::failed)?;
        // One moment of the store: copies under the lock, saved after it.
        let copies = node.replica.with(|replica| {
            let copies = replica.copy_documents()?;
            copies
                .into_iter()
                .map(|(doc, copy)| Ok((replica.signatures(&doc)?, doc, copy)))
                .collect::<Result<Vec<_>, crate::replica::ReplicaError>>()
        })?;
        let docs_dir = self.dir.join("docs");
        fs::create_dir_all(&docs_dir).map_err(|e| cannot_write(&docs_dir, e))?;
        let mut manifest = Manifest {
            format: FORMAT.into(),
            version: VERSION,
            node_id: node.own.to_string(),
            created_at: rfc3339_seconds(system_clock()),
            docs: Vec::new(),
        };
        let mut bytes = 0;
        for (index, (signatures, doc, copy)) in copies.into_iter().enumerate() {
            let saved = copy.save();
            let file = format!("docs/{index}.automerge");
            write_synced(&self.dir.join(&file), &saved)?;
            bytes += saved.len();
            manifest.docs.push(BackedUpDoc {
                name: doc.name(),
                file,
                heads: copy.get_heads().iter().map(ToString::to_string).collect(),
                bytes: saved.len(),
                signatures,
            });
        }
        let peers_json = serde_json::to_vec_pretty(&peers).map_err(CommandError::failed)?;
        write_synced(&self.dir.join(PEERS), &peers_json)?;
        let manifest_json = serde_json::to_vec_pretty(&manifest).map_err(CommandError::failed)?;
        write_synced(&self.dir.join(MANIFEST), &manifest_json)?;
        sync_dir(&docs_dir)?;
        sync_dir(&self.dir)?;
        Ok(BackupReport {
            dir: self.dir,
            documents: manifest.docs.len(),
            bytes,
            peers: peers.len(),
        })
    }
}

/// Merges a backup's documents into the store and adds its peers that are not known.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Restore {
    /// Absolute: the daemon may run in another directory.
    pub dir: PathBuf,
}

impl Command for Restore {
    type Reply = BackupReport;
    const EFFECTS: Effects = Effects {
        data: true,
        peers: true,
    };

    fn patience(&self) -> Duration {
        WHOLE_STORE_PATIENCE
    }

    fn execute(self, node: &Context) -> Result<BackupReport, CommandError> {
        let manifest = read_manifest(&self.dir)?;
        let mut docs = Vec::new();
        for entry in &manifest.docs {
            let (doc, saved) = read_doc(&self.dir, entry)?;
            docs.push((doc, saved, entry.signatures.clone()));
        }
        let peers: Vec<Peer> = read_json(&self.dir.join(PEERS))?;
        let mut bytes = 0;
        let documents = docs.len();
        for (doc, saved, signatures) in docs {
            bytes += saved.len();
            node.replica
                .with(|replica| merge_vetted(replica, &doc, &saved, signatures.clone()))
                .map_err(|e| CommandError::failed(format!("cannot restore {doc}: {e}")))?;
        }
        node.ensure_peers_writable()?;
        let known = node.peers.list().map_err(CommandError::failed)?;
        let mut added = 0;
        for peer in peers {
            if known.iter().all(|k| k.id != peer.id) {
                node.peers
                    .add(&node.own, peer)
                    .map_err(CommandError::failed)?;
                added += 1;
            }
        }
        Ok(BackupReport {
            dir: self.dir,
            documents,
            bytes,
            peers: added,
        })
    }
}

/// Merges a whole document from outside (a backup, a file), with the clock rule and the
/// trust rule every change from outside obeys (`Replica::vet_file`); the new change hashes.
pub(super) fn merge_vetted(
    replica: &mut crate::replica::Replica,
    doc: &DocId,
    saved: &[u8],
    signatures: Vec<ChangeSignature>,
) -> Result<Vec<automerge::ChangeHash>, String> {
    let keep = replica.vet_file(doc, saved, signatures)?;
    replica
        .merge_document(doc, saved, keep)
        .map_err(|e| e.to_string())
}

fn prepare_dir(dir: &Path) -> Result<(), CommandError> {
    match fs::read_dir(dir).map(|mut entries| entries.next().is_none()) {
        Ok(true) => Ok(()),
        Ok(false) => Err(CommandError::failed(format!(
            "{} is not empty: give a new directory for the backup",
            dir.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(|e| cannot_write(dir, e))
        }
        Err(e) => Err(cannot_write(dir, e)),
    }
}

fn read_manifest(dir: &Path) -> Result<Manifest, CommandError> {
    let manifest: Manifest = read_json(&dir.join(MANIFEST))?;
    if manifest.format != FORMAT || manifest.version != VERSION {
        return Err(CommandError::failed(format!(
            "{} is not a meshd backup of version {VERSION} (format {:?}, version {})",
            dir.display(),
            manifest.format,
            manifest.version
        )));
    }
    Ok(manifest)
}

/// A backed-up document, checked against the manifest before anything is merged.
fn read_doc(dir: &Path, entry: &BackedUpDoc) -> Result<(DocId, Vec<u8>), CommandError> {
    let doc = DocId::from_name(&entry.name).map_err(|e| {
        CommandError::failed(format!("the manifest names an unknown document: {e}"))
    })?;
    let path = dir.join(&entry.file);
    if entry.file.contains("..") || Path::new(&entry.file).is_absolute() {
        return Err(CommandError::failed(format!(
            "the manifest points outside the backup: {}",
            entry.file
        )));
    }
    let saved = fs::read(&path)
        .map_err(|e| CommandError::failed(format!("cannot read {}: {e}", path.display())))?;
    let heads: Vec<String> = crate::sync::whole::load(None, &saved)
        .map_err(|e| damaged(&path, &e))?
        .get_heads()
        .iter()
        .map(ToString::to_string)
        .collect();
    if heads != entry.heads {
        return Err(damaged(&path, "its heads differ from the manifest's"));
    }
    Ok((doc, saved))
}

fn damaged(path: &Path, why: &str) -> CommandError {
    CommandError::failed(format!(
        "the backup file {} is damaged ({why}); nothing was restored",
        path.display()
    ))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, CommandError> {
    let bytes = fs::read(path)
        .map_err(|e| CommandError::failed(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| CommandError::failed(format!("{} is not valid: {e}", path.display())))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), CommandError> {
    let mut file = File::create(path).map_err(|e| cannot_write(path, e))?;
    file.write_all(bytes).map_err(|e| cannot_write(path, e))?;
    file.sync_all().map_err(|e| cannot_write(path, e))
}

fn sync_dir(dir: &Path) -> Result<(), CommandError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| cannot_write(dir, e))
}

fn cannot_write(path: &Path, e: std::io::Error) -> CommandError {
    CommandError::failed(format!("cannot write {}: {e}", path.display()))
}
