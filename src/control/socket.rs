//! The control socket: a Unix socket in the node's home (mode 0600), one JSON request line
//! and one JSON response line per connection.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

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
    #[error("the daemon at {path} took the command but gave no answer within {} s: it is stuck or overloaded. See its log, run `meshd doctor`, or restart it (SIGTERM, then `meshd run`); `--timeout` waits longer", waited.as_secs_f32())]
    Unanswered { path: String, waited: Duration },
}

/// Sends one request to a running daemon and waits for its answer at most as long as the
/// request's `patience`. `Ok(None)` when no daemon listens there.
pub fn send(path: &Path, request: &Request) -> Result<Option<Reply>, ControlError> {
    send_within(path, request, request.patience())
}

/// `send`, giving up after `patience` without an answer (`ControlError::Unanswered`): a
/// daemon that takes the connection and never answers is named, never waited for.
pub fn send_within(
    path: &Path,
    request: &Request,
    patience: Duration,
) -> Result<Option<Reply>, ControlError> {
    let io_error = |source| ControlError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut stream = match UnixStream::connect(path) {
        Ok(stream) => stream,
        Err(_) => return Ok(None),
    };
    let deadline = Instant::now() + patience;
    // A request larger than the socket's buffer blocks in the write while the daemon does
    // not read: bound it too.
    stream.set_write_timeout(Some(patience)).map_err(io_error)?;
    let mut line = serde_json::to_vec(request).expect("requests always serialize");
    line.push(b'\n');
    // A daemon that refuses a request answers before it stops reading: read its answer even
    // when our write was cut short.
    let written = stream.write_all(&line);
    let left = deadline.saturating_duration_since(Instant::now());
    stream
        .set_read_timeout(Some(left.max(Duration::from_millis(1))))
        .map_err(io_error)?;
    let mut answer = String::new();
    let read = BufReader::new(stream).read_line(&mut answer);
    let unanswered =
        |e: &std::io::Error| matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock);
    match (written, read) {
        (_, Ok(n)) if n > 0 => serde_json::from_str(&answer)
            .map(Some)
            .map_err(ControlError::Decode),
        (Err(e), _) | (Ok(()), Err(e)) if unanswered(&e) => Err(ControlError::Unanswered {
            path: path.display().to_string(),
            waited: patience,
        }),
        (Err(e), _) | (Ok(()), Err(e)) => Err(io_error(e)),
        (Ok(()), Ok(_)) => Err(io_error(std::io::Error::new(
            ErrorKind::UnexpectedEof,
            "the daemon closed the connection without an answer; see its log",
        ))),
    }
}
