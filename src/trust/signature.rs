//! A signature of one change, as it travels and is stored.

use automerge::ChangeHash;
use ring::signature::{UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

use crate::model::NodeId;

pub const SIGNATURE_BYTES: usize = 64;
/// What is signed is this, then the change's hash: a signature made for anything else never
/// passes for one of a change.
const CONTEXT: &[u8] = b"meshd change v1\0";

/// A node's Ed25519 signature over a change hash, with the node's public key: the key hashes
/// to the signer's node id, so no directory of keys is needed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChangeSignature {
    pub key: [u8; 32],
    pub hash: [u8; 32],
    pub sig: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("a signature of change {hash} by node {signer} does not verify")]
    Invalid { hash: String, signer: NodeId },
}

impl ChangeSignature {
    pub(super) fn message(hash: &ChangeHash) -> Vec<u8> {
        [CONTEXT, &hash.0].concat()
    }

    pub fn change(&self) -> ChangeHash {
        ChangeHash(self.hash)
    }

    /// The node whose key this is (not yet proof that it signed: see `verify`).
    pub fn signer(&self) -> NodeId {
        NodeId::from_public_key(&self.key)
    }

    /// The signer, when the signature is its own over this change.
    pub fn verify(&self) -> Result<NodeId, SignatureError> {
        let signer = self.signer();
        let valid = self.sig.len() == SIGNATURE_BYTES
            && UnparsedPublicKey::new(&ED25519, self.key)
                .verify(&Self::message(&self.change()), &self.sig)
                .is_ok();
        match valid {
            true => Ok(signer),
            false => Err(SignatureError::Invalid {
                hash: self.change().to_string(),
                signer,
            }),
        }
    }
}
