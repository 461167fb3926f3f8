//! Collects what a session wants to say about each document while it handles a message, then
//! cuts it into messages under the size limit.

use std::collections::{BTreeMap, HashSet};

use automerge::{Change, ChangeHash};

use super::bundle;
use super::message::{
    Bundle, DocPart, Have, Heads, Knowledge, Message, Range, Sync, WireSignature, MAX_MESSAGE,
};
use crate::model::DocId;

/// Room left in each message for everything around the parts.
const MESSAGE_BUDGET: usize = MAX_MESSAGE - (64 << 10);

#[derive(Default)]
struct Draft {
    heads: Option<Heads>,
    have: Option<Have>,
    need: Vec<ChangeHash>,
    ranges: Vec<Range>,
    document: Vec<Bundle>,
    changes: Vec<Change>,
    queued: HashSet<ChangeHash>,
    signatures: Vec<WireSignature>,
    reset: bool,
}

#[derive(Default)]
pub struct Outbox {
    drafts: BTreeMap<DocId, Draft>,
    refusals: Vec<Message>,
}

impl Outbox {
    fn draft(&mut self, doc: &DocId) -> &mut Draft {
        self.drafts.entry(doc.clone()).or_default()
    }

    pub fn heads(&mut self, doc: &DocId, heads: &[ChangeHash], yours: Knowledge) {
        self.draft(doc).heads = Some(Heads {
            hashes: heads.iter().map(|h| h.0).collect(),
            yours,
        });
    }

    pub fn has_heads(&self, doc: &DocId) -> bool {
        self.drafts.get(doc).is_some_and(|d| d.heads.is_some())
    }

    pub fn have(&mut self, doc: &DocId, have: Have) {
        self.draft(doc).have = Some(have);
    }

    pub fn need(&mut self, doc: &DocId, hashes: impl IntoIterator<Item = ChangeHash>) {
        let draft = self.draft(doc);
        for hash in hashes {
            if !draft.need.contains(&hash) {
                draft.need.push(hash);
            }
        }
    }

    pub fn ranges(&mut self, doc: &DocId, ranges: Vec<Range>) {
        self.draft(doc).ranges.extend(ranges);
    }

    /// Queues a change once per outbox, in the order given (callers give dependency order).
    pub fn change(&mut self, doc: &DocId, change: Change) {
        let draft = self.draft(doc);
        if draft.queued.insert(change.hash()) {
            draft.changes.push(change);
        }
    }

    /// What each document's queued changes are: `None` for a whole document. The session
    /// looks up the signatures that vouch for them.
    pub fn sending(&self) -> Vec<(DocId, Option<HashSet<ChangeHash>>)> {
        self.drafts
            .iter()
            .filter(|(_, d)| !d.document.is_empty() || !d.changes.is_empty())
            .map(|(doc, d)| (doc.clone(), d.document.is_empty().then(|| d.queued.clone())))
            .collect()
    }

    /// The signatures to send with `doc`'s changes.
    pub fn signatures(&mut self, doc: &DocId, signatures: Vec<WireSignature>) {
        self.draft(doc).signatures = signatures;
    }

    /// The whole document, as `bundle::document` cut it.
    pub fn document(&mut self, doc: &DocId, bundles: Vec<Bundle>) {
        self.draft(doc).document = bundles;
    }

    pub fn reset(&mut self, doc: &DocId) {
        self.draft(doc).reset = true;
    }

    pub fn refuse(&mut self, doc: &DocId, reason: String) {
        self.refusals.push(Message::Refused {
            doc: doc.name(),
            reason,
        });
    }

    /// The messages to send. `complete` marks a summary that lists every shared document: the
    /// first part of every document then goes in the first message, so the receiver can read
    /// "absent from the first message" as "absent here".
    pub fn into_messages(self, complete: bool) -> Vec<Message> {
        let mut heads_parts = Vec::new();
        let mut bundle_parts = Vec::new();
        for (doc, draft) in self.drafts {
            let (head, rest) = draft.into_parts(doc.name());
            heads_parts.extend(head);
            bundle_parts.extend(rest);
        }
        let total: usize = heads_parts.iter().chain(&bundle_parts).map(part_size).sum();
        let mut messages = self.refusals;
        if total <= MESSAGE_BUDGET {
            let docs = merge_single_bundles(heads_parts, bundle_parts);
            if !docs.is_empty() || complete {
                messages.push(Message::Sync(Sync { complete, docs }));
            }
            return messages;
        }
        let mut first = true;
        for docs in pack(heads_parts.into_iter().chain(bundle_parts)) {
            messages.push(Message::Sync(Sync {
                complete: complete && first,
                docs,
            }));
            first = false;
        }
        messages
    }
}

impl Draft {
    /// The document's first part (everything but the bundles, and `more` when bundles
    /// follow), and one part per bundle, the last with `more: false`.
    fn into_parts(self, name: String) -> (Option<DocPart>, Vec<DocPart>) {
        let mut bundles = self.document;
        bundles.extend(bundle::pack(&self.changes));
        let count = bundles.len();
        let mut signatures = Some(self.signatures);
        let head = DocPart {
            doc: name.clone(),
            heads: self.heads,
            have: self.have,
            need: self.need.iter().map(|h| h.0).collect(),
            ranges: self.ranges,
            changes: None,
            reset: self.reset,
            more: count > 0,
            signatures: match count {
                0 => signatures.take().unwrap_or_default(),
                _ => Vec::new(),
            },
        };
        // The signatures ride with the last bundle: the receiver holds the changes until
        // they are vouched for, and the last bundle holds the newest changes anyway.
        let rest = bundles
            .into_iter()
            .enumerate()
            .map(|(i, bundle)| DocPart {
                changes: Some(bundle),
                more: i + 1 < count,
                signatures: match i + 1 == count {
                    true => signatures.take().unwrap_or_default(),
                    false => Vec::new(),
                },
                ..DocPart::new(name.clone())
            })
            .collect();
        let head = (!head.is_empty() || head.more).then_some(head);
        (head, rest)
    }
}

fn part_size(part: &DocPart) -> usize {
    postcard::experimental::serialized_size(part).expect("parts always serialize")
}

/// When everything fits in one message, a document with a single bundle travels as one part.
fn merge_single_bundles(heads: Vec<DocPart>, bundles: Vec<DocPart>) -> Vec<DocPart> {
    let mut parts = heads;
    let mut rest = Vec::new();
    for bundle in bundles {
        let single = bundles_of(&rest, &bundle.doc) == 0 && !bundle.more;
        match parts.iter_mut().find(|p| p.doc == bundle.doc) {
            Some(head) if single => {
                head.changes = bundle.changes;
                head.signatures = bundle.signatures;
                head.more = false;
            }
            _ => rest.push(bundle),
        }
    }
    parts.extend(rest);
    parts
}

fn bundles_of(parts: &[DocPart], doc: &str) -> usize {
    parts.iter().filter(|p| p.doc == doc).count()
}

/// Greedy packing, in order, under the budget.
fn pack(parts: impl Iterator<Item = DocPart>) -> Vec<Vec<DocPart>> {
    let mut messages = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for part in parts {
        let part_size = part_size(&part);
        if !current.is_empty() && size + part_size > MESSAGE_BUDGET {
            messages.push(std::mem::take(&mut current));
            size = 0;
        }
        size += part_size;
        current.push(part);
    }
    if !current.is_empty() {
        messages.push(current);
    }
    messages
}
