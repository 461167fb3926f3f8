//! Control-socket calls the daemon benchmarks share (`mesh.rs`, `ring.rs`): each panics on
//! an answer a benchmark must never get, so a figure is only printed for correct work.

use std::path::Path;

use meshd::control::{self, MemGet, MemPut};
use serde_json::Value;

use crate::support;

pub fn ask<C: control::Command>(socket: &Path, command: C) -> C::Reply {
    support::ask(socket, command).unwrap_or_else(|e| panic!("{}: {e}", socket.display()))
}

pub fn put(socket: &Path, key: &str, value: &Value) {
    let put = MemPut {
        scope: "mesh".into(),
        key: key.into(),
        value: value.clone(),
    };
    assert_eq!(ask(socket, put).key, key);
}

/// Whether the node holds `key`; it must hold it with `value` if it does. A node that does
/// not answer does not hold it yet.
pub fn has(socket: &Path, key: &str, value: &Value) -> bool {
    let get = MemGet {
        scope: "mesh".into(),
        key: key.into(),
    };
    match support::try_ask(socket, get) {
        Some(Ok(versions)) => {
            assert_eq!(
                versions.winner.value, *value,
                "{key} arrived with another value"
            );
            true
        }
        Some(Err(control::CommandError::NotFound(_))) => false,
        Some(Err(e)) => panic!("get {key}: {e}"),
        // Busy past its patience, or gone: the caller's timeout decides.
        None => false,
    }
}
