//! The rules, in the order `scan` checks them (see the module docs of `secret`): the prefix
//! and header patterns, URLs and assignments, placeholders, and key-name classification.

use std::sync::LazyLock;

use regex::Regex;

use super::entropy::high_entropy;
use super::words::{
    ARTIFACT_WORDS, CREDENTIAL_BEFORE_KEY, CREDENTIAL_BEFORE_PASS, CREDENTIAL_BEFORE_PHRASE,
    CREDENTIAL_ENDINGS, CREDENTIAL_FORM_WORDS, CREDENTIAL_WORDS, MASK_CHARS,
    NOT_CREDENTIAL_BEFORE_TOKEN, PLACEHOLDER_MARKERS, PLACEHOLDER_WORDS, URL_KEY_PARAMS,
};
use super::SecretRule;

fn re(pattern: &str) -> Regex {
    // The patterns are literals of this module; a typo is caught by every test.
    Regex::new(pattern).expect("secret guard pattern must compile")
}

static PEM_PRIVATE: LazyLock<Regex> =
    LazyLock::new(|| re(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"));
static JWT: LazyLock<Regex> =
    LazyLock::new(|| re(r"(?-u:\b)eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"));
static OPENAI: LazyLock<Regex> =
    LazyLock::new(|| re(r"(?-u:\b)sk-(?:proj-|svcacct-|admin-)?([A-Za-z0-9_-]{20,})"));
static GITHUB: LazyLock<Regex> = LazyLock::new(|| {
    re(r"(?-u:\b)(?:gh[pousr]_([A-Za-z0-9]{36,})|github_pat_([A-Za-z0-9_]{22,}))")
});
static SLACK: LazyLock<Regex> = LazyLock::new(|| re(r"(?-u:\b)xox[abprs]-([A-Za-z0-9-]{10,})"));
static SLACK_WEBHOOK: LazyLock<Regex> = LazyLock::new(|| {
    re(r"hooks\.slack\.com/services/T[A-Za-z0-9]+/B[A-Za-z0-9]+/([A-Za-z0-9]{16,})")
});
static AWS: LazyLock<Regex> = LazyLock::new(|| re(r"(?-u:\b)(?:AKIA|ASIA)([A-Z0-9]{16})(?-u:\b)"));
static AUTH_HEADER: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r#"(?i)(?-u:\b)authorization["']?\s*[:=]\s*["']?(?:bearer|basic|token|digest)\s+([^\s"',;]+)"#,
    )
});
static BEARER: LazyLock<Regex> =
    LazyLock::new(|| re(r"(?i)(?-u:\b)bearer\s+([A-Za-z0-9._~+/-]{20,})"));
static URL: LazyLock<Regex> =
    LazyLock::new(|| re(r#"(?-u:\b)[A-Za-z][A-Za-z0-9+.-]*://[^\s"'<>`]+"#));
/// Only the `name=` part: the value is read by hand so that the search resumes right after
/// the `=` and `--from-literal=password=x` still finds `password=`.
static ASSIGN_UNQUOTED: LazyLock<Regex> = LazyLock::new(|| re(r"([A-Za-z][A-Za-z0-9_.-]*)="));
static ASSIGN_QUOTED: LazyLock<Regex> = LazyLock::new(|| {
    re(r#"([A-Za-z][A-Za-z0-9_.-]*)["']?\s*(?::=|=>|[:=])\s*(?:"([^"\n]*)"|'([^'\n]*)')"#)
});
pub(super) static DATA_URI: LazyLock<Regex> = LazyLock::new(|| {
    re(r"data:(?:image|audio|video|font)/[A-Za-z0-9.+-]+;base64,[A-Za-z0-9+/]+=*")
});
pub(super) static PEM_BLOCK: LazyLock<Regex> =
    LazyLock::new(|| re(r"(?s)-----BEGIN [A-Z0-9 ]+-----.*?-----END [A-Z0-9 ]+-----"));
pub(super) static SSH_PUBLIC: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"(?:ssh-(?:rsa|dss|ed25519)|ecdsa-sha2-nistp(?:256|384|521)|sk-(?:ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com) AAAA[A-Za-z0-9+/]+=*",
    )
});
static ENV_NAME: LazyLock<Regex> = LazyLock::new(|| re(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+$"));
/// One encoded blob, optionally after an algorithm label: `<base64>`, `sha256:<hex>`,
/// `sha512-<base64>`, `ed25519:<base64url>`.
static ENCODED_BLOB: LazyLock<Regex> =
    LazyLock::new(|| re(r"^(?:[A-Za-z][A-Za-z0-9]{0,15}:)?[A-Za-z0-9+/_-]+={0,2}$"));

/// Returns the first rule the text breaks, if any.
pub(super) fn scan(text: &str) -> Option<SecretRule> {
    scan_named(text, false)
}

/// [`scan`] for a value whose name is known: under an artifact name (see [`is_artifact_name`])
/// a value that is one encoded blob is not judged by the statistical rule, every other rule
/// still applies.
pub(super) fn scan_named(text: &str, artifact_name: bool) -> Option<SecretRule> {
    if PEM_PRIVATE.is_match(text) {
        return Some(SecretRule::PrivateKey);
    }
    if JWT.is_match(text) {
        return Some(SecretRule::Jwt);
    }
    let openai = OPENAI.captures_iter(text).any(|c| {
        c.get(1).is_some_and(|body| {
            let b = body.as_str();
            b.bytes()
                .any(|x| x.is_ascii_digit() || x.is_ascii_uppercase())
                && real_body(b)
        })
    });
    if openai {
        return Some(SecretRule::OpenAiKey);
    }
    let github = GITHUB.captures_iter(text).any(|c| {
        c.get(1)
            .or_else(|| c.get(2))
            .is_some_and(|b| real_body(b.as_str()))
    });
    if github {
        return Some(SecretRule::GithubToken);
    }
    let slack = SLACK.captures_iter(text).any(|c| {
        c.get(1).is_some_and(|body| {
            let b = body.as_str();
            b.bytes().any(|x| x.is_ascii_digit()) && real_body(b)
        })
    }) || SLACK_WEBHOOK
        .captures_iter(text)
        .any(|c| c.get(1).is_some_and(|b| real_body(b.as_str())));
    if slack {
        return Some(SecretRule::SlackToken);
    }
    let aws = AWS
        .captures_iter(text)
        .any(|c| c.get(1).is_some_and(|b| real_body(b.as_str())));
    if aws {
        return Some(SecretRule::AwsAccessKey);
    }
    if bearer(text) {
        return Some(SecretRule::BearerHeader);
    }
    let urls: Vec<(usize, usize)> = URL.find_iter(text).map(|m| (m.start(), m.end())).collect();
    if urls
        .iter()
        .any(|&(s, e)| text.get(s..e).is_some_and(url_has_credentials))
    {
        return Some(SecretRule::CredentialKeyName);
    }
    if assignment(text) {
        return Some(SecretRule::CredentialKeyName);
    }
    let named_artifact = artifact_name && ENCODED_BLOB.is_match(text.trim());
    if !named_artifact && high_entropy(text, urls) {
        return Some(SecretRule::HighEntropyToken);
    }
    None
}

/// A body with fewer than six distinct characters is a masked example (`ghp_xxxx...`).
fn real_body(body: &str) -> bool {
    let mut seen = [false; 128];
    let mut distinct = 0;
    for b in body.bytes() {
        if let Some(slot) = seen.get_mut(usize::from(b)) {
            if !*slot {
                *slot = true;
                distinct += 1;
            }
        }
    }
    distinct >= 6
}

fn bearer(text: &str) -> bool {
    let header = AUTH_HEADER.captures_iter(text).any(|c| {
        c.get(1)
            .is_some_and(|v| v.as_str().chars().count() >= 8 && !is_placeholder(v.as_str()))
    });
    header
        || BEARER.captures_iter(text).any(|c| {
            c.get(1).is_some_and(|v| {
                let v = v.as_str();
                let classes = [
                    v.bytes().any(|b| b.is_ascii_uppercase()),
                    v.bytes().any(|b| b.is_ascii_lowercase()),
                    v.bytes().any(|b| b.is_ascii_digit()),
                ];
                classes.iter().filter(|&&c| c).count() >= 2 && !is_placeholder(v)
            })
        })
}

/// A password in the userinfo, or a credential-named query/fragment parameter with a value.
fn url_has_credentials(url: &str) -> bool {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority_end = after_scheme
        .find(['/', '?', '#'])
        .unwrap_or(after_scheme.len());
    let authority = after_scheme.get(..authority_end).unwrap_or("");
    if let Some((userinfo, _host)) = authority.rsplit_once('@') {
        if let Some((_user, password)) = userinfo.split_once(':') {
            if !is_placeholder(password) {
                return true;
            }
        }
    }
    let Some(params_start) = url.find(['?', '#']) else {
        return false;
    };
    let params = url.get(params_start + 1..).unwrap_or("");
    params.split(['&', ';', '?', '#']).any(|pair| {
        let Some((name, value)) = pair.split_once('=') else {
            return false;
        };
        if is_placeholder(value) {
            return false;
        }
        let lower = name.to_ascii_lowercase();
        let url_only = URL_KEY_PARAMS.contains(&lower.as_str());
        (url_only && value.chars().count() >= 16) || is_credential_name(name)
    })
}

/// `NAME=value` (unquoted, no spaces) or `name = "value"` style assignments to credential names.
fn assignment(text: &str) -> bool {
    let unquoted = ASSIGN_UNQUOTED.captures_iter(text).any(|c| {
        let (Some(name), Some(whole)) = (c.get(1), c.get(0)) else {
            return false;
        };
        let rest = text.get(whole.end()..).unwrap_or("");
        let value_len = rest
            .find(|c: char| c.is_whitespace() || "\"'`&;#,(){}[]<>=".contains(c))
            .unwrap_or(rest.len());
        let value = rest.get(..value_len).unwrap_or("");
        if value.is_empty() || !is_credential_name(name.as_str()) || is_placeholder(value) {
            return false;
        }
        let code_call = matches!(rest.as_bytes().get(value_len), Some(b'(' | b'['));
        !(code_call || is_code_reference(value))
    });
    unquoted
        || ASSIGN_QUOTED.captures_iter(text).any(|c| {
            let Some(name) = c.get(1) else {
                return false;
            };
            let value = c.get(2).or_else(|| c.get(3)).map_or("", |m| m.as_str());
            is_credential_name(name.as_str()) && !is_placeholder(value)
        })
}

/// A dotted identifier without digits: `api_key`, `os.environ`, `self.token`, `config.apiKey`.
fn is_code_reference(value: &str) -> bool {
    value.split('.').all(|part| {
        let mut bytes = part.bytes();
        matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
            && bytes.all(|b| b.is_ascii_alphabetic() || b == b'_')
    })
}

pub(super) fn is_placeholder(value: &str) -> bool {
    let v = value.trim().trim_matches(['"', '\'']).trim();
    if v.is_empty() || v.starts_with(['$', '<', '{', '%', '[']) {
        return true;
    }
    if v.chars().all(|c| MASK_CHARS.contains(&c)) {
        return true;
    }
    if ENV_NAME.is_match(v) {
        return true;
    }
    let lower = v.to_lowercase();
    PLACEHOLDER_WORDS.contains(&lower.as_str())
        || PLACEHOLDER_MARKERS
            .iter()
            .any(|marker| lower.contains(marker))
}

/// The words of a name's last segment, without the trailing words that only say how the
/// thing is written (`value`, `b64`, `hex`, ...): the last word left is the head of the name.
fn head_words(name: &str) -> Vec<String> {
    let segment = name
        .split(['.', '/', ':'])
        .rfind(|s| !s.is_empty())
        .unwrap_or("");
    let mut words = split_words(segment);
    while words.len() > 1
        && words
            .last()
            .is_some_and(|w| CREDENTIAL_FORM_WORDS.contains(&w.as_str()))
    {
        words.pop();
    }
    words
}

/// Whether a name labels a digest, checksum, signature or content address (see "Names of
/// public artifacts" in the module docs): its head word is one of [`ARTIFACT_WORDS`].
pub(super) fn is_artifact_name(name: &str) -> bool {
    head_words(name)
        .last()
        .is_some_and(|w| ARTIFACT_WORDS.contains(&w.as_str()))
}

/// Whether a key, parameter or variable name denotes a credential (see the module docs).
pub(super) fn is_credential_name(name: &str) -> bool {
    let words = head_words(name);
    let Some(last) = words.last().map(String::as_str) else {
        return false;
    };
    let prev = words
        .len()
        .checked_sub(2)
        .and_then(|i| words.get(i))
        .map(String::as_str);
    match last {
        w if CREDENTIAL_WORDS.contains(&w) => true,
        "token" => !prev.is_some_and(|p| NOT_CREDENTIAL_BEFORE_TOKEN.contains(&p)),
        "key" => prev.is_some_and(|p| CREDENTIAL_BEFORE_KEY.contains(&p)),
        "pass" => prev.is_some_and(|p| CREDENTIAL_BEFORE_PASS.contains(&p)),
        "phrase" => prev.is_some_and(|p| CREDENTIAL_BEFORE_PHRASE.contains(&p)),
        w => CREDENTIAL_ENDINGS.iter().any(|ending| w.ends_with(ending)),
    }
}

/// Lowercase words of a name: split on non-alphanumerics and at camelCase boundaries.
fn split_words(segment: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let chars: Vec<char> = segment.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_alphanumeric() {
            if !current.is_empty() {
                words.push(std::mem::take(&mut current));
            }
            continue;
        }
        if c.is_uppercase() && !current.is_empty() {
            let prev = i.checked_sub(1).and_then(|p| chars.get(p)).copied();
            let next = chars.get(i + 1).copied();
            let after_lower_or_digit = prev.is_some_and(|p| p.is_lowercase() || p.is_numeric());
            let acronym_end =
                prev.is_some_and(char::is_uppercase) && next.is_some_and(char::is_lowercase);
            if after_lower_or_digit || acronym_end {
                words.push(std::mem::take(&mut current));
            }
        }
        current.extend(c.to_lowercase());
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}
