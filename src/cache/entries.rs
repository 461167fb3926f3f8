//! What meshd last wrote or imported for each `mesh-memory.json` entry, so that reading back
//! tells an entry someone changed from one the mesh changed since meshd wrote it. Per entry,
//! a 64-bit digest of its label and one of its value (the first 8 bytes of the BLAKE3 the
//! manifest once held); a user's edit goes unnoticed only if its value's digest equals the
//! recorded one, a chance of 2^-64 per edit. Kept in a binary file beside the manifest, one
//! per `mesh-memory.json` directory, written as a stream beside the file itself and read only
//! when someone else changed `mesh-memory.json`: neither the manifest nor the daemon's memory
//! grows with the store.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

/// The start of every digest file: its format.
const MAGIC: &[u8] = b"meshd mesh-memory.json entries 1\n";

/// One entry: the label's digest, then the value's, both little-endian.
const RECORD_BYTES: usize = 16;

fn digest(bytes: &[u8]) -> u64 {
    first_eight(blake3::hash(bytes).as_bytes())
}

fn first_eight(bytes: &[u8; 32]) -> u64 {
    let mut first = [0; 8];
    first.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(first)
}

fn label_digest(label: &str) -> u64 {
    digest(label.as_bytes())
}

/// The digest of a value: of its compact JSON, as the manifest's hashes were.
fn value_digest(value: &Value) -> u64 {
    digest(value.to_string().as_bytes())
}

/// The digest file of the `mesh-memory.json` in `dir`, beside the manifest at `manifest`.
pub fn path_for(manifest: &Path, dir: &Path) -> PathBuf {
    let name = manifest
        .file_name()
        .map_or("cache.manifest".into(), |name| name.to_string_lossy());
    let dir_digest = digest(dir.as_os_str().as_encoded_bytes());
    manifest.with_file_name(format!("{name}.entries-{dir_digest:016x}"))
}

/// The recorded entries of one `mesh-memory.json`, loaded to read it back.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct EntryDigests {
    by_label: HashMap<u64, u64>,
}

impl EntryDigests {
    /// Whether `value` is what meshd last wrote or imported for `label`.
    pub fn knows(&self, label: &str, value: &Value) -> bool {
        self.by_label.get(&label_digest(label)) == Some(&value_digest(value))
    }

    pub fn record(&mut self, label: &str, value: &Value) {
        self.by_label
            .insert(label_digest(label), value_digest(value));
    }

    /// The entries a manifest of an earlier meshd held: label and BLAKE3 of the value in
    /// hex. A hash that is not hex is left out (that entry then counts as unknown).
    pub fn from_hashes<'a>(hashes: impl IntoIterator<Item = (&'a String, &'a String)>) -> Self {
        let by_label = hashes
            .into_iter()
            .filter_map(|(label, hex)| {
                let hash = blake3::Hash::from_hex(hex).ok()?;
                Some((label_digest(label), first_eight(hash.as_bytes())))
            })
            .collect();
        EntryDigests { by_label }
    }

    /// The digests at `path`; none when there is no file. A damaged file is logged and read
    /// as none: the entries then count as unknown, and an entry of the file that differs
    /// from the mesh's is read back as an edit.
    pub fn load(path: &Path) -> EntryDigests {
        match fs::read(path) {
            Ok(bytes) => Self::decode(&bytes).unwrap_or_else(|| {
                tracing::warn!(file = %path.display(), "the digests of mesh-memory.json's entries are damaged; an entry of the file that differs from the mesh counts as an edit");
                EntryDigests::default()
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => EntryDigests::default(),
            Err(error) => {
                tracing::warn!(file = %path.display(), %error, "cannot read the digests of mesh-memory.json's entries; an entry of the file that differs from the mesh counts as an edit");
                EntryDigests::default()
            }
        }
    }

    fn decode(bytes: &[u8]) -> Option<EntryDigests> {
        let records = bytes.strip_prefix(MAGIC)?;
        if records.len() % RECORD_BYTES != 0 {
            return None;
        }
        let by_label = records
            .chunks_exact(RECORD_BYTES)
            .map(|record| {
                let (label, value) = record.split_at(8);
                (le_u64(label), le_u64(value))
            })
            .collect();
        Some(EntryDigests { by_label })
    }

    /// Replaces the file at `path` with these digests.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let mut list = EntryList::create(path)?;
        for (label, value) in &self.by_label {
            list.push(*label, *value);
        }
        list.install()
    }
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut eight = [0; 8];
    eight.copy_from_slice(bytes);
    u64::from_le_bytes(eight)
}

/// A digest file being written, entry by entry, into a temporary file beside its place;
/// `install` puts it there, and dropping it uninstalled removes the temporary file.
pub struct EntryList {
    path: PathBuf,
    temp: PathBuf,
    out: Option<BufWriter<File>>,
    /// The first write that failed: reported by `install`, so that pushing is infallible.
    failed: Option<io::Error>,
}

impl EntryList {
    pub fn create(path: &Path) -> io::Result<EntryList> {
        let mut temp = path.as_os_str().to_owned();
        temp.push(format!(".{}.tmp", std::process::id()));
        let mut list = EntryList {
            path: path.to_path_buf(),
            temp: temp.into(),
            out: None,
            failed: None,
        };
        let mut out = BufWriter::new(File::create(&list.temp)?);
        out.write_all(MAGIC)?;
        list.out = Some(out);
        Ok(list)
    }

    /// Records that meshd wrote `value` for `label`.
    pub fn add(&mut self, label: &str, value: &Value) {
        self.push(label_digest(label), value_digest(value));
    }

    fn push(&mut self, label: u64, value: u64) {
        let (Some(out), None) = (&mut self.out, &self.failed) else {
            return;
        };
        let written = out
            .write_all(&label.to_le_bytes())
            .and_then(|()| out.write_all(&value.to_le_bytes()));
        if let Err(error) = written {
            self.failed = Some(error);
        }
    }

    /// Puts the file in place durably (flush, fsync, rename, fsync of the directory).
    pub fn install(mut self) -> io::Result<()> {
        if let Some(error) = self.failed.take() {
            return Err(error);
        }
        let Some(out) = self.out.take() else {
            return Ok(());
        };
        let file = out.into_inner().map_err(|error| error.into_error())?;
        file.sync_all()?;
        drop(file);
        fs::rename(&self.temp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

impl Drop for EntryList {
    fn drop(&mut self) {
        // After `install` the temporary file is gone already.
        let _ = fs::remove_file(&self.temp);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn what_is_written_is_known_and_a_changed_value_is_not() {
        let temp = tempfile::tempdir().unwrap();
        let path = path_for(&temp.path().join("cache.manifest"), Path::new("/home/x"));
        let mut list = EntryList::create(&path).unwrap();
        list.add("mesh:a", &json!("one"));
        list.add("user:u:b", &json!({"n": 2}));
        list.install().unwrap();
        let read = EntryDigests::load(&path);
        assert!(read.knows("mesh:a", &json!("one")));
        assert!(read.knows("user:u:b", &json!({"n": 2})));
        assert!(!read.knows("mesh:a", &json!("two")));
        assert!(!read.knows("mesh:c", &json!("one")));
        let files: Vec<_> = fs::read_dir(temp.path()).unwrap().flatten().collect();
        assert_eq!(files.len(), 1, "no temporary file is left");
    }

    #[test]
    fn a_damaged_file_knows_nothing_and_each_directory_has_its_own() {
        let temp = tempfile::tempdir().unwrap();
        let manifest = temp.path().join("cache.manifest");
        assert_ne!(
            path_for(&manifest, Path::new("/a")),
            path_for(&manifest, Path::new("/b"))
        );
        let path = path_for(&manifest, Path::new("/a"));
        let mut digests = EntryDigests::default();
        digests.record("mesh:a", &json!(1));
        digests.save(&path).unwrap();
        assert_eq!(EntryDigests::load(&path), digests);
        let mut bytes = fs::read(&path).unwrap();
        bytes.pop();
        fs::write(&path, bytes).unwrap();
        assert_eq!(EntryDigests::load(&path), EntryDigests::default());
    }

    #[test]
    fn the_hashes_of_an_earlier_manifest_carry_over() {
        let value = json!({"a": [1, 2]});
        let hex = blake3::hash(value.to_string().as_bytes())
            .to_hex()
            .to_string();
        let (label, bad) = ("mesh:k".to_string(), "mesh:bad".to_string());
        let not_hex = "zz".to_string();
        let digests = EntryDigests::from_hashes([(&label, &hex), (&bad, &not_hex)]);
        assert!(digests.knows("mesh:k", &value));
        assert!(!digests.knows("mesh:bad", &value));
        assert_eq!(digests.by_label.len(), 1);
    }
}
