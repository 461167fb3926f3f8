//! The node's own API token, `<home>/api.token`: 32 random bytes in hex, readable by the
//! node's user only. `meshd init` makes it; `meshd run` and `meshd api serve` make it for a
//! home created before it existed. It is never overwritten. A browser page must present it
//! (`Authorization: Bearer <token>`) to get anything from the API; see `browser`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Random bytes in a token: 256 bits, beyond guessing.
const TOKEN_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the API token {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the API token {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the API token {0} may be read by other users: run `chmod 600 {0}`")]
    Exposed(PathBuf),
    #[error("the API token {0} is empty: delete it, and meshd makes a new one at its next start")]
    Empty(PathBuf),
    #[error("the system's random number generator failed: {0}")]
    Random(#[from] getrandom::Error),
}

/// The token in `path`, made first (mode 0600) when the file does not exist.
pub fn load_or_create(path: &Path) -> Result<String, TokenError> {
    match create(path) {
        Ok(token) => Ok(token),
        // Made earlier, or by a process that raced us: either way it is the node's token.
        Err(TokenError::Write { source, .. })
            if source.kind() == std::io::ErrorKind::AlreadyExists =>
        {
            load(path)
        }
        Err(error) => Err(error),
    }
}

fn create(path: &Path) -> Result<String, TokenError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes)?;
    let token = data_encoding::HEXLOWER.encode(&bytes);
    let write_error = |source| TokenError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(write_error)?;
    file.write_all(format!("{token}\n").as_bytes())
        .map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    Ok(token)
}

fn load(path: &Path) -> Result<String, TokenError> {
    let read_error = |source| TokenError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mode = fs::metadata(path).map_err(read_error)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(TokenError::Exposed(path.to_path_buf()));
    }
    let token = fs::read_to_string(path).map_err(read_error)?;
    match token.trim() {
        "" => Err(TokenError::Empty(path.to_path_buf())),
        token => Ok(token.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_private_and_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.token");
        let token = load_or_create(&path).unwrap();
        assert_eq!(token.len(), 2 * TOKEN_BYTES);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load_or_create(&path).unwrap(), token, "never overwritten");
        let other = tempfile::tempdir().unwrap();
        let other_token = load_or_create(&other.path().join("api.token")).unwrap();
        assert_ne!(other_token, token, "random per node");
    }

    #[test]
    fn a_token_others_can_read_or_an_empty_one_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.token");
        load_or_create(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let error = load_or_create(&path).unwrap_err().to_string();
        assert!(error.contains("chmod 600"), "{error}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, "\n").unwrap();
        let error = load_or_create(&path).unwrap_err().to_string();
        assert!(error.contains("delete it"), "{error}");
    }
}
