//! The control socket: a Unix socket in the node's home (mode 0600), one JSON request line
//! and one JSON response line per connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use super::{Reply, Request};

/// Requests carry skill bodies and values of up to a few MiB; anything far larger is refused.
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot talk to the running daemon at {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the daemon sent an answer this meshd does not understand: {0}")]
    Decode(serde_json::Error),
}

/// Sends one request to a running daemon. `Ok(None)` when no daemon listens there.
pub fn send(path: &Path, request: &Request) -> Result<Option<Reply>, ControlError> {
    let io_error = |source| ControlError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut stream = match UnixStream::connect(path) {
        Ok(stream) => stream,
        Err(_) => return Ok(None),
    };
    let mut line = serde_json::to_vec(request).expect("requests always serialize");
    line.push(b'\n');
    stream.write_all(&line).map_err(io_error)?;
    let mut answer = String::new();
    BufReader::new(stream.take(MAX_LINE_BYTES as u64))
        .read_line(&mut answer)
        .map_err(io_error)?;
    serde_json::from_str(&answer)
        .map(Some)
        .map_err(ControlError::Decode)
}
