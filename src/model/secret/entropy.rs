//! High-entropy tokens: long runs of token characters that look random (see "High-entropy
//! tokens" in the module docs of `secret`).

use std::sync::LazyLock;

use regex::Regex;

use super::rules::{is_artifact_name, DATA_URI, PEM_BLOCK, SSH_PUBLIC};
use super::words::DIGEST_PREFIXES;

const MIN_TOKEN_LEN: usize = 32;
const MIN_HEX_LEN: usize = 48;
const HASH_HEX_LENS: [usize; 6] = [32, 40, 56, 64, 96, 128];
const MIN_MIXED_ENTROPY: f64 = 4.0;
const MIN_HEX_ENTROPY: f64 = 3.0;
const MIN_CLASS_SWITCH_RATIO: f64 = 0.3;

pub(super) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'_' | b'-')
}

/// Scans the tokens of `text` outside the public spans (URLs, data URIs, public PEM blocks,
/// SSH public keys).
pub(super) fn high_entropy(text: &str, mut skip: Vec<(usize, usize)>) -> bool {
    for re in [&*DATA_URI, &*PEM_BLOCK, &*SSH_PUBLIC] {
        skip.extend(re.find_iter(text).map(|m| (m.start(), m.end())));
    }
    skip.sort_unstable();
    let bytes = text.as_bytes();
    let mut span = 0;
    let mut i = 0;
    while i < bytes.len() {
        if !bytes.get(i).copied().is_some_and(is_token_byte) {
            i += 1;
            continue;
        }
        let start = i;
        while bytes.get(i).copied().is_some_and(is_token_byte) {
            i += 1;
        }
        let end = i;
        if end - start < MIN_TOKEN_LEN {
            continue;
        }
        // Spans are sorted by start; drop the ones that end before this token.
        while skip.get(span).is_some_and(|&(_, e)| e <= start) {
            span += 1;
        }
        let skipped = skip
            .iter()
            .skip(span)
            .take_while(|&&(s, _)| s < end)
            .any(|&(s, e)| s < end && start < e);
        if !skipped
            && !labelled_artifact(text, start, end)
            && bytes.get(start..end).is_some_and(is_secret_token)
        {
            return true;
        }
    }
    false
}

/// An IPFS CIDv0: the base58 multihash of a SHA-256 digest, which always begins `Qm`.
static CID_V0: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^Qm[1-9A-HJ-NP-Za-km-z]{44}$").expect("CIDv0 pattern must compile")
});

/// Characters that may stand between a label and its value: `sig: X`, `"sig": "X"`, `sig=X`.
const LABEL_GAP: &[u8] = b" \t\"':=";

/// Whether the token at `start..end` says, or is told, that it is a digest or signature: it
/// begins with a digest name and a dash (`sha384-<base64>`), it is a CIDv0, or the name just
/// before it is an artifact name (`signature: <base64>`, `"sha256": "<base64>"`).
fn labelled_artifact(text: &str, start: usize, end: usize) -> bool {
    let token = text.get(start..end).unwrap_or("");
    let lower = token.to_ascii_lowercase();
    let self_labelled = DIGEST_PREFIXES.iter().any(|prefix| {
        lower
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with(['-', '_']))
    });
    if self_labelled || CID_V0.is_match(token) {
        return true;
    }
    let before = text.get(..start).unwrap_or("").as_bytes();
    let gap = before
        .iter()
        .rev()
        .take_while(|b| LABEL_GAP.contains(b))
        .count();
    let name_end = before.len() - gap;
    let name_start = before
        .get(..name_end)
        .unwrap_or(&[])
        .iter()
        .rposition(|&b| !(is_token_byte(b) || b == b'.'))
        .map_or(0, |i| i + 1);
    gap > 0
        && text
            .get(name_start..name_end)
            .is_some_and(|name| !name.is_empty() && is_artifact_name(name))
}

fn is_secret_token(token: &[u8]) -> bool {
    let core = match token {
        [b'0', b'x' | b'X', rest @ ..] => rest,
        _ => token,
    };
    let is_sep = |b: &u8| matches!(b, b'-' | b'_');
    let hexish = core.iter().all(|b| b.is_ascii_hexdigit() || is_sep(b));
    let mixed_case_hex =
        core.iter().any(u8::is_ascii_uppercase) && core.iter().any(u8::is_ascii_lowercase);
    if hexish && !mixed_case_hex {
        return core.split(is_sep).any(is_secret_hex);
    }
    let has_upper = token.iter().any(u8::is_ascii_uppercase);
    let has_lower = token.iter().any(u8::is_ascii_lowercase);
    let has_digit = token.iter().any(u8::is_ascii_digit);
    has_upper
        && has_lower
        && has_digit
        && entropy(token) >= MIN_MIXED_ENTROPY
        && class_switch_ratio(token) >= MIN_CLASS_SWITCH_RATIO
}

fn is_secret_hex(piece: &[u8]) -> bool {
    piece.len() >= MIN_HEX_LEN
        && !HASH_HEX_LENS.contains(&piece.len())
        && piece.iter().any(u8::is_ascii_alphabetic)
        && entropy(piece) >= MIN_HEX_ENTROPY
}

/// Shannon entropy in bits per byte.
fn entropy(bytes: &[u8]) -> f64 {
    if bytes.is_empty() {
        return 0.0;
    }
    let mut counts = [0usize; 256];
    for &b in bytes {
        if let Some(c) = counts.get_mut(usize::from(b)) {
            *c += 1;
        }
    }
    let n = bytes.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

/// Share of neighbouring alphanumerics (separators skipped) that change class among upper
/// case, lower case and digit.
fn class_switch_ratio(bytes: &[u8]) -> f64 {
    let classes: Vec<u8> = bytes
        .iter()
        .filter_map(|b| {
            if b.is_ascii_uppercase() {
                Some(0)
            } else if b.is_ascii_lowercase() {
                Some(1)
            } else if b.is_ascii_digit() {
                Some(2)
            } else {
                None
            }
        })
        .collect();
    if classes.len() < 2 {
        return 0.0;
    }
    let switches = classes.windows(2).filter(|w| w.first() != w.last()).count();
    switches as f64 / (classes.len() - 1) as f64
}
