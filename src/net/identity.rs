//! A node's identity: an Ed25519 key and a self-signed certificate. The node id is BLAKE3 of
//! the raw public key, so a peer can be pinned by id alone, with no certificate authority.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::model::NodeId;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot generate the node key: {0}")]
    Generate(rcgen::Error),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} does not hold a usable Ed25519 key: {source}")]
    Key { path: String, source: rcgen::Error },
    #[error(transparent)]
    Signing(#[from] crate::trust::KeyError),
}

pub struct Identity {
    pub node_id: NodeId,
    /// PEM of the PKCS#8 private key.
    pub key_pem: String,
    /// PEM of the self-signed certificate.
    pub cert_pem: String,
}

impl Identity {
    /// The key that signs this node's changes: the same key as its TLS identity.
    pub fn signing_key(&self) -> Result<crate::trust::NodeKey, IdentityError> {
        Ok(crate::trust::NodeKey::from_pem(&self.key_pem)?)
    }

    pub fn generate() -> Result<Identity, IdentityError> {
        let key =
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(IdentityError::Generate)?;
        let node_id = NodeId::from_public_key(key.public_key_raw());
        // The name is informational: peers verify the key's hash, not the name.
        let mut params =
            rcgen::CertificateParams::new(vec![format!("{}.meshd", node_id.compact())])
                .map_err(IdentityError::Generate)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("meshd {node_id}"));
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(4000, 1, 1);
        let cert = params.self_signed(&key).map_err(IdentityError::Generate)?;
        Ok(Identity {
            node_id,
            key_pem: key.serialize_pem(),
            cert_pem: cert.pem(),
        })
    }

    pub fn load(key_path: &Path, cert_path: &Path) -> Result<Identity, IdentityError> {
        let key_pem = read(key_path)?;
        let cert_pem = read(cert_path)?;
        let key = rcgen::KeyPair::from_pem(&key_pem).map_err(|source| IdentityError::Key {
            path: key_path.display().to_string(),
            source,
        })?;
        Ok(Identity {
            node_id: NodeId::from_public_key(key.public_key_raw()),
            key_pem,
            cert_pem,
        })
    }

    /// Writes the key (mode 0600) and the certificate; refuses to replace existing files.
    pub fn save(&self, key_path: &Path, cert_path: &Path) -> Result<(), IdentityError> {
        write_new(key_path, &self.key_pem, 0o600)?;
        write_new(cert_path, &self.cert_pem, 0o644)
    }
}

fn read(path: &Path) -> Result<String, IdentityError> {
    fs::read_to_string(path).map_err(|source| IdentityError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), IdentityError> {
    use std::os::unix::fs::OpenOptionsExt;
    let write_error = |source| IdentityError::Write {
        path: path.display().to_string(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(write_error)?;
    file.write_all(text.as_bytes()).map_err(write_error)?;
    file.sync_all().map_err(write_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_identity_loads_with_the_same_id_and_a_private_key_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (key, cert) = (dir.path().join("node.key"), dir.path().join("node.crt"));
        let identity = Identity::generate().unwrap();
        identity.save(&key, &cert).unwrap();
        assert_eq!(
            Identity::load(&key, &cert).unwrap().node_id,
            identity.node_id
        );
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(
            identity.save(&key, &cert).is_err(),
            "existing key overwritten"
        );
    }

    #[test]
    fn the_identity_signs_changes_under_its_own_node_id() {
        let identity = Identity::generate().unwrap();
        let key = identity.signing_key().unwrap();
        assert_eq!(key.node_id(), identity.node_id);
        let signature = key.sign(&automerge::ChangeHash([7; 32]));
        assert_eq!(signature.verify().unwrap(), identity.node_id);
    }

    #[test]
    fn a_key_that_is_not_ed25519_is_refused_with_what_to_do() {
        let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .unwrap()
            .serialize_pem();
        let error = crate::trust::NodeKey::from_pem(&pem)
            .unwrap_err()
            .to_string();
        assert!(error.contains("restore node.key"), "{error}");
    }

    #[test]
    fn two_identities_differ() {
        assert_ne!(
            Identity::generate().unwrap().node_id,
            Identity::generate().unwrap().node_id
        );
    }
}
