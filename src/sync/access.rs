//! Which documents a peer may read and write. The daemon builds an `Access` from the peer
//! list; a session offers only readable documents and refuses changes to the others.

use std::fmt;
use std::sync::Arc;

use crate::model::DocId;

type Rule = Arc<dyn Fn(&DocId) -> bool + Send + Sync>;

/// What a peer may read and write: two predicates over documents, cheap to clone.
#[derive(Clone)]
pub struct Access {
    read: Rule,
    write: Rule,
}

impl Access {
    /// Rules as predicates, e.g. "every document except `user:*`".
    pub fn new(
        read: impl Fn(&DocId) -> bool + Send + Sync + 'static,
        write: impl Fn(&DocId) -> bool + Send + Sync + 'static,
    ) -> Access {
        Access {
            read: Arc::new(read),
            write: Arc::new(write),
        }
    }

    /// Rules as lists of documents.
    pub fn lists(read: Vec<DocId>, write: Vec<DocId>) -> Access {
        Access::new(
            move |doc| read.contains(doc),
            move |doc| write.contains(doc),
        )
    }

    /// A peer that may read and write everything.
    pub fn full() -> Access {
        Access::new(|_| true, |_| true)
    }

    /// Whether the peer may receive `doc`.
    pub fn may_read(&self, doc: &DocId) -> bool {
        (self.read)(doc)
    }

    /// Whether changes to `doc` from the peer are taken.
    pub fn may_write(&self, doc: &DocId) -> bool {
        (self.write)(doc)
    }
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Access { .. }")
    }
}
