//! The messages two sessions exchange and their framing.
//!
//! A frame is `[version: u8][body length: u32 big-endian][body: postcard]`. The version byte
//! comes first so a node can refuse a peer that speaks another protocol version before it
//! parses anything; the length lets the network layer read whole frames off a stream. Decoding
//! checks the version, the length against `MAX_MESSAGE`, that the body is exactly one message,
//! and the message's own limits, and returns an error for anything else: it never panics on
//! bytes from a peer. docs/protocol.md describes every field.

use automerge::ChangeHash;
use serde::{Deserialize, Serialize};

use crate::trust::{ChangeSignature, SIGNATURE_BYTES};

/// The protocol version this code speaks; a frame with another version is refused.
pub const PROTOCOL_VERSION: u8 = 7;
/// Bytes of a change hash that name a change sent in the same transfer as its signature.
pub const SHORT_HASH: usize = 8;
/// Bytes before the body: the version and the body length.
pub const HEADER_LEN: usize = 5;
/// The largest body accepted or produced.
pub const MAX_MESSAGE: usize = 16 << 20;
/// Upper bounds on list lengths inside one message, so that hostile input cannot make a
/// session do unbounded work per byte received.
const MAX_DOCS: usize = 4096;
const MAX_HASHES: usize = 1 << 16;
const MAX_RANGES: usize = 1024;
const MAX_FINGERPRINTS: usize = 1024;

/// A change hash on the wire: the raw 32 bytes.
pub type Hash = [u8; 32];
/// A truncated BLAKE3 digest of a range of change hashes.
pub type Fingerprint = [u8; 8];

/// One message between two sessions; one frame on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// Opens a round: the root summary of every document shared with the peer, plus what the
    /// sender can say without knowing the peer's state (see `Hello`).
    Hello(Hello),
    /// The answer to a `Hello` whose root matched: the round is over.
    InSync,
    /// Everything after the opening: per-document parts, and live pushes.
    Sync(Sync),
    /// The sender refused changes to a document the peer may not write.
    Refused {
        /// The document's name.
        doc: String,
        /// Why, in words for the peer's log.
        reason: String,
    },
}

/// The opening of a round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// BLAKE3 over the names and head summaries of the documents shared with the peer.
    pub root: [u8; 32],
    /// Digest of the shared heads this side stored for the peer, when it stored any. If the
    /// peer's digest matches, a document missing from `docs` has exactly those heads here.
    pub state: Option<Fingerprint>,
    /// Documents whose heads moved since the stored shared heads, with a filter of the changes
    /// made since then.
    pub docs: Vec<DocPart>,
    /// Changes the sender holds, in documents the receiver may read, that the receiver has
    /// not confirmed: how far behind the receiver is in the sender's direction, as the sender
    /// counts it when the round opens.
    pub waiting: u64,
    /// The sender's wall clock when it sent the `Hello`, in milliseconds since the Unix epoch,
    /// so the receiver can estimate the offset between the two clocks. Stamped by the network
    /// layer (sessions keep no clock), so `None` where no one stamps it.
    pub clock: Option<u64>,
}

/// Per-document parts: the answer to a `Hello`, the rest of a round, or a live push.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Sync {
    /// `docs` lists every document the sender shares with the peer: one that is absent has no
    /// changes on the sender's side.
    pub complete: bool,
    /// What the sender says about each document.
    pub docs: Vec<DocPart>,
}

/// What one message says about one document. Every field is optional so that one shape serves
/// every step; docs/protocol.md gives the rules for each.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DocPart {
    /// The document's name (`mesh`, `user:<id>`, `node:<id>`, `skills`).
    pub doc: String,
    /// The sender's current heads.
    pub heads: Option<Heads>,
    /// The sender's changes since heads both sides had, as a Bloom filter.
    pub have: Option<Have>,
    /// Changes the sender asks for by hash.
    pub need: Vec<Hash>,
    /// Range-based reconciliation steps over the set of change hashes.
    pub ranges: Vec<Range>,
    /// Changes for the receiver.
    pub changes: Option<Bundle>,
    /// The sender could not use the receiver's `have`: its `since` heads are unknown here.
    pub reset: bool,
    /// More parts for this document follow (a large transfer spans several messages); the
    /// receiver acts on the document once the last part is in.
    pub more: bool,
    /// Signatures that vouch for the changes sent for this document (see `trust`): on the
    /// document's last part.
    pub signatures: Vec<WireSignature>,
}

/// A [`ChangeSignature`] cut to what the receiver cannot work out itself: the key is left out
/// when the sender signed (the receiver has the sender's key from the TLS handshake), and a
/// change that travels in the same transfer is named by the first [`SHORT_HASH`] bytes of its
/// hash. A signature costs 75 bytes instead of 129; the receiver still checks it against the
/// whole hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireSignature {
    /// The signer's Ed25519 public key; `None` for the sender's own.
    pub key: Option<[u8; 32]>,
    /// The signed change's hash: all 32 bytes, or the first [`SHORT_HASH`].
    pub change: Vec<u8>,
    /// The Ed25519 signature.
    pub sig: Vec<u8>,
}

impl WireSignature {
    /// `signature` on the wire from a sender whose own key is `sender`; `short` when the
    /// signed change travels in the same transfer.
    pub fn new(signature: &ChangeSignature, sender: Option<&[u8; 32]>, short: bool) -> Self {
        let length = if short { SHORT_HASH } else { 32 };
        WireSignature {
            key: (Some(&signature.key) != sender).then_some(signature.key),
            change: signature.hash[..length].to_vec(),
            sig: signature.sig.clone(),
        }
    }

    /// The signatures this may stand for: one per change `matching` its hash (all of them
    /// when only a prefix travelled), signed by its key or else by `sender`. `None` when it
    /// leaves its key out and the sender's key is unknown.
    pub fn candidates(
        &self,
        sender: Option<&[u8; 32]>,
        matching: impl FnOnce(&[u8]) -> Vec<ChangeHash>,
    ) -> Option<Vec<ChangeSignature>> {
        let key = *self.key.as_ref().or(sender)?;
        let hashes = match <[u8; 32]>::try_from(self.change.as_slice()) {
            Ok(hash) => vec![ChangeHash(hash)],
            Err(_) => matching(&self.change),
        };
        Some(
            hashes
                .into_iter()
                .map(|hash| ChangeSignature {
                    key,
                    hash: hash.0,
                    sig: self.sig.clone(),
                })
                .collect(),
        )
    }

    #[cfg(test)]
    fn encode_len(&self) -> usize {
        postcard::experimental::serialized_size(self).expect("signatures always serialize")
    }

    fn well_formed(&self) -> bool {
        matches!(self.change.len(), SHORT_HASH | 32) && self.sig.len() == SIGNATURE_BYTES
    }
}

/// A document's heads, with what the sender knows of the receiver's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heads {
    /// The heads' hashes.
    pub hashes: Vec<Hash>,
    /// Whether the sender holds every head the receiver last announced.
    pub yours: Knowledge,
}

/// What the sender of heads knows of the receiver's heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Knowledge {
    /// The sender has not heard the receiver's heads.
    Unknown,
    /// The sender holds all of them: it sends the exact difference itself.
    HaveAll,
    /// The sender misses some of them: the receiver must say what it has (filter or ranges).
    Lacking,
}

/// The sender's changes since heads both sides held, as a Bloom filter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Have {
    /// Heads both sides held; the filter covers the sender's changes that are not their
    /// ancestors.
    pub since: Vec<Hash>,
    /// A `growable_bloom_filter::GrowableBloom` in postcard form (checked before use).
    pub filter: Vec<u8>,
}

/// One step of range-based set reconciliation. Ranges are inclusive intervals of the first
/// eight bytes of change hashes read as a big-endian `u64`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Range {
    /// `[lo, hi]` cut into `fingerprints.len()` equal parts, with the sender's fingerprint
    /// of each.
    Split {
        /// The range's first value.
        lo: u64,
        /// The range's last value.
        hi: u64,
        /// One per part, in order.
        fingerprints: Vec<Fingerprint>,
    },
    /// Every change hash the sender has in `[lo, hi]`.
    Ids {
        /// The range's first value.
        lo: u64,
        /// The range's last value.
        hi: u64,
        /// The sender's hashes in the range.
        ids: Vec<Hash>,
    },
}

/// Changes, bundled and compressed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Bundle {
    /// zstd over changes in dependency order, each written without its chunk header and with
    /// its dependencies on earlier changes of the payload as references (`linked`).
    Changes(Vec<u8>),
    /// zstd over the whole document in Automerge's own compact format (`save`), for a peer
    /// that has nothing.
    Document(Vec<u8>),
    /// zstd over a slice of a payload too large for one bundle; the next bundle for the same
    /// document continues it, and the `Changes` or `Document` bundle that ends it says what
    /// the whole payload is.
    Piece(Vec<u8>),
}

/// Why bytes from a peer are not a message. The link closes the stream with the reason.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    /// Fewer bytes than a header.
    #[error("frame shorter than its {HEADER_LEN}-byte header")]
    Truncated,
    /// Another protocol version: nothing after the first byte is read.
    #[error("the peer speaks sync protocol {0}, this node {PROTOCOL_VERSION}: run the same meshd release on both (protocol 7 writes the numbers in a change as differences from the change before's, 6 writes the dependencies between changes of one bundle as references, 5 splits a large scope into bucket documents, 4 tells the peer its clock and how many changes wait for it, 3 sent signatures in 75 bytes instead of 129, 2 signed every change, 1 signed nothing)")]
    Version(u8),
    /// A body over `MAX_MESSAGE`, refused from the header alone.
    #[error("message of {0} bytes is over the {MAX_MESSAGE}-byte limit")]
    TooLarge(usize),
    /// The header's length and the frame's disagree.
    #[error("frame length {declared} does not match the {actual} bytes received")]
    Length {
        /// The body length the header gives.
        declared: usize,
        /// The body length received.
        actual: usize,
    },
    /// The body is not exactly one postcard-encoded message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A list inside the message is over its cap.
    #[error("message exceeds a limit: {0}")]
    Limit(&'static str),
}

/// Reads a frame header: the length of the body that follows. The network layer calls this
/// on the first `HEADER_LEN` bytes to know how many more to read.
pub fn body_len(header: &[u8]) -> Result<usize, DecodeError> {
    let header: &[u8; HEADER_LEN] = header
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(DecodeError::Truncated)?;
    if header[0] != PROTOCOL_VERSION {
        return Err(DecodeError::Version(header[0]));
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > MAX_MESSAGE {
        return Err(DecodeError::TooLarge(len));
    }
    Ok(len)
}

impl Message {
    /// The message as one frame. Sessions never build a message over `MAX_MESSAGE`.
    pub fn encode(&self) -> Vec<u8> {
        let body = postcard::to_allocvec(self).expect("messages always serialize");
        debug_assert!(
            body.len() <= MAX_MESSAGE,
            "a session built an oversized message"
        );
        let mut frame = Vec::with_capacity(HEADER_LEN + body.len());
        frame.push(PROTOCOL_VERSION);
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        frame
    }

    /// Parses one whole frame.
    pub fn decode(frame: &[u8]) -> Result<Message, DecodeError> {
        let declared = body_len(frame)?;
        let body = &frame[HEADER_LEN..];
        if body.len() != declared {
            return Err(DecodeError::Length {
                declared,
                actual: body.len(),
            });
        }
        let (message, rest) = postcard::take_from_bytes::<Message>(body)
            .map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(DecodeError::Malformed(format!(
                "{} bytes after the message",
                rest.len()
            )));
        }
        message.check_limits()?;
        Ok(message)
    }

    fn check_limits(&self) -> Result<(), DecodeError> {
        let docs = match self {
            Message::Hello(hello) => &hello.docs,
            Message::Sync(sync) => &sync.docs,
            Message::InSync | Message::Refused { .. } => return Ok(()),
        };
        if docs.len() > MAX_DOCS {
            return Err(DecodeError::Limit("too many documents"));
        }
        docs.iter().try_for_each(DocPart::check_limits)
    }
}

impl DocPart {
    /// A part that only names `doc`; set the fields it needs.
    pub fn new(doc: String) -> DocPart {
        DocPart {
            doc,
            ..DocPart::default()
        }
    }

    /// True when the part says nothing beyond naming its document.
    pub fn is_empty(&self) -> bool {
        self.heads.is_none()
            && self.have.is_none()
            && self.need.is_empty()
            && self.ranges.is_empty()
            && self.changes.is_none()
            && !self.reset
            && !self.more
            && self.signatures.is_empty()
    }

    fn check_limits(&self) -> Result<(), DecodeError> {
        let heads = self.heads.as_ref().map_or(0, |h| h.hashes.len());
        let since = self.have.as_ref().map_or(0, |h| h.since.len());
        if heads > MAX_HASHES
            || since > MAX_HASHES
            || self.need.len() > MAX_HASHES
            || self.signatures.len() > MAX_HASHES
        {
            return Err(DecodeError::Limit("too many hashes"));
        }
        if self.ranges.len() > MAX_RANGES {
            return Err(DecodeError::Limit("too many ranges"));
        }
        if !self.signatures.iter().all(WireSignature::well_formed) {
            return Err(DecodeError::Limit(
                "a signature is not 64 bytes, or names its change by neither 8 nor 32 bytes",
            ));
        }
        for range in &self.ranges {
            match range {
                Range::Split {
                    lo,
                    hi,
                    fingerprints,
                } => {
                    let parts = fingerprints.len();
                    if lo > hi || !(2..=MAX_FINGERPRINTS).contains(&parts) {
                        return Err(DecodeError::Limit("bad range split"));
                    }
                    if u128::from(hi - lo) + 1 < parts as u128 {
                        return Err(DecodeError::Limit("range split finer than its width"));
                    }
                }
                Range::Ids { lo, hi, ids } => {
                    if lo > hi || ids.len() > MAX_HASHES {
                        return Err(DecodeError::Limit("bad id range"));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Message {
        Message::Sync(Sync {
            complete: true,
            docs: vec![DocPart {
                doc: "mesh".into(),
                heads: Some(Heads {
                    hashes: vec![[7; 32]],
                    yours: Knowledge::Lacking,
                }),
                need: vec![[1; 32]],
                ranges: vec![Range::Split {
                    lo: 0,
                    hi: u64::MAX,
                    fingerprints: vec![[0; 8]; 4],
                }],
                changes: Some(Bundle::Changes(vec![1, 2, 3])),
                ..DocPart::default()
            }],
        })
    }

    #[test]
    fn frames_round_trip() {
        let message = sample();
        assert_eq!(Message::decode(&message.encode()).unwrap(), message);
    }

    #[test]
    fn rejects_other_versions_and_lengths() {
        let mut frame = sample().encode();
        frame[0] = 9;
        assert_eq!(Message::decode(&frame), Err(DecodeError::Version(9)));
        let mut frame = sample().encode();
        frame.push(0);
        assert!(matches!(
            Message::decode(&frame),
            Err(DecodeError::Length { .. })
        ));
        let mut huge = vec![PROTOCOL_VERSION];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            Message::decode(&huge),
            Err(DecodeError::TooLarge(_))
        ));
        assert_eq!(Message::decode(&[1, 0]), Err(DecodeError::Truncated));
    }

    #[test]
    fn rejects_splits_finer_than_their_range() {
        let message = Message::Sync(Sync {
            complete: false,
            docs: vec![DocPart {
                ranges: vec![Range::Split {
                    lo: 5,
                    hi: 6,
                    fingerprints: vec![[0; 8]; 3],
                }],
                ..DocPart::new("mesh".into())
            }],
        });
        assert!(matches!(
            Message::decode(&message.encode()),
            Err(DecodeError::Limit(_))
        ));
    }

    #[test]
    fn a_signature_travels_without_what_the_receiver_knows() {
        let signer = crate::trust::NodeKey::insecure_from_name("signer");
        let hash = ChangeHash([9; 32]);
        let full = signer.sign(&hash);
        let own = WireSignature::new(&full, Some(&signer.public_key()), true);
        assert_eq!(own.key, None, "the sender's own key is left out");
        assert_eq!(own.change, hash.0[..SHORT_HASH]);
        let relayed = WireSignature::new(&full, Some(&[1; 32]), false);
        assert_eq!(relayed.key, Some(signer.public_key()));
        assert_eq!(relayed.change, hash.0);
        let part = |signature: WireSignature| {
            Message::Sync(Sync {
                complete: false,
                docs: vec![DocPart {
                    signatures: vec![signature],
                    ..DocPart::new("mesh".into())
                }],
            })
        };
        let sent = part(own.clone());
        assert_eq!(Message::decode(&sent.encode()).unwrap(), sent);
        assert!(own.encode_len() <= 75, "{} bytes", own.encode_len());
        // Back at the receiver: the sender's key and the changes it holds fill in the rest.
        let candidates = own
            .candidates(Some(&signer.public_key()), |prefix| {
                assert_eq!(prefix, &hash.0[..SHORT_HASH]);
                vec![hash]
            })
            .unwrap();
        assert_eq!(candidates, vec![full]);
        assert_eq!(
            own.candidates(None, |_| vec![hash]),
            None,
            "no key to fill in"
        );
        for (change, sig) in [(vec![0; 7], vec![0; 64]), (vec![0; 8], vec![0; 63])] {
            let odd = WireSignature {
                key: None,
                change,
                sig,
            };
            assert!(matches!(
                Message::decode(&part(odd).encode()),
                Err(DecodeError::Limit(_))
            ));
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = Message::decode(&bytes);
            let mut framed = vec![PROTOCOL_VERSION];
            framed.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            framed.extend_from_slice(&bytes);
            let _ = Message::decode(&framed);
        }

        #[test]
        fn mutated_frames_never_panic(index in 0usize..4096, value in proptest::num::u8::ANY) {
            let mut frame = sample().encode();
            let i = index % frame.len();
            frame[i] = value;
            let _ = Message::decode(&frame);
        }
    }
}
