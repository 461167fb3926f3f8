//! TLS 1.3 with pinned node ids instead of a certificate authority.
//!
//! Each side presents its self-signed certificate from [`Identity`]. A certificate means nothing
//! here except its Ed25519 key: the node id is BLAKE3 of that key, and the TLS 1.3 handshake
//! signature proves the peer holds it. So the verifiers ignore names, dates, intermediates and the
//! self-signature, and decide only on the id, only after the signature has been checked: every
//! refusal recorded as pending names a key its sender really holds.
//!
//! The server accepts a client whose id is in [`PeerPins`]; the client accepts a server whose id
//! is the one it dialled. Configurations are built per connection so that each verifier knows its
//! connection: the server's knows the client's address (for the pending list), the client's knows
//! the id it expects as a typed [`NodeId`].

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, ParsedCertificate};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{
    DigitallySignedStruct, DistinguishedName, OtherError, PeerIncompatible, SignatureScheme,
};

use super::identity::Identity;
use super::pins::{Admission, PeerPins};
use super::{unix_now, NetError};
use crate::model::NodeId;

/// The one application protocol both sides speak; a new incompatible protocol gets `meshd/2`.
pub const ALPN: &[u8] = b"meshd/1";
/// The TLS alert text a client sends when the server is not the node it dialed: the server
/// reads it back from the alert to tell the operator its address is misused.
pub(crate) const MISDIALED: &str = "this is not the node id that was dialled";

/// The protocol of a join exchange (`net::join`): a connection that carries one ticket proof
/// and nothing else, whoever opens it.
pub const JOIN_ALPN: &[u8] = b"meshd-join/1";

/// DER of an Ed25519 SubjectPublicKeyInfo up to the key itself:
/// `SEQUENCE(42) { SEQUENCE(5) { OID 1.3.101.112 } BIT STRING(33) { 0 unused bits, key } }`.
/// RFC 8410 allows exactly this encoding (no algorithm parameters), so matching these 12 bytes
/// plus a 32-byte remainder is a complete parse, with no ASN.1 library beyond webpki's
/// certificate parser that finds the SPKI.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
const ED25519_KEY_LEN: usize = 32;

/// Why a verifier turned a certificate down. Its text travels to the peer in the QUIC close
/// frame, so it names at most the peer's own id.
#[derive(Debug, thiserror::Error)]
enum PinError {
    #[error("the certificate's key is not Ed25519; meshd node ids name Ed25519 keys only")]
    NotEd25519,
    #[error("node id {0} is not in this node's peer list")]
    NotAllowed(NodeId),
    #[error("{MISDIALED}")]
    Unexpected,
}

/// As `rustls::Error::Other`, whose text is our sentence (a `CertificateError::Other` would show
/// its debug form). The peer gets a handshake_failure alert with that text as the close reason.
impl From<PinError> for rustls::Error {
    fn from(e: PinError) -> Self {
        rustls::Error::Other(OtherError(Arc::new(e)))
    }
}

/// The node id a certificate's Ed25519 key stands for.
pub fn cert_node_id(cert: &CertificateDer<'_>) -> Result<NodeId, rustls::Error> {
    Ok(NodeId::from_public_key(&cert_public_key(cert)?))
}

/// A certificate's Ed25519 public key.
fn cert_public_key(cert: &CertificateDer<'_>) -> Result<[u8; 32], rustls::Error> {
    let spki = ParsedCertificate::try_from(cert)?.subject_public_key_info();
    let key = spki
        .as_ref()
        .strip_prefix(&ED25519_SPKI_PREFIX[..])
        .and_then(|key| <[u8; ED25519_KEY_LEN]>::try_from(key).ok())
        .ok_or(PinError::NotEd25519)?;
    Ok(key)
}

/// The Ed25519 public key the peer of a connection proved in the handshake: the key its
/// changes are signed with.
pub fn peer_public_key(connection: &quinn::Connection) -> Option<[u8; 32]> {
    let identity = connection.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    cert_public_key(chain.first()?).ok()
}

/// The authenticated node id of the peer of a connection made by [`super::endpoint`]; `None` only
/// for a connection that did not go through these verifiers or has not finished its handshake.
pub fn peer_node_id(connection: &quinn::Connection) -> Option<NodeId> {
    let identity = connection.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    cert_node_id(chain.first()?).ok()
}

/// The id a verifier refused during one handshake. rustls and quinn hand only text up to the
/// caller, so the verifier leaves the typed id here for the error the endpoint reports.
#[derive(Debug, Clone, Default)]
pub(crate) struct RefusedId(Arc<OnceLock<NodeId>>);

impl RefusedId {
    pub(crate) fn get(&self) -> Option<NodeId> {
        self.0.get().copied()
    }

    fn set(&self, id: NodeId) {
        // One handshake refuses at most once; a second call would carry the same id.
        let _ = self.0.set(id);
    }
}

/// This node's side of TLS: its certificate and key, parsed once, and the shared peer list.
#[derive(Debug)]
pub(crate) struct TlsContext {
    provider: Arc<CryptoProvider>,
    own_cert: Arc<SingleCertAndKey>,
    node_id: NodeId,
    pins: PeerPins,
}

impl TlsContext {
    pub(crate) fn new(identity: &Identity, pins: PeerPins) -> Result<Self, NetError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let bad =
            |what: &str, e: &dyn std::fmt::Display| NetError::Identity(format!("{what}: {e}"));
        let cert = CertificateDer::from_pem_slice(identity.cert_pem.as_bytes())
            .map_err(|e| bad("certificate", &e))?;
        let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())
            .map_err(|e| bad("key", &e))?;
        let node_id = cert_node_id(&cert).map_err(|e| bad("certificate", &e))?;
        // Peers pin the certificate's key; `meshd id` prints the id of the private key. If the
        // two files disagree, every peer would pin an id this node cannot prove.
        if node_id != identity.node_id {
            return Err(bad("certificate", &"it was not made for this key"));
        }
        let certified =
            CertifiedKey::from_der(vec![cert], key, &provider).map_err(|e| bad("key", &e))?;
        Ok(TlsContext {
            provider,
            own_cert: Arc::new(SingleCertAndKey::from(certified)),
            node_id,
            pins,
        })
    }

    pub(crate) fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub(crate) fn pins(&self) -> &PeerPins {
        &self.pins
    }

    /// A server configuration for one incoming connection (`remote`, when known, goes into the
    /// pending record if the client is refused).
    pub(crate) fn server_config(
        &self,
        remote: Option<SocketAddr>,
    ) -> Result<(rustls::ServerConfig, RefusedId), NetError> {
        let refused = RefusedId::default();
        let verifier = Arc::new(AllowedClients {
            pins: self.pins.clone(),
            remote,
            refused: refused.clone(),
            signatures: self.signatures(),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error)?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(self.own_cert.clone());
        config.alpn_protocols = vec![ALPN.to_vec(), JOIN_ALPN.to_vec()];
        // A resumed session restores the client's identity without running the verifier, so a
        // revoked peer could come back on an old ticket. Every handshake authenticates in full;
        // one Ed25519 signature per connection costs nothing at mesh scale.
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;

        Ok((config, refused))
    }

    /// A client configuration for dialling the node `expected`, to speak `alpn`.
    pub(crate) fn client_config(
        &self,
        expected: NodeId,
        alpn: &[u8],
    ) -> Result<(rustls::ClientConfig, RefusedId), NetError> {
        let refused = RefusedId::default();
        let verifier = Arc::new(ExpectedServer {
            expected,
            refused: refused.clone(),
            signatures: self.signatures(),
        });
        let mut config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(self.own_cert.clone());
        config.alpn_protocols = vec![alpn.to_vec()];
        // The server issues no tickets (see `server_config`); say so rather than cache nothing.
        config.resumption = Resumption::disabled();
        // The expected id travels inside the verifier, not in the server name; sending SNI would
        // only tell on-path observers which node is being dialled (QUIC Initials are readable).
        config.enable_sni = false;
        Ok((config, refused))
    }

    fn signatures(&self) -> Signatures {
        Signatures(self.provider.signature_verification_algorithms)
    }
}

fn tls_error(e: rustls::Error) -> NetError {
    NetError::Tls(e.to_string())
}

/// Handshake signature checks shared by both verifiers.
#[derive(Debug, Clone, Copy)]
struct Signatures(WebPkiSupportedAlgorithms);

impl Signatures {
    /// Checks the TLS 1.3 CertificateVerify signature against `cert` with the provider's (ring)
    /// algorithms, then names the key: from here on the peer has proven it holds that id's key.
    fn proven_id(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<(HandshakeSignatureValid, NodeId), rustls::Error> {
        let valid = rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)?;
        Ok((valid, cert_node_id(cert)?))
    }

    /// Unreachable with the TLS 1.3-only configurations above; refusing keeps it so if they
    /// ever change.
    fn tls12() -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    /// Node ids are defined for Ed25519 keys, so that is the only scheme worth asking for.
    fn schemes() -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Server side: admits a client only if its node id is in the peer list.
#[derive(Debug)]
struct AllowedClients {
    pins: PeerPins,
    remote: Option<SocketAddr>,
    refused: RefusedId,
    signatures: Signatures,
}

impl ClientCertVerifier for AllowedClients {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No CA to name: an empty list asks the client for the certificate it has.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    /// Only checks that the certificate names an Ed25519 key; the decision waits for the
    /// signature (below), so an id copied from someone else's certificate is never recorded.
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        cert_node_id(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Signatures::tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let (valid, id) = self.signatures.proven_id(message, cert, dss)?;
        match self.pins.admit(id, self.remote, unix_now()) {
            Admission::Peer | Admission::Joiner => Ok(valid),
            Admission::Refused => {
                self.refused.set(id);
                Err(PinError::NotAllowed(id).into())
            }
        }
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        Signatures::schemes()
    }
}

/// Client side: accepts the server only if it is the node that was dialled.
#[derive(Debug)]
struct ExpectedServer {
    expected: NodeId,
    refused: RefusedId,
    signatures: Signatures,
}

impl ServerCertVerifier for ExpectedServer {
    /// As for clients: check the key type now, decide once the signature proves the key.
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        cert_node_id(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Signatures::tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let (valid, id) = self.signatures.proven_id(message, cert, dss)?;
        if id == self.expected {
            return Ok(valid);
        }
        self.refused.set(id);
        Err(PinError::Unexpected.into())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        Signatures::schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{CertificateError, Connection};

    fn identity() -> Identity {
        Identity::generate().unwrap()
    }

    fn context(identity: &Identity) -> TlsContext {
        TlsContext::new(identity, PeerPins::new()).unwrap()
    }

    fn cert_of(identity: &Identity) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(identity.cert_pem.as_bytes()).unwrap()
    }

    /// One node's (public) certificate with another node's key: what an impersonator can build.
    fn forged(cert_from: &Identity, key_from: &Identity) -> Arc<SingleCertAndKey> {
        let key = PrivateKeyDer::from_pem_slice(key_from.key_pem.as_bytes()).unwrap();
        let signer = rustls::crypto::ring::default_provider()
            .key_provider
            .load_private_key(key)
            .unwrap();
        let certified = CertifiedKey::new(vec![cert_of(cert_from)], signer);
        Arc::new(SingleCertAndKey::from(certified))
    }

    fn client(config: impl Into<Arc<rustls::ClientConfig>>) -> Connection {
        let name = ServerName::try_from("meshd").unwrap();
        rustls::ClientConnection::new(config.into(), name)
            .unwrap()
            .into()
    }

    fn server(config: impl Into<Arc<rustls::ServerConfig>>) -> Connection {
        rustls::ServerConnection::new(config.into()).unwrap().into()
    }

    /// Runs a TLS handshake in memory (TLS over a byte pipe, no QUIC): enough to drive the
    /// configurations and verifiers. The error names the side that failed.
    fn handshake(
        client: &mut Connection,
        server: &mut Connection,
    ) -> Result<(), (&'static str, rustls::Error)> {
        for _ in 0..10 {
            pass(client, server).map_err(|e| ("server", e))?;
            pass(server, client).map_err(|e| ("client", e))?;
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
        }
        panic!("the handshake neither finished nor failed");
    }

    fn pass(from: &mut Connection, to: &mut Connection) -> Result<(), rustls::Error> {
        let mut bytes = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut bytes).unwrap();
        }
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            to.read_tls(&mut rest).unwrap();
            to.process_new_packets()?;
        }
        Ok(())
    }

    fn is_bad_signature(error: &rustls::Error) -> bool {
        matches!(
            error,
            rustls::Error::InvalidCertificate(CertificateError::BadSignature)
        )
    }

    #[test]
    fn a_certificate_names_the_same_id_as_its_identity() {
        let identity = identity();
        assert_eq!(cert_node_id(&cert_of(&identity)).unwrap(), identity.node_id);
    }

    #[test]
    fn a_non_ed25519_certificate_has_no_node_id() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = rcgen::CertificateParams::new(vec!["x.meshd".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let error = cert_node_id(cert.der()).unwrap_err();
        assert!(error.to_string().contains("not Ed25519"), "{error}");
    }

    #[test]
    fn a_key_with_someone_elses_certificate_is_refused_at_startup() {
        let (a, b) = (identity(), identity());
        let mixed = Identity {
            node_id: a.node_id,
            key_pem: a.key_pem,
            cert_pem: b.cert_pem,
        };
        let result = TlsContext::new(&mixed, PeerPins::new());
        assert!(matches!(result, Err(NetError::Identity(_))), "{result:?}");
    }

    #[test]
    fn pinned_nodes_complete_a_handshake() {
        let (a, b) = (identity(), identity());
        let (a_tls, b_tls) = (context(&a), context(&b));
        b_tls.pins().allow(a.node_id);
        let (client_config, _) = a_tls.client_config(b.node_id, ALPN).unwrap();
        let (server_config, _) = b_tls.server_config(None).unwrap();
        handshake(&mut client(client_config), &mut server(server_config)).unwrap();
    }

    #[test]
    fn a_revoked_client_cannot_resume_an_earlier_session() {
        let (a, b) = (identity(), identity());
        let (a_tls, b_tls) = (context(&a), context(&b));
        b_tls.pins().allow(a.node_id);
        let (mut client_config, _) = a_tls.client_config(b.node_id, ALPN).unwrap();
        client_config.resumption = Resumption::in_memory_sessions(8);
        let client_config = Arc::new(client_config);
        let server_config = Arc::new(b_tls.server_config(None).unwrap().0);
        handshake(
            &mut client(client_config.clone()),
            &mut server(server_config.clone()),
        )
        .unwrap();

        b_tls.pins().revoke(a.node_id);
        let result = handshake(&mut client(client_config), &mut server(server_config));
        assert!(matches!(&result, Err(("server", _))), "{result:?}");
    }

    #[test]
    fn a_server_with_a_copied_certificate_fails_the_signature_check() {
        let (a, b, c) = (identity(), identity(), identity());
        let (a_tls, b_tls) = (context(&a), context(&b));
        b_tls.pins().allow(a.node_id);
        let (client_config, refused) = a_tls.client_config(c.node_id, ALPN).unwrap();
        let (mut server_config, _) = b_tls.server_config(None).unwrap();
        server_config.cert_resolver = forged(&c, &b);
        let result = handshake(&mut client(client_config), &mut server(server_config));
        assert!(
            matches!(&result, Err(("client", e)) if is_bad_signature(e)),
            "{result:?}"
        );
        assert_eq!(refused.get(), None);
    }

    #[test]
    fn a_client_with_a_copied_certificate_fails_the_signature_check_and_is_not_recorded() {
        let (a, b, c) = (identity(), identity(), identity());
        let (a_tls, b_tls) = (context(&a), context(&b));
        let (mut client_config, _) = a_tls.client_config(b.node_id, ALPN).unwrap();
        client_config.client_auth_cert_resolver = forged(&c, &a);
        let (server_config, refused) = b_tls.server_config(None).unwrap();
        let result = handshake(&mut client(client_config), &mut server(server_config));
        assert!(
            matches!(&result, Err(("server", e)) if is_bad_signature(e)),
            "{result:?}"
        );
        assert_eq!(refused.get(), None);
        assert!(b_tls.pins().pending().is_empty(), "unproven id recorded");
    }

    #[test]
    fn tls_1_2_is_refused_in_both_directions() {
        let (a, b) = (identity(), identity());
        let (a_tls, b_tls) = (context(&a), context(&b));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls12 = || {
            rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS12])
                .unwrap()
        };

        let (ours, _) = b_tls.server_config(None).unwrap();
        let verifier = Arc::new(ExpectedServer {
            expected: b.node_id,
            refused: RefusedId::default(),
            signatures: a_tls.signatures(),
        });
        let theirs = tls12()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        let result = handshake(&mut client(theirs), &mut server(ours));
        assert!(
            matches!(&result, Err(("server", rustls::Error::PeerIncompatible(_)))),
            "{result:?}"
        );

        let (ours, _) = a_tls.client_config(b.node_id, ALPN).unwrap();
        let theirs = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(b_tls.own_cert.clone());
        let result = handshake(&mut client(ours), &mut server(theirs));
        assert!(
            matches!(&result, Err(("server", rustls::Error::PeerIncompatible(_)))),
            "{result:?}"
        );
    }
}
