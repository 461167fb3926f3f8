//! Reading and replacing `openclaw.json` safely: a backup first, then a temporary file in the
//! same directory, fsynced and renamed over the original with the original's mode and owner.
//! A reader (OpenClaw's gateway) sees the old file or the new one, never a part.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::OpenclawError;

/// Mode of a new `openclaw.json`: it often holds API keys, as OpenClaw's own does.
const NEW_FILE_MODE: u32 = 0o600;

/// The file as found, before any change.
pub struct Existing {
    pub text: String,
    pub metadata: Metadata,
}

/// The file's text and metadata, or `None` when there is no file.
pub fn read(path: &Path) -> Result<Option<Existing>, OpenclawError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(read_error(path, source)),
    };
    let metadata = fs::metadata(path).map_err(|source| read_error(path, source))?;
    let text = String::from_utf8(bytes).map_err(|_| OpenclawError::NotUtf8(path.to_path_buf()))?;
    Ok(Some(Existing { text, metadata }))
}

/// How many names `backup` tries before it gives up.
const BACKUP_NAMES: u32 = 1000;

/// Copies the original beside it as `<name>.bak.<unix seconds>` (a counter follows when that
/// name is taken), with the original's mode. Returns the backup's path.
pub fn backup(path: &Path, original: &Existing) -> Result<PathBuf, OpenclawError> {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let base = format!("{}.bak.{seconds}", file_name(path));
    let mode = original.metadata.permissions().mode() & 0o7777;
    for attempt in 0..BACKUP_NAMES {
        let name = match attempt {
            0 => base.clone(),
            n => format!("{base}.{n}"),
        };
        let backup = path.with_file_name(name);
        let mut file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&backup)
        {
            Ok(file) => file,
            Err(error) if error.kind() == ErrorKind::AlreadyExists => continue,
            Err(source) => return Err(write_error(&backup, source)),
        };
        file.write_all(original.text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|source| write_error(&backup, source))?;
        return Ok(backup);
    }
    let taken = std::io::Error::new(ErrorKind::AlreadyExists, "every backup name is taken");
    Err(write_error(&path.with_file_name(base), taken))
}

/// Replaces the file with `text`, keeping its mode and owner, unless it changed since `original`
/// was read (OpenClaw rewrites its own config too).
pub fn replace(path: &Path, text: &str, original: &Existing) -> Result<(), OpenclawError> {
    let temporary = write_temporary(path, text, Some(&original.metadata))?;
    let current = read(path)?;
    if current.map(|now| now.text).as_deref() != Some(original.text.as_str()) {
        return Err(OpenclawError::ChangedMeanwhile(path.to_path_buf()));
    }
    temporary
        .persist(path)
        .map_err(|error| write_error(path, error.error))?;
    sync_directory(path)
}

/// Creates the file with `text`, refusing to replace one that appeared meanwhile.
pub fn create(path: &Path, text: &str) -> Result<(), OpenclawError> {
    let temporary = write_temporary(path, text, None)?;
    temporary.persist_noclobber(path).map_err(|error| {
        if error.error.kind() == ErrorKind::AlreadyExists {
            OpenclawError::ChangedMeanwhile(path.to_path_buf())
        } else {
            write_error(path, error.error)
        }
    })?;
    sync_directory(path)
}

fn write_temporary(
    path: &Path,
    text: &str,
    like: Option<&Metadata>,
) -> Result<tempfile::NamedTempFile, OpenclawError> {
    let directory = parent(path);
    let mut temporary = tempfile::Builder::new()
        .prefix(&format!(".{}.", file_name(path)))
        .suffix(".tmp")
        .tempfile_in(directory)
        .map_err(|source| write_error(directory, source))?;
    let temporary_path = temporary.path().to_path_buf();
    let failed = |source| write_error(&temporary_path, source);
    let mode = like.map_or(NEW_FILE_MODE, |metadata| {
        metadata.permissions().mode() & 0o7777
    });
    let file = temporary.as_file();
    if let Some(metadata) = like {
        keep_owner(file, metadata, path)?;
    }
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(failed)?;
    temporary.write_all(text.as_bytes()).map_err(failed)?;
    temporary.as_file().sync_all().map_err(failed)?;
    Ok(temporary)
}

/// A root user editing someone else's config must not hand it over to root.
fn keep_owner(file: &File, original: &Metadata, path: &Path) -> Result<(), OpenclawError> {
    let created = file
        .metadata()
        .map_err(|source| write_error(path, source))?;
    if (created.uid(), created.gid()) == (original.uid(), original.gid()) {
        return Ok(());
    }
    std::os::unix::fs::fchown(file, Some(original.uid()), Some(original.gid())).map_err(|source| {
        OpenclawError::KeepOwner {
            path: path.to_path_buf(),
            uid: original.uid(),
            source,
        }
    })
}

/// Makes the rename itself durable.
fn sync_directory(path: &Path) -> Result<(), OpenclawError> {
    let directory = parent(path);
    File::open(directory)
        .and_then(|handle| handle.sync_all())
        .map_err(|source| write_error(directory, source))
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(directory) if !directory.as_os_str().is_empty() => directory,
        _ => Path::new("."),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(String::new, |name| name.to_string_lossy().into_owned())
}

fn read_error(path: &Path, source: std::io::Error) -> OpenclawError {
    OpenclawError::Read {
        path: path.to_path_buf(),
        source,
    }
}

fn write_error(path: &Path, source: std::io::Error) -> OpenclawError {
    OpenclawError::Write {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_keeps_the_mode_and_backup_copies_the_original() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("openclaw.json");
        fs::write(&path, "{ a: 1 }\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let original = read(&path).unwrap().unwrap();

        let first = backup(&path, &original).unwrap();
        let second = backup(&path, &original).unwrap();
        assert_ne!(
            first, second,
            "a second backup in the same second gets its own name"
        );
        assert_eq!(fs::read_to_string(&first).unwrap(), "{ a: 1 }\n");
        let backup_mode = fs::metadata(&first).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            backup_mode & !0o640,
            0,
            "the backup is no more readable than the original"
        );

        replace(&path, "{ a: 2 }\n", &original).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "{ a: 2 }\n");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let leftovers: Vec<_> = fs::read_dir(directory.path())
            .unwrap()
            .filter_map(|entry| entry.ok())
            .filter(|entry| entry.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn replace_refuses_a_file_changed_since_it_was_read() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("openclaw.json");
        fs::write(&path, "{}").unwrap();
        let original = read(&path).unwrap().unwrap();
        fs::write(&path, "{ changed: true }").unwrap();
        let error = replace(&path, "{ mine: true }", &original).unwrap_err();
        assert!(
            matches!(error, OpenclawError::ChangedMeanwhile(_)),
            "{error}"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "{ changed: true }");
    }

    #[test]
    fn create_makes_a_private_file_and_never_replaces_one() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("openclaw.json");
        create(&path, "{}\n").unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let error = create(&path, "{ other: 1 }\n").unwrap_err();
        assert!(
            matches!(error, OpenclawError::ChangedMeanwhile(_)),
            "{error}"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "{}\n");
    }
}
