//! The node's signing key: the same Ed25519 key as its TLS identity (`node.key`).

use std::sync::Arc;

use automerge::{ActorId, ChangeHash};
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{Signer, SigningKey};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivatePkcs8KeyDer;

use super::signature::{ChangeSignature, SIGNATURE_BYTES};
use super::{ACTOR_SUFFIX, NODE_ID_BYTES};
use crate::model::NodeId;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the node key is not a PKCS#8 PEM block: {0}; restore node.key from a backup")]
    Pem(String),
    #[error("the node key is not a usable Ed25519 key ({0}); restore node.key from a backup")]
    Key(String),
}

/// A node's private key, and the id it gives the node. Clones share the key.
///
/// Signs with `ed25519-dalek`, not `ring` (which the TLS stack and the verification of
/// signatures use): Ed25519 signatures are deterministic, so both give the same bytes, and
/// dalek's takes about 17 µs a signature on a 2-core VM against ring's 23 (a node signs
/// every change it makes, under the replica's lock; docs/benchmarks.md, Puts).
#[derive(Clone)]
pub struct NodeKey {
    pair: Arc<SigningKey>,
    id: NodeId,
}

impl NodeKey {
    /// The key from `node.key` (PKCS#8 PEM).
    pub fn from_pem(pem: &str) -> Result<NodeKey, KeyError> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| KeyError::Pem(e.to_string()))?;
        let pair = SigningKey::from_pkcs8_der(der.secret_pkcs8_der())
            .map_err(|e| KeyError::Key(e.to_string()))?;
        Ok(NodeKey::from_pair(pair))
    }

    /// The key whose Ed25519 seed is the BLAKE3 of `name`: a fixed node per name, for tests
    /// and benchmarks only (anyone who knows the name has the key).
    pub fn insecure_from_name(name: &str) -> NodeKey {
        NodeKey::from_pair(SigningKey::from_bytes(
            blake3::hash(name.as_bytes()).as_bytes(),
        ))
    }

    fn from_pair(pair: SigningKey) -> NodeKey {
        let id = NodeId::from_public_key(pair.verifying_key().as_bytes());
        NodeKey {
            pair: Arc::new(pair),
            id,
        }
    }

    pub fn node_id(&self) -> NodeId {
        self.id
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.pair.verifying_key().to_bytes()
    }

    /// A fresh actor id naming this node: its id, then random bytes.
    pub fn actor(&self) -> ActorId {
        let mut suffix = [0u8; ACTOR_SUFFIX];
        if getrandom::fill(&mut suffix).is_err() {
            // Without randomness the clock still tells processes apart.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            suffix = nanos.to_le_bytes();
        }
        let mut bytes = Vec::with_capacity(NODE_ID_BYTES + ACTOR_SUFFIX);
        bytes.extend_from_slice(self.id.as_bytes());
        bytes.extend_from_slice(&suffix);
        ActorId::from(bytes)
    }

    /// This node's Ed25519 signature of a bridge message's canonical JSON
    /// (`bridge::signing`), which the reference scheme signs as it is, with no context
    /// prefix. Only a JSON object's text is signed: it starts with `{`, so it can never be
    /// taken for a change signature's message, which starts with its context.
    pub fn sign_json_object(&self, canonical: &str) -> Option<[u8; SIGNATURE_BYTES]> {
        if !canonical.starts_with('{') {
            return None;
        }
        Some(self.pair.sign(canonical.as_bytes()).to_bytes())
    }

    /// This node's signature of the change `hash`.
    pub fn sign(&self, hash: &ChangeHash) -> ChangeSignature {
        let signature = self.pair.sign(&ChangeSignature::message(hash));
        ChangeSignature {
            key: self.public_key(),
            hash: hash.0,
            sig: signature.to_bytes().to_vec(),
        }
    }
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeKey({})", self.id)
    }
}
