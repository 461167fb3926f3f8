//! The invite ticket: what `meshd invite` prints and `meshd join` reads.
//!
//! A ticket names the inviting node (its id, which pins its TLS key), where to reach it, the
//! invite it stands for, the one-time secret that proves the joiner holds it, and when it
//! expires. Text form: `MESHD1` then RFC 4648 base32 (no padding) of a postcard record and a
//! 4-byte BLAKE3 checksum, so a ticket cut short or mistyped is caught before anything is
//! dialed. Upper case only, which QR codes store compactly; parsing ignores case and spaces.

use serde::{Deserialize, Serialize};

use crate::model::NodeId;

const PREFIX: &str = "MESHD1";
const CHECKSUM_BYTES: usize = 4;
/// Longest ticket text accepted: a few addresses fit in well under this.
const MAX_TICKET_CHARS: usize = 4096;

/// Which invite a join presents: public, sent on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InviteId(pub [u8; 8]);

/// The one-time secret of an invite. It never travels: the joiner sends a proof made with it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteSecret(pub [u8; 32]);

impl std::fmt::Debug for InviteSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InviteSecret(..)")
    }
}

impl std::fmt::Display for InviteId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&data_encoding::HEXLOWER.encode(&self.0))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub inviter: NodeId,
    /// `HOST:PORT` addresses of the inviter, tried in order.
    pub addresses: Vec<String>,
    pub invite: InviteId,
    pub secret: InviteSecret,
    /// Unix seconds after which the inviter refuses the ticket.
    pub expires: u64,
    /// The inviter's own name (`[node] name`), the joiner's name for it unless told otherwise.
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("this is not a meshd invite ticket (those start with {PREFIX}); copy the whole ticket `meshd invite` printed")]
    Prefix,
    #[error("the ticket is longer than any meshd writes ({0} characters); copy only the ticket `meshd invite` printed")]
    TooLong(usize),
    #[error("the ticket is damaged or cut short (its checksum does not match); copy the whole ticket again")]
    Damaged,
    #[error("the ticket was made by a newer meshd (format {0}); update meshd on this node")]
    Version(u8),
}

/// The postcard record inside the text form.
#[derive(Serialize, Deserialize)]
struct Wire {
    version: u8,
    inviter: [u8; 20],
    addresses: Vec<String>,
    invite: InviteId,
    secret: InviteSecret,
    expires: u64,
    name: Option<String>,
}

const VERSION: u8 = 1;

impl Ticket {
    pub fn encode(&self) -> String {
        let wire = Wire {
            version: VERSION,
            inviter: *self.inviter.as_bytes(),
            addresses: self.addresses.clone(),
            invite: self.invite,
            secret: self.secret.clone(),
            expires: self.expires,
            name: self.name.clone(),
        };
        // Serializing plain owned data into a Vec cannot fail.
        let mut bytes = postcard::to_allocvec(&wire).unwrap_or_default();
        let checksum = blake3::hash(&bytes);
        bytes.extend_from_slice(&checksum.as_bytes()[..CHECKSUM_BYTES]);
        format!("{PREFIX}{}", data_encoding::BASE32_NOPAD.encode(&bytes))
    }

    pub fn decode(text: &str) -> Result<Ticket, TicketError> {
        let text: String = text
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_uppercase();
        if text.len() > MAX_TICKET_CHARS {
            return Err(TicketError::TooLong(text.len()));
        }
        let body = text.strip_prefix(PREFIX).ok_or(TicketError::Prefix)?;
        let bytes = data_encoding::BASE32_NOPAD
            .decode(body.as_bytes())
            .map_err(|_| TicketError::Damaged)?;
        if bytes.len() <= CHECKSUM_BYTES {
            return Err(TicketError::Damaged);
        }
        let (record, checksum) = bytes.split_at(bytes.len() - CHECKSUM_BYTES);
        if blake3::hash(record).as_bytes()[..CHECKSUM_BYTES] != *checksum {
            return Err(TicketError::Damaged);
        }
        if let Some(&version) = record.first().filter(|v| **v != VERSION) {
            return Err(TicketError::Version(version));
        }
        let wire: Wire = postcard::from_bytes(record).map_err(|_| TicketError::Damaged)?;
        Ok(Ticket {
            inviter: NodeId::from_bytes(wire.inviter),
            addresses: wire.addresses,
            invite: wire.invite,
            secret: wire.secret,
            expires: wire.expires,
            name: wire.name,
        })
    }
}

/// What the joiner sends instead of the secret: a keyed hash of both node ids, as TLS proved
/// them on this connection. A proof seen by anyone else is useless to them: it names the
/// joiner's key, which they do not hold, and this one invite, which is then used.
pub fn proof(secret: &InviteSecret, invite: InviteId, joiner: NodeId, inviter: NodeId) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_keyed(&secret.0);
    hasher.update(b"meshd join v1");
    hasher.update(&invite.0);
    hasher.update(joiner.as_bytes());
    hasher.update(inviter.as_bytes());
    *hasher.finalize().as_bytes()
}

/// Compares a presented proof in constant time.
pub fn proof_matches(expected: &[u8; 32], presented: &[u8]) -> bool {
    // blake3::Hash compares in constant time.
    <[u8; 32]>::try_from(presented)
        .is_ok_and(|presented| blake3::Hash::from(presented) == blake3::Hash::from(*expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket() -> Ticket {
        Ticket {
            inviter: NodeId::from_public_key(b"inviter"),
            addresses: vec!["192.0.2.7:7464".into(), "nas.local:7464".into()],
            invite: InviteId([7; 8]),
            secret: InviteSecret([9; 32]),
            expires: 1_900_000_000,
            name: Some("nas".into()),
        }
    }

    #[test]
    fn a_ticket_reads_back_whatever_case_and_spaces_it_is_pasted_with() {
        let text = ticket().encode();
        assert!(text.starts_with("MESHD1"));
        let pasted = format!("  {} \n", text.to_ascii_lowercase());
        assert_eq!(Ticket::decode(&pasted).unwrap(), ticket());
    }

    #[test]
    fn a_mistyped_or_cut_ticket_is_refused_as_damaged() {
        let text = ticket().encode();
        let mut typo = text.clone().into_bytes();
        let at = typo.len() / 2;
        typo[at] = if typo[at] == b'A' { b'B' } else { b'A' };
        let typo = String::from_utf8(typo).unwrap();
        assert_eq!(Ticket::decode(&typo), Err(TicketError::Damaged));
        assert_eq!(
            Ticket::decode(&text[..text.len() - 3]),
            Err(TicketError::Damaged)
        );
        assert_eq!(Ticket::decode("hello"), Err(TicketError::Prefix));
        assert_eq!(Ticket::decode("MESHD1"), Err(TicketError::Damaged));
    }

    #[test]
    fn a_proof_holds_only_for_the_ids_and_secret_it_was_made_with() {
        let (a, b, c) = (
            NodeId::from_public_key(b"a"),
            NodeId::from_public_key(b"b"),
            NodeId::from_public_key(b"c"),
        );
        let secret = InviteSecret([1; 32]);
        let made = proof(&secret, InviteId([2; 8]), a, b);
        assert!(proof_matches(&made, &made));
        assert!(!proof_matches(
            &proof(&secret, InviteId([2; 8]), c, b),
            &made
        ));
        assert!(!proof_matches(
            &proof(&secret, InviteId([3; 8]), a, b),
            &made
        ));
        assert!(!proof_matches(
            &proof(&InviteSecret([5; 32]), InviteId([2; 8]), a, b),
            &made
        ));
        assert!(!proof_matches(&made, &made[..31]));
    }
}
