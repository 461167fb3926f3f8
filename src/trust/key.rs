//! The node's signing key: the same Ed25519 key as its TLS identity (`node.key`).

use std::sync::Arc;

use automerge::{ActorId, ChangeHash};
use ring::signature::{Ed25519KeyPair, KeyPair};
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
#[derive(Clone)]
pub struct NodeKey {
    pair: Arc<Ed25519KeyPair>,
    id: NodeId,
}

impl NodeKey {
    /// The key from `node.key` (PKCS#8 PEM).
    pub fn from_pem(pem: &str) -> Result<NodeKey, KeyError> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| KeyError::Pem(e.to_string()))?;
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
            .map_err(|e| KeyError::Key(e.to_string()))?;
        Ok(NodeKey::from_pair(pair))
    }

    /// The key whose Ed25519 seed is the BLAKE3 of `name`: a fixed node per name, for tests
    /// and benchmarks only (anyone who knows the name has the key).
    pub fn insecure_from_name(name: &str) -> NodeKey {
        let pair = Ed25519KeyPair::from_seed_unchecked(blake3::hash(name.as_bytes()).as_bytes())
            .expect("every 32-byte seed is an Ed25519 key");
        NodeKey::from_pair(pair)
    }

    fn from_pair(pair: Ed25519KeyPair) -> NodeKey {
        let id = NodeId::from_public_key(pair.public_key().as_ref());
        NodeKey {
            pair: Arc::new(pair),
            id,
        }
    }

    pub fn node_id(&self) -> NodeId {
        self.id
    }

    pub fn public_key(&self) -> [u8; 32] {
        let mut key = [0; 32];
        key.copy_from_slice(self.pair.public_key().as_ref());
        key
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
        let mut signature = [0; SIGNATURE_BYTES];
        signature.copy_from_slice(self.pair.sign(canonical.as_bytes()).as_ref());
        Some(signature)
    }

    /// This node's signature of the change `hash`.
    pub fn sign(&self, hash: &ChangeHash) -> ChangeSignature {
        let signature = self.pair.sign(&ChangeSignature::message(hash));
        ChangeSignature {
            key: self.public_key(),
            hash: hash.0,
            sig: signature.as_ref().to_vec(),
        }
    }
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeKey({})", self.id)
    }
}
