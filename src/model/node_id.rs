//! Node ids: BLAKE3 of a node's public key, shown in a grouped, typo-resistant form.
//!
//! The id is the first 20 bytes (160 bits) of the hash: enough that nobody can make a key that
//! hashes to a chosen id, short enough to read aloud. Text form: 32 lowercase RFC 4648 base32
//! characters plus one Luhn mod 32 check character, in three groups of eleven:
//! `abcdefghijk-lmnopqrstuv-wxyz234567c`. Parsing ignores case, dashes and spaces, and rejects
//! an id whose check character does not match, so any single mistyped character, and any two
//! swapped neighbours except the pair `a`/`7` (the blind spot of every Luhn mod N code), are
//! caught before they reach the peer list.

use std::fmt;
use std::str::FromStr;

const ID_BYTES: usize = 20;
const DATA_CHARS: usize = 32;
const GROUP: usize = 11;
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId([u8; ID_BYTES]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeIdError {
    #[error("a node id has {expected} characters (dashes aside), this one has {found}; copy it again from `meshd id` on that node")]
    Length { expected: usize, found: usize },
    #[error("'{0}' is not a node id character (node ids use a-z and 2-7)")]
    Character(char),
    #[error("node id check character does not match: the id was mistyped; copy it again from `meshd id` on that node")]
    Check,
}

impl NodeId {
    pub fn from_public_key(public_key: &[u8]) -> Self {
        let hash = blake3::hash(public_key);
        let mut id = [0u8; ID_BYTES];
        id.copy_from_slice(&hash.as_bytes()[..ID_BYTES]);
        NodeId(id)
    }

    /// The id from its bytes as `as_bytes` gave them (from a ticket, say).
    pub fn from_bytes(bytes: [u8; ID_BYTES]) -> Self {
        NodeId(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; ID_BYTES] {
        &self.0
    }

    /// The id without dashes and check character: the form used inside documents and keys.
    pub fn compact(&self) -> String {
        data_encoding::BASE32_NOPAD
            .encode(&self.0)
            .to_ascii_lowercase()
    }
}

fn luhn_mod32(chars: &[u8]) -> u8 {
    let value = |c: u8| ALPHABET.iter().position(|&a| a == c).unwrap_or(0) as u32;
    let mut factor = 2;
    let mut sum = 0;
    for &c in chars.iter().rev() {
        let addend = factor * value(c);
        sum += addend / 32 + addend % 32;
        factor = if factor == 2 { 1 } else { 2 };
    }
    ALPHABET[((32 - sum % 32) % 32) as usize]
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = self.compact().into_bytes();
        text.push(luhn_mod32(&text));
        let groups: Vec<&str> = text
            .chunks(GROUP)
            .map(|g| std::str::from_utf8(g).expect("base32 is ASCII"))
            .collect();
        f.write_str(&groups.join("-"))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl FromStr for NodeId {
    type Err = NodeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text: Vec<u8> = s
            .chars()
            .filter(|c| *c != '-' && !c.is_whitespace())
            .map(|c| c.to_ascii_lowercase())
            .map(|c| {
                if c.is_ascii() && ALPHABET.contains(&(c as u8)) {
                    Ok(c as u8)
                } else {
                    Err(NodeIdError::Character(c))
                }
            })
            .collect::<Result<_, _>>()?;
        if text.len() != DATA_CHARS + 1 {
            return Err(NodeIdError::Length {
                expected: DATA_CHARS + 1,
                found: text.len(),
            });
        }
        let (data, check) = text.split_at(DATA_CHARS);
        if luhn_mod32(data) != check[0] {
            return Err(NodeIdError::Check);
        }
        let upper = data.to_ascii_uppercase();
        let bytes = data_encoding::BASE32_NOPAD
            .decode(&upper)
            .map_err(|_| NodeIdError::Check)?;
        let mut id = [0u8; ID_BYTES];
        id.copy_from_slice(&bytes);
        Ok(NodeId(id))
    }
}

impl serde::Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NodeId {
        NodeId::from_public_key(b"example public key")
    }

    #[test]
    fn display_round_trips_and_is_grouped() {
        let id = sample();
        let text = id.to_string();
        assert_eq!(text.len(), 35);
        assert_eq!(text.matches('-').count(), 2);
        assert_eq!(text.parse::<NodeId>().unwrap(), id);
        assert_eq!(
            text.to_uppercase()
                .replace('-', " ")
                .parse::<NodeId>()
                .unwrap(),
            id
        );
    }

    #[test]
    fn every_single_character_typo_is_caught() {
        let text = sample().to_string();
        for (i, original) in text.char_indices().filter(|(_, c)| *c != '-') {
            for &replacement in ALPHABET {
                let replacement = replacement as char;
                if replacement == original {
                    continue;
                }
                let mut typo = text.clone();
                typo.replace_range(i..i + 1, &replacement.to_string());
                assert!(typo.parse::<NodeId>().is_err(), "typo {typo} accepted");
            }
        }
    }

    #[test]
    fn swapped_neighbours_are_caught() {
        let compact: Vec<char> = sample().to_string().replace('-', "").chars().collect();
        for i in 0..compact.len() - 1 {
            let pair = [compact[i], compact[i + 1]];
            if pair[0] == pair[1] || pair == ['a', '7'] || pair == ['7', 'a'] {
                continue;
            }
            let mut swapped = compact.clone();
            swapped.swap(i, i + 1);
            let text: String = swapped.into_iter().collect();
            assert!(text.parse::<NodeId>().is_err(), "swap at {i} accepted");
        }
    }

    #[test]
    fn bad_lengths_and_characters_are_explained() {
        assert!(matches!(
            "abc".parse::<NodeId>(),
            Err(NodeIdError::Length { .. })
        ));
        assert_eq!("0bc".parse::<NodeId>(), Err(NodeIdError::Character('0')));
    }
}
