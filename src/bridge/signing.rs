//! The reference mesh's message signatures (its `mesh/signing.js`): a bridge message may
//! carry `sig`, the base64 Ed25519 signature of its canonical form (`canonical`), by the key
//! of the node it names (`nodeId`, or `sourceNode` for a skill). Keys travel as PEM: SPKI for
//! public keys, as `crypto.generateKeyPairSync('ed25519')` writes them.
//!
//! meshd verifies against the public keys its operator trusts per claimed node id (`[bridge]
//! trusted_keys`), and can sign what it emits with its own node key, so a JavaScript node
//! holding meshd's public key (`meshd id --public-pem`) verifies it with the reference code.

use std::collections::BTreeMap;
use std::fmt;

use data_encoding::{BASE64, HEXLOWER};
use ring::signature::{UnparsedPublicKey, ED25519};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::SubjectPublicKeyInfoDer;

use super::canonical::{self, is_key, Json};
use crate::trust::{NodeKey, SIGNATURE_BYTES};

/// The DER an Ed25519 SPKI starts with (RFC 8410): SEQUENCE { SEQUENCE { OID 1.3.101.112 },
/// BIT STRING of 32 key bytes }; the key follows.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
const PUBLIC_KEY_BYTES: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("this is a private key; give the node's public key instead")]
    Private,
    #[error("no PUBLIC KEY PEM block in it ({0})")]
    Pem(String),
    #[error("the PUBLIC KEY is not an Ed25519 key")]
    NotEd25519,
}

/// A node's Ed25519 public key, trusted for the messages that name that node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: [u8; PUBLIC_KEY_BYTES],
}

impl PublicKey {
    /// The key of a `-----BEGIN PUBLIC KEY-----` block (SPKI).
    pub fn from_spki_pem(pem: &str) -> Result<PublicKey, KeyError> {
        if pem.contains("PRIVATE KEY-----") {
            return Err(KeyError::Private);
        }
        let der = SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| KeyError::Pem(e.to_string()))?;
        let key = der
            .strip_prefix(&ED25519_SPKI_PREFIX[..])
            .and_then(|key| <[u8; PUBLIC_KEY_BYTES]>::try_from(key).ok())
            .ok_or(KeyError::NotEd25519)?;
        Ok(PublicKey { key })
    }

    pub fn from_bytes(key: [u8; PUBLIC_KEY_BYTES]) -> PublicKey {
        PublicKey { key }
    }

    fn spki_der(&self) -> Vec<u8> {
        [&ED25519_SPKI_PREFIX[..], &self.key[..]].concat()
    }

    /// The SPKI PEM, byte for byte as Node's `export({type: 'spki', format: 'pem'})`.
    pub fn to_spki_pem(&self) -> String {
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            BASE64.encode(&self.spki_der())
        )
    }

    /// `sha256:` and the first 16 bytes of the SHA-256 of the SPKI DER, in hex: a short
    /// name for the key in reports and logs.
    pub fn fingerprint(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.spki_der());
        format!("sha256:{}", HEXLOWER.encode(&digest.as_ref()[..16]))
    }
}

/// The public keys trusted per claimed node id (`[bridge] trusted_keys`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedKeys {
    keys: BTreeMap<String, PublicKey>,
}

impl TrustedKeys {
    pub fn insert(&mut self, node: impl Into<String>, key: PublicKey) {
        self.keys.insert(node.into(), key);
    }

    pub fn get(&self, node: &str) -> Option<&PublicKey> {
        self.keys.get(node)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// What a message's signature says about who sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureCheck {
    /// The signature is the claimed node's, by the key trusted for it.
    Verified { node: String, fingerprint: String },
    /// No `sig` (nor `signature`): the claimed node is only a claim.
    Unsigned,
    /// Signed, but no key is trusted for the node it claims (`None`: it claims none), so the
    /// signature cannot be checked and the claim stays a claim.
    UnknownSigner { node: Option<String> },
    /// Signed, and the signature is not the claimed node's: the message must be refused.
    Invalid { reason: String },
}

impl SignatureCheck {
    pub fn is_invalid(&self) -> bool {
        matches!(self, SignatureCheck::Invalid { .. })
    }
}

impl fmt::Display for SignatureCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignatureCheck::Verified { node, fingerprint } => {
                write!(f, "signed by '{node}' (key {fingerprint})")
            }
            SignatureCheck::Unsigned => f.write_str("unsigned"),
            SignatureCheck::UnknownSigner { node: Some(node) } => {
                write!(f, "signed, but no key is trusted for '{node}'")
            }
            SignatureCheck::UnknownSigner { node: None } => {
                f.write_str("signed, but names no node to check it against")
            }
            SignatureCheck::Invalid { reason } => write!(f, "bad signature: {reason}"),
        }
    }
}

fn invalid(reason: impl Into<String>) -> SignatureCheck {
    SignatureCheck::Invalid {
        reason: reason.into(),
    }
}

/// Checks the signature of one message, given as the exact text it arrived in (the
/// canonical form depends on details of that text that `serde_json::Value` loses).
pub fn verify(message_text: &str, trusted: &TrustedKeys) -> SignatureCheck {
    match canonical::parse(message_text) {
        Ok(message) => verify_parsed(&message, trusted),
        Err(error) => invalid(error.to_string()),
    }
}

/// `verify` for a message already read into `message` from `message_text`: an unsigned
/// message (the common case) is told apart without reading its text again.
pub fn check(
    message_text: &str,
    message: &serde_json::Value,
    trusted: &TrustedKeys,
) -> SignatureCheck {
    if message.get("sig").is_none() && message.get("signature").is_none() {
        return SignatureCheck::Unsigned;
    }
    verify(message_text, trusted)
}

fn verify_parsed(message: &Json, trusted: &TrustedKeys) -> SignatureCheck {
    let Some(canonical) = canonical::canonical(message) else {
        return invalid("the message is not a JSON object");
    };
    // The reference reads `msg.sig || msg.signature`: JavaScript truthiness picks the field.
    let (sig, signature) = (message.get("sig"), message.get("signature"));
    let chosen = match (sig, signature) {
        (None, None) => return SignatureCheck::Unsigned,
        (Some(sig), _) if sig.is_truthy() => sig,
        (_, Some(signature)) if signature.is_truthy() => signature,
        _ => return invalid("'sig' is empty"),
    };
    let Some(node) = claimed_node(message) else {
        return SignatureCheck::UnknownSigner { node: None };
    };
    let Some(key) = trusted.get(&node) else {
        return SignatureCheck::UnknownSigner { node: Some(node) };
    };
    let bytes = match chosen.as_text().map(|text| BASE64.decode(text.as_bytes())) {
        None => return invalid("'sig' is not a string"),
        Some(Err(_)) => return invalid("'sig' is not base64"),
        Some(Ok(bytes)) => bytes,
    };
    if bytes.len() != SIGNATURE_BYTES {
        return invalid(format!(
            "'sig' holds {} bytes; an Ed25519 signature has {SIGNATURE_BYTES}",
            bytes.len()
        ));
    }
    match UnparsedPublicKey::new(&ED25519, &key.key).verify(canonical.as_bytes(), &bytes) {
        Ok(()) => SignatureCheck::Verified {
            node,
            fingerprint: key.fingerprint(),
        },
        Err(_) => invalid(format!(
            "it does not match the message and the key trusted for '{node}' ({}); \
             the message was changed, or not signed by that node",
            key.fingerprint()
        )),
    }
}

/// The node a message says it comes from: `sourceNode` for a skill, `nodeId` otherwise.
fn claimed_node(message: &Json) -> Option<String> {
    let field = match message.get("type") {
        Some(Json::String(kind)) if is_key(kind, "skill") => "sourceNode",
        _ => "nodeId",
    };
    message.get(field)?.as_text()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("cannot sign a message that is not JSON: {0}")]
    NotJson(#[from] canonical::ParseError),
    #[error("cannot sign a message that is not a JSON object")]
    NotAnObject,
}

/// `message_text` with `sig`, this node's signature in the reference scheme, as its last
/// field (any `sig` or `signature` it had is dropped). The text is printed the way
/// `JSON.stringify` would print it, which reads back to the same canonical form everywhere.
pub fn sign(message_text: &str, key: &NodeKey) -> Result<String, SignError> {
    let Json::Object(mut entries) = canonical::parse(message_text)? else {
        return Err(SignError::NotAnObject);
    };
    entries.retain(|(name, _)| !is_key(name, "sig") && !is_key(name, "signature"));
    let unsigned = Json::Object(entries);
    let signature = canonical::canonical(&unsigned)
        .and_then(|canonical| key.sign_json_object(&canonical))
        .ok_or(SignError::NotAnObject)?;
    let Json::Object(mut entries) = unsigned else {
        return Err(SignError::NotAnObject);
    };
    let sig = BASE64.encode(&signature).encode_utf16().collect();
    entries.push(("sig".encode_utf16().collect(), Json::String(sig)));
    Ok(canonical::stringify(&Json::Object(entries)))
}

/// This node's public key as SPKI PEM, for a reference node's trusted keys.
pub fn public_key_pem(key: &NodeKey) -> String {
    PublicKey::from_bytes(key.public_key()).to_spki_pem()
}

/// What the bridge checks incoming messages with, and signs outgoing ones with.
#[derive(Debug, Clone, Default)]
pub struct BridgeKeys {
    pub trusted: TrustedKeys,
    /// This node's key when `[bridge] sign = true`.
    pub signer: Option<NodeKey>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGE: &str = r#"{"type":"memory","scope":"mesh","key":"user.preferences","value":{"shortAnswers":true,"a":[1,2.5,"é"]},"nodeId":"ceo","ts":1739123456}"#;

    fn ceo() -> NodeKey {
        NodeKey::insecure_from_name("ceo")
    }

    fn trusting(node: &str, key: &NodeKey) -> TrustedKeys {
        let mut trusted = TrustedKeys::default();
        trusted.insert(node, PublicKey::from_bytes(key.public_key()));
        trusted
    }

    fn with_field(message: &str, field: &str, value: &str) -> String {
        let body = message.trim_end_matches('}');
        format!("{body},\"{field}\":{value}}}")
    }

    #[test]
    fn sign_then_verify_round_trips() {
        let key = ceo();
        let signed = sign(MESSAGE, &key).unwrap();
        let check = verify(&signed, &trusting("ceo", &key));
        let fingerprint = PublicKey::from_bytes(key.public_key()).fingerprint();
        let expected = SignatureCheck::Verified {
            node: "ceo".into(),
            fingerprint,
        };
        assert_eq!(check, expected);
        assert!(signed.ends_with("\"}") && signed.contains(",\"sig\":\""));
        assert_eq!(
            sign(&signed, &key).unwrap(),
            signed,
            "re-signing replaces sig"
        );
    }

    #[test]
    fn a_changed_value_is_invalid() {
        let key = ceo();
        let signed = sign(MESSAGE, &key).unwrap();
        let tampered = signed.replace("\"shortAnswers\":true", "\"shortAnswers\":false");
        assert_ne!(tampered, signed);
        let check = verify(&tampered, &trusting("ceo", &key));
        assert!(check.is_invalid(), "{check}");
        assert!(check.to_string().contains("does not match"), "{check}");
        let reordered = signed.replace(
            "{\"shortAnswers\":true,\"a\":[1,2.5,\"é\"]}",
            "{\"a\":[1,2.5,\"é\"],\"shortAnswers\":true}",
        );
        assert_ne!(reordered, signed);
        assert!(
            verify(&reordered, &trusting("ceo", &key)).is_invalid(),
            "nested key order is signed"
        );
    }

    #[test]
    fn another_nodes_key_is_invalid() {
        let signed = sign(MESSAGE, &NodeKey::insecure_from_name("mallory")).unwrap();
        assert!(verify(&signed, &trusting("ceo", &ceo())).is_invalid());
    }

    #[test]
    fn unsigned_and_unknown_signers_are_told_apart() {
        let trusted = trusting("ceo", &ceo());
        assert_eq!(verify(MESSAGE, &trusted), SignatureCheck::Unsigned);
        let signed = sign(MESSAGE, &ceo()).unwrap();
        assert_eq!(
            verify(&signed, &TrustedKeys::default()),
            SignatureCheck::UnknownSigner {
                node: Some("ceo".into())
            }
        );
        let skill = r#"{"type":"skill","name":"n","sourceNode":"sec","content":"c"}"#;
        let signed_skill = sign(skill, &ceo()).unwrap();
        assert_eq!(
            verify(&signed_skill, &trusted),
            SignatureCheck::UnknownSigner {
                node: Some("sec".into())
            },
            "a skill names its sender in sourceNode"
        );
    }

    #[test]
    fn signature_field_is_read_when_sig_is_falsy() {
        let key = ceo();
        let signed = sign(MESSAGE, &key).unwrap();
        let moved = signed.replace("\"sig\":", "\"signature\":");
        let trusted = trusting("ceo", &key);
        assert!(matches!(
            verify(&moved, &trusted),
            SignatureCheck::Verified { .. }
        ));
        let both = with_field(&moved, "sig", "\"\"");
        assert!(matches!(
            verify(&both, &trusted),
            SignatureCheck::Verified { .. }
        ));
    }

    #[test]
    fn garbage_signatures_are_invalid_without_panic() {
        let trusted = trusting("ceo", &ceo());
        let cases = [
            ("\"\"", "empty"),
            ("null", "empty"),
            ("0", "empty"),
            ("\"not base64!\"", "not base64"),
            ("\"AAAA\"", "3 bytes"),
            ("5", "not a string"),
            ("{\"a\":1}", "not a string"),
            (
                &format!("\"{}\"", BASE64.encode(&[0; 64])),
                "does not match",
            ),
            (&format!("\"{}\"", "A".repeat(1 << 20)), "bytes"),
        ];
        for (sig, reason) in cases {
            let check = verify(&with_field(MESSAGE, "sig", sig), &trusted);
            assert!(check.to_string().contains(reason), "{sig:.40}: {check}");
        }
        for text in ["", "[]", "1", "{\"sig\":", "\"x\""] {
            assert!(verify(text, &trusted).is_invalid(), "{text}");
        }
    }

    #[test]
    fn public_keys_read_back_from_their_pem() {
        let key = PublicKey::from_bytes(ceo().public_key());
        let pem = key.to_spki_pem();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA"));
        assert_eq!(PublicKey::from_spki_pem(&pem), Ok(key));
        let private =
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n";
        assert_eq!(PublicKey::from_spki_pem(private), Err(KeyError::Private));
        assert!(matches!(
            PublicKey::from_spki_pem("hello"),
            Err(KeyError::Pem(_))
        ));
        let mut ed448_oid = ED25519_SPKI_PREFIX.to_vec();
        ed448_oid[8] = 0x71;
        ed448_oid.extend([0; PUBLIC_KEY_BYTES]);
        let other = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            BASE64.encode(&ed448_oid)
        );
        assert_eq!(PublicKey::from_spki_pem(&other), Err(KeyError::NotEd25519));
    }
}
