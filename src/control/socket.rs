//! The control socket: a Unix socket in the node's home (mode 0600), one JSON request line
//! and one JSON response line per connection.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use super::{Reply, Request};

/// Requests carry skill bodies and values of up to a few MiB, and bridge input in pieces of
/// 8 MiB; anything larger is refused. Replies have no limit: they come from this node's own
/// daemon, and a large store lists large.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

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
    send_within(path, request, None)
}

/// `send`, giving up after `patience` without an answer (an `Io` error of kind `TimedOut`
/// or `WouldBlock`): for `meshd doctor`, which must say that a daemon is stuck rather than
/// wait with it.
pub fn send_within(
    path: &Path,
    request: &Request,
    patience: Option<std::time::Duration>,
) -> Result<Option<Reply>, ControlError> {
    let io_error = |source| ControlError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut stream = match UnixStream::connect(path) {
        Ok(stream) => stream,
        Err(_) => return Ok(None),
    };
    stream.set_read_timeout(patience).map_err(io_error)?;
    let mut line = serde_json::to_vec(request).expect("requests always serialize");
    line.push(b'\n');
    // A daemon that refuses a request answers before it stops reading: read its answer even
    // when our write was cut short.
    let written = stream.write_all(&line);
    let mut answer = String::new();
    let read = BufReader::new(stream).read_line(&mut answer);
    match (written, read) {
        (_, Ok(n)) if n > 0 => serde_json::from_str(&answer)
            .map(Some)
            .map_err(ControlError::Decode),
        (Err(e), _) | (Ok(()), Err(e)) => Err(io_error(e)),
        (Ok(()), Ok(_)) => Err(io_error(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the daemon closed the connection without an answer; see its log",
        ))),
    }
}
