//! Refuses values that look like credentials before they can enter shared memory.
//!
//! Everything that is written to shared memory or shared skills is replicated to every peer,
//! so a token pasted into a memory value would leave the node for good. This guard runs on
//! every write and refuses anything that looks like a credential. It is a safety net against
//! accidents, not a defence against someone who deliberately hides a secret (base32-encoding
//! it, splitting it, ...). The error names the field and the rule, never the secret itself.
//!
//! # Rules, in the order they are checked (the first match is reported)
//!
//! 1. [`SecretRule::PrivateKey`]: a PEM header `-----BEGIN <words> PRIVATE KEY-----`
//!    (RSA, EC, DSA, OPENSSH, ENCRYPTED, PGP `... PRIVATE KEY BLOCK`, or plain).
//! 2. [`SecretRule::Jwt`]: `eyJ` followed by three base64url segments of at least 8
//!    characters each, separated by dots.
//! 3. [`SecretRule::OpenAiKey`]: `sk-` (also `sk-proj-`, `sk-svcacct-`, `sk-admin-`, and so
//!    also Anthropic's `sk-ant-...`) followed by at least 20 characters of `[A-Za-z0-9_-]`
//!    that contain a digit or an uppercase letter (so `sk-this-is-a-hyphenated-phrase` passes).
//! 4. [`SecretRule::GithubToken`]: `ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_` followed by 36 or
//!    more alphanumerics; `github_pat_` followed by 22 or more `[A-Za-z0-9_]`.
//! 5. [`SecretRule::SlackToken`]: `xoxa-`, `xoxb-`, `xoxp-`, `xoxr-`, `xoxs-` followed by at
//!    least 10 `[A-Za-z0-9-]` containing a digit (so `xoxb-your-token-here` passes), and
//!    Slack incoming-webhook URLs `hooks.slack.com/services/T.../B.../...`.
//! 6. [`SecretRule::AwsAccessKey`]: `AKIA` or `ASIA` followed by exactly 16 `[A-Z0-9]`.
//!
//!    For rules 3 to 6 a body with fewer than 6 distinct characters is a masked example
//!    (`ghp_xxxx...`) and passes.
//! 7. [`SecretRule::BearerHeader`]: `Authorization: <Bearer|Basic|Token|Digest> <value>` with
//!    a value of 8 or more characters, and `Bearer <token>` anywhere with a token of 20 or more
//!    `[A-Za-z0-9._~+/-]` mixing at least two of upper case, lower case and digits. Placeholder
//!    values (see below) pass: `Authorization: Bearer $TOKEN` is documentation.
//! 8. [`SecretRule::CredentialKeyName`], for credentials attached to a name (there is no
//!    separate rule for URLs, the name is what gives these away):
//!    * a URL with a password in its userinfo (`scheme://user:pass@host`);
//!    * a URL whose query or fragment has a credential-named parameter with a value
//!      (`?api_key=...`, `#access_token=...`, `&password=...`), or a `key`, `sig`,
//!      `signature`, `X-Amz-Signature` or `X-Goog-Signature` parameter (API keys and
//!      pre-signed URLs) whose value has 16 or more characters;
//!    * in free text, an assignment to a credential name: `NAME=value` written without spaces
//!      (shell, `.env`, command-line flags, query strings), or `name = "value"`,
//!      `name: 'value'`, `"name": "value"`, `name := "value"`, `'name' => 'value'` with a
//!      quoted value. The unquoted value runs up to whitespace, a quote or one of
//!      ``&;#,(){}[]<>=``, and `--from-literal=password=x` is still seen. An unquoted value
//!      that is a plain code reference (`api_key=api_key`, `token=os.environ[...]`,
//!      `password=getpass()`: dotted identifiers without digits, or anything followed by `(`
//!      or `[`) passes, as do placeholders. Unquoted YAML style
//!      (`password: hunter2`) is not checked: it is indistinguishable from prose such as
//!      "Password: choose a long one".
//!    * in a memory entry (see "Key names" below).
//! 9. [`SecretRule::HighEntropyToken`]: see "High-entropy tokens" below.
//!
//! # High-entropy tokens
//!
//! Text is cut into tokens: maximal runs of `[A-Za-z0-9+/_-]`. Everything else (whitespace,
//! quotes, `.`, `:`, `=`, `,`, brackets, any non-ASCII character) delimits, so base64 padding
//! falls off and file extensions, host names and `::` paths split. Tokens inside a URL, a
//! `data:image|audio|video|font/...;base64,` URI, a complete PEM block that is not a private key
//! (certificates, public keys) and an OpenSSH public key line (`ssh-ed25519 AAAA...`) are not
//! considered: those are public by design. A token of 32 or more characters is refused when:
//!
//! * **Hex** (only `0-9a-f`, or only `0-9A-F`, optionally `0x`-prefixed and possibly cut by `-`
//!   or `_` into pieces that are judged one by one, which is what makes UUIDs pass): a piece is
//!   refused when it is at least 48 characters long, contains at least one letter, has a
//!   Shannon entropy of at least 3.0 bits per character, and its length is not that of a
//!   common hash digest. The digest lengths are 32 (MD5), 40 (SHA-1, git), 56 (SHA-224),
//!   64 (SHA-256, BLAKE3), 96 (SHA-384) and 128 (SHA-512): digests, content addresses and
//!   commit ids are everyday facts, so a 64-hex-character secret passes this rule (the
//!   key-name rule still catches `private_key: <hex>`).
//! * **Mixed alphabet** (anything else): it contains an uppercase letter, a lowercase letter
//!   and a digit; its Shannon entropy is at least 4.0 bits per character; and at least 30% of
//!   neighbouring alphanumerics (separators skipped) change class between upper case, lower
//!   case and digit. Random base64/base62 changes class about 62% of the time, camelCase
//!   identifiers, paths and prose-like slugs about 10-20%: `parseHttp2ResponseHeadersFromStream`
//!   or `/Users/Ann/Projects2024/MeshdConfig` pass.
//!
//! Consequences, by decision: tokens in a single letter case (lowercase base32 node ids such as
//! `abcdefghijk-lmnopqrstuv-wxyz234567c`, slugs, `snake_case`, `SCREAMING_CASE`, uppercase
//! base32) and digit-only numbers never trip this rule. A random secret that happens to use a
//! single case only passes unless a prefix or name rule catches it.
//!
//! # Key names
//!
//! A name (memory key, JSON object key, assignment target, URL parameter) is reduced to its
//! last segment after splitting on `.`, `/` and `:`; that segment is split into lowercase words
//! on any non-alphanumeric character (`_`, `-`, space) and at camelCase boundaries
//! (`APIKey` -> `api`, `key`). Trailing words that still denote the credential itself
//! (`value`, `val`, `raw`, `plain`, `plaintext`, `cleartext`, `b64`, `base64`, `hex`, `str`,
//! `string`, `confirm`, `confirmation`) are dropped; the credential word must then be the
//! **last** word (the head of the compound), which is what lets `token_count`, `tokens_used`,
//! `password_policy`, `password_hint`, `secret_name` and `token_type` pass while
//! `github_token`, `client_secret` and `db_password_confirmation` are refused:
//!
//! * always: `password`, `passwords`, `passwd`, `passphrase`, `secret`, `secrets`,
//!   `credential`, `credentials`, `creds`, `authorization`, `mnemonic`, and single words
//!   ending in `password`, `passwd` or `secret` (`dbpassword`, `clientsecret`, but not
//!   `secretary`), plus the run-together forms `apikey`, `accesskey`, `secretkey`,
//!   `privatekey`, `privkey`, `signingkey`, `masterkey`, `encryptionkey`, `sessionkey`,
//!   `accesstoken`, `authtoken`, `apitoken`, `bearertoken`, `refreshtoken`, `idtoken`,
//!   `sessiontoken`, `csrftoken`, `xsrftoken`;
//! * `token` unless the word before it makes it an LLM vocabulary, pagination or counting
//!   token (`eos`, `bos`, `pad`, `unk`, `sep`, `cls`, `mask`, `special`, `start`, `end`,
//!   `stop`, `page`, `next`, `prev`, `previous`, `continuation`, `pagination`, `cursor`,
//!   `sync`, `resume`, `max`, `min`, `num`, `total`, `input`, `output`, `prompt`,
//!   `completion`, `first`, `last`, `current`, `word`). Plural `tokens` is never a
//!   credential (`max_tokens`), `tokenizer` neither;
//! * `key` only after `api`, `private`, `priv`, `secret`, `access`, `signing`, `encryption`,
//!   `master`, `auth`, `client`, `session`, `hmac`, `shared`, `subscription` or `app`
//!   (`sort_key`, `primary_key`, `public_key`, `cache_key` pass);
//! * `pass` only after `db`, `database`, `user`, `admin`, `root`, `smtp`, `mail`, `email`,
//!   `ftp`, `redis`, `mysql`, `postgres`, `pg`, `ldap`, `wifi`, `proxy`, `login`, `basic`,
//!   `http` (`render_pass`, `first_pass` pass);
//! * `phrase` after `seed`, `recovery` or `pass`.
//!
//! `pwd` is not a credential word (it is the working directory far more often).
//!
//! In a memory entry, a credential-named memory key or object key is refused when its value
//! carries something: a non-empty, non-placeholder string or any number, directly or anywhere
//! inside a nested array/object (`{"password": {"value": "hunter2"}}` is refused as well).
//! `null`, booleans, empty containers and placeholders pass. The innermost credential-named key
//! is reported: `value at /creds/token`.
//!
//! # Placeholders
//!
//! For the name-based checks (key names, assignments, URL credentials, authorization headers)
//! a value is a placeholder, and passes, when it is empty or whitespace; starts with `$`, `<`,
//! `{`, `%` or `[` (`${DB_PASSWORD}`, `<your token>`, `{{token}}`, `%TOKEN%`, `[redacted]`);
//! consists only of mask characters (`*`, `x`, `X`, `.`, `#`, `-`, `_`, `•`, `…`); is an
//! environment-variable name (`SCREAMING_SNAKE_CASE` with at least one underscore); is one
//! of `none`, `null`, `nil`, `n/a`, `redacted`, `todo`, `tbd`, `password`, `passwd`, `pass`,
//! `pwd`, `secret`, `token`, `apikey`, `api_key`, `key` (as in `postgres://user:password@host`);
//! or contains `your`, `example` or `placeholder` (case-insensitive). Prefix rules 1-6 ignore
//! placeholders: a value that matches them exactly is refused whatever it says.
//!
//! # Known false positives and misses (accepted)
//!
//! * Refused although harmless: an LLM log-probability record `{"token": "Hello"}` (the key
//!   name rule cannot tell it from a credential), base58 identifiers such as Bitcoin addresses
//!   and IPFS CIDv0 hashes, base64 of non-secret data outside a media `data:` URI, and a
//!   mixed-case random identifier of 32+ characters (a Google Docs id outside its URL).
//! * Passed although secret: single-case random tokens and 64-hex-character keys without a
//!   credential name, unquoted `password: hunter2`, `password=hunter` (looks like a code
//!   reference), and anything deliberately disguised.
//!
//! # Error fields
//!
//! [`check_text`] reports the caller's field name. [`check_memory`] reports `memory key` (the
//! key text matched a pattern; the key is not repeated), `key "db.password"` (the key names a
//! credential), `value` / `value at /a/0/b` (a JSON pointer to the string or credential-named
//! key), or `an object key in value at /a` (an object key matched a pattern). Pointers are
//! built only from object keys that already passed, so no field ever contains the secret.
//!
//! # Cost
//!
//! Regexes are compiled once. Every check is linear in the input (the `regex` crate
//! guarantees linear-time matching), JSON values are walked with an explicit stack so deep
//! nesting cannot overflow the stack, and nothing indexes or slices in a way that can panic.

use std::fmt;
use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused: {field} looks like a secret ({rule}); secrets and tokens must stay node-local")]
pub struct SecretFound {
    pub field: String,
    pub rule: SecretRule,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretRule {
    PrivateKey,
    OpenAiKey,
    GithubToken,
    SlackToken,
    AwsAccessKey,
    Jwt,
    BearerHeader,
    HighEntropyToken,
    CredentialKeyName,
}

impl fmt::Display for SecretRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SecretRule::PrivateKey => "PEM private key",
            SecretRule::OpenAiKey => "OpenAI API key",
            SecretRule::GithubToken => "GitHub token",
            SecretRule::SlackToken => "Slack token",
            SecretRule::AwsAccessKey => "AWS access key id",
            SecretRule::Jwt => "JSON Web Token",
            SecretRule::BearerHeader => "bearer authorization header",
            SecretRule::HighEntropyToken => "long high-entropy token",
            SecretRule::CredentialKeyName => "credential-like key name",
        })
    }
}

/// Checks a memory entry: the key name itself, every string inside the JSON value
/// (recursively, including object keys: an object key named like a credential whose value is a
/// non-empty string/number is refused), and a credential-named memory key carrying a value.
pub fn check_memory(key: &str, value: &Value) -> Result<(), SecretFound> {
    if let Some(rule) = scan(key) {
        return Err(found("memory key".to_owned(), rule));
    }
    // JSON pointers are built only when reporting: every visited node records its parent and
    // its own reference token, so deep nesting stays linear in time and memory.
    let mut paths = Paths::default();
    let key_owner = is_credential_name(key);
    let mut stack: Vec<(&Value, usize, Option<Owner>)> =
        vec![(value, ROOT, key_owner.then_some(Owner::MemoryKey))];
    while let Some((value, node, owner)) = stack.pop() {
        let refuse_owner = |owner: Owner, paths: &Paths| {
            let field = match owner {
                Owner::MemoryKey => format!("key {key:?}"),
                Owner::Node(n) => value_field(&paths.pointer(n)),
            };
            found(field, SecretRule::CredentialKeyName)
        };
        match value {
            Value::String(s) => {
                if let Some(rule) = scan(s) {
                    return Err(found(value_field(&paths.pointer(node)), rule));
                }
                if let Some(owner) = owner {
                    if !is_placeholder(s) {
                        return Err(refuse_owner(owner, &paths));
                    }
                }
            }
            Value::Number(_) => {
                if let Some(owner) = owner {
                    return Err(refuse_owner(owner, &paths));
                }
            }
            Value::Array(items) => {
                let first = stack.len();
                for (i, item) in items.iter().enumerate() {
                    let child = paths.push(node, i.to_string());
                    stack.push((item, child, owner));
                }
                if let Some(children) = stack.get_mut(first..) {
                    children.reverse();
                }
            }
            Value::Object(map) => {
                let first = stack.len();
                for (k, v) in map {
                    if let Some(rule) = scan(k) {
                        let pointer = paths.pointer(node);
                        let field = if pointer.is_empty() {
                            "an object key in value".to_owned()
                        } else {
                            format!("an object key in value at {pointer}")
                        };
                        return Err(found(field, rule));
                    }
                    let child = paths.push(node, escape_pointer(k));
                    let child_owner = if is_credential_name(k) {
                        Some(Owner::Node(child))
                    } else {
                        owner
                    };
                    stack.push((v, child, child_owner));
                }
                if let Some(children) = stack.get_mut(first..) {
                    children.reverse();
                }
            }
            Value::Null | Value::Bool(_) => {}
        }
    }
    Ok(())
}

/// The innermost credential-named key above a value: the memory key or an object key.
#[derive(Clone, Copy)]
enum Owner {
    MemoryKey,
    Node(usize),
}

const ROOT: usize = 0;

/// Parent links and reference tokens of the visited JSON nodes; node 0 is the root.
struct Paths {
    nodes: Vec<(usize, String)>,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            nodes: vec![(ROOT, String::new())],
        }
    }
}

impl Paths {
    fn push(&mut self, parent: usize, token: String) -> usize {
        self.nodes.push((parent, token));
        self.nodes.len() - 1
    }

    /// The JSON pointer (RFC 6901) of a node; empty for the root.
    fn pointer(&self, mut node: usize) -> String {
        let mut tokens = Vec::new();
        while node != ROOT {
            let Some((parent, token)) = self.nodes.get(node) else {
                break;
            };
            tokens.push(token.as_str());
            node = *parent;
        }
        tokens.iter().rev().fold(String::new(), |mut acc, t| {
            acc.push('/');
            acc.push_str(t);
            acc
        })
    }
}

/// Checks free text (skill content, descriptions); `field` names it in the error, e.g. "skill content".
pub fn check_text(field: &str, text: &str) -> Result<(), SecretFound> {
    match scan(text) {
        Some(rule) => Err(found(field.to_owned(), rule)),
        None => Ok(()),
    }
}

fn found(field: String, rule: SecretRule) -> SecretFound {
    SecretFound { field, rule }
}

fn value_field(pointer: &str) -> String {
    if pointer.is_empty() {
        "value".to_owned()
    } else {
        format!("value at {pointer}")
    }
}

/// RFC 6901 escaping of one reference token.
fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

// ---------------------------------------------------------------------------------------------
// Patterns

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
static DATA_URI: LazyLock<Regex> = LazyLock::new(|| {
    re(r"data:(?:image|audio|video|font)/[A-Za-z0-9.+-]+;base64,[A-Za-z0-9+/]+=*")
});
static PEM_BLOCK: LazyLock<Regex> =
    LazyLock::new(|| re(r"(?s)-----BEGIN [A-Z0-9 ]+-----.*?-----END [A-Z0-9 ]+-----"));
static SSH_PUBLIC: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"(?:ssh-(?:rsa|dss|ed25519)|ecdsa-sha2-nistp(?:256|384|521)|sk-(?:ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com) AAAA[A-Za-z0-9+/]+=*",
    )
});
static ENV_NAME: LazyLock<Regex> = LazyLock::new(|| re(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+$"));

/// Returns the first rule the text breaks, if any.
fn scan(text: &str) -> Option<SecretRule> {
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
    if high_entropy(text, urls) {
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
        let url_only = matches!(
            lower.as_str(),
            "key" | "sig" | "signature" | "x-amz-signature" | "x-goog-signature"
        );
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

fn is_placeholder(value: &str) -> bool {
    let v = value.trim().trim_matches(['"', '\'']).trim();
    if v.is_empty() || v.starts_with(['$', '<', '{', '%', '[']) {
        return true;
    }
    if v.chars()
        .all(|c| matches!(c, '*' | 'x' | 'X' | '.' | '#' | '-' | '_' | '•' | '…'))
    {
        return true;
    }
    if ENV_NAME.is_match(v) {
        return true;
    }
    let lower = v.to_lowercase();
    matches!(
        lower.as_str(),
        "none"
            | "null"
            | "nil"
            | "n/a"
            | "redacted"
            | "todo"
            | "tbd"
            | "password"
            | "passwd"
            | "pass"
            | "pwd"
            | "secret"
            | "token"
            | "apikey"
            | "api_key"
            | "key"
    ) || lower.contains("your")
        || lower.contains("example")
        || lower.contains("placeholder")
}

// ---------------------------------------------------------------------------------------------
// Key names

/// Whether a key, parameter or variable name denotes a credential (see the module docs).
fn is_credential_name(name: &str) -> bool {
    let segment = name
        .split(['.', '/', ':'])
        .rfind(|s| !s.is_empty())
        .unwrap_or("");
    let mut words = split_words(segment);
    while words.len() > 1
        && words.last().is_some_and(|w| {
            matches!(
                w.as_str(),
                "value"
                    | "val"
                    | "raw"
                    | "plain"
                    | "plaintext"
                    | "cleartext"
                    | "b64"
                    | "base64"
                    | "hex"
                    | "str"
                    | "string"
                    | "confirm"
                    | "confirmation"
            )
        })
    {
        words.pop();
    }
    let Some(last) = words.last().map(String::as_str) else {
        return false;
    };
    let prev = words
        .len()
        .checked_sub(2)
        .and_then(|i| words.get(i))
        .map(String::as_str);
    match last {
        "password" | "passwords" | "passwd" | "passphrase" | "secret" | "secrets"
        | "credential" | "credentials" | "creds" | "authorization" | "mnemonic" | "apikey"
        | "accesskey" | "secretkey" | "privatekey" | "privkey" | "signingkey" | "masterkey"
        | "encryptionkey" | "sessionkey" | "accesstoken" | "authtoken" | "apitoken"
        | "bearertoken" | "refreshtoken" | "idtoken" | "sessiontoken" | "csrftoken"
        | "xsrftoken" => true,
        "token" => !prev.is_some_and(|p| {
            matches!(
                p,
                "eos"
                    | "bos"
                    | "pad"
                    | "unk"
                    | "sep"
                    | "cls"
                    | "mask"
                    | "special"
                    | "start"
                    | "end"
                    | "stop"
                    | "page"
                    | "next"
                    | "prev"
                    | "previous"
                    | "continuation"
                    | "pagination"
                    | "cursor"
                    | "sync"
                    | "resume"
                    | "max"
                    | "min"
                    | "num"
                    | "total"
                    | "input"
                    | "output"
                    | "prompt"
                    | "completion"
                    | "first"
                    | "last"
                    | "current"
                    | "word"
            )
        }),
        "key" => prev.is_some_and(|p| {
            matches!(
                p,
                "api"
                    | "private"
                    | "priv"
                    | "secret"
                    | "access"
                    | "signing"
                    | "encryption"
                    | "master"
                    | "auth"
                    | "client"
                    | "session"
                    | "hmac"
                    | "shared"
                    | "subscription"
                    | "app"
            )
        }),
        "pass" => prev.is_some_and(|p| {
            matches!(
                p,
                "db" | "database"
                    | "user"
                    | "admin"
                    | "root"
                    | "smtp"
                    | "mail"
                    | "email"
                    | "ftp"
                    | "redis"
                    | "mysql"
                    | "postgres"
                    | "pg"
                    | "ldap"
                    | "wifi"
                    | "proxy"
                    | "login"
                    | "basic"
                    | "http"
            )
        }),
        "phrase" => prev.is_some_and(|p| matches!(p, "seed" | "recovery" | "pass")),
        w => w.ends_with("password") || w.ends_with("passwd") || w.ends_with("secret"),
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

// ---------------------------------------------------------------------------------------------
// High-entropy tokens

const MIN_TOKEN_LEN: usize = 32;
const MIN_HEX_LEN: usize = 48;
const HASH_HEX_LENS: [usize; 6] = [32, 40, 56, 64, 96, 128];
const MIN_MIXED_ENTROPY: f64 = 4.0;
const MIN_HEX_ENTROPY: f64 = 3.0;
const MIN_CLASS_SWITCH_RATIO: f64 = 0.3;

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'_' | b'-')
}

/// Scans the tokens of `text` outside the public spans (URLs, data URIs, public PEM blocks,
/// SSH public keys).
fn high_entropy(text: &str, mut skip: Vec<(usize, usize)>) -> bool {
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
        if !skipped && bytes.get(start..end).is_some_and(is_secret_token) {
            return true;
        }
    }
    false
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // Every credential-shaped literal is assembled with `concat!` so that this source file never
    // holds a contiguous token that a scanner (or this guard, fed the file) would flag.
    const OPENAI_KEY: &str = concat!("sk-", "CZyZo9vxKwZQOZ9no17JDrhHZSBAdzANrwcPO76vYzftLw9M");
    const OPENAI_PROJ_KEY: &str =
        concat!("sk-", "proj-", "lRTIZ7FAbopt3szYQ9ORAdnXJHy_7d4IQZAGcqC3PJ");
    const GHP: &str = concat!("gh", "p_", "6rAKBHsUdY2mnkccajDrlHAtA1Bt1Zl7QuxJ");
    const GHO: &str = concat!("gh", "o_", "g320ptkzUt5fZZiYIGFoCEiIcSRYxGUfw36l");
    const GHU: &str = concat!("gh", "u_", "VcqstqYZiTfAyZsUUensVg4MEaUhHKMzgDpI");
    const GHS: &str = concat!("gh", "s_", "RsYHcgDV9LsXpIbn4ZOfXXiNVcwenHbeJdvq");
    const GHR: &str = concat!("gh", "r_", "GTHM8u8YFsbsAsoIAeKhJIM6RSNosYARF51O");
    const GITHUB_PAT: &str = concat!("github", "_pat_", "11AB3DEFG0aZ9kLmNoPqRs_TuVwXyZ");
    const SLACK_BOT: &str = concat!(
        "xo",
        "xb-",
        "123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"
    );
    const SLACK_USER: &str = concat!("xo", "xp-", "9876543210-9876543210-1234567890-a1b2c3d4e5f6");
    const SLACK_HOOK: &str = concat!(
        "https://hooks.slack.com/services/",
        "T0123ABCD/B0456EFGH/",
        "q8Wr3tYu9IoP2aSd4FgH5jKl"
    );
    const AWS_KEY_ID: &str = concat!("AK", "IAIOSFODNN7EXAMPLE");
    const AWS_STS_ID: &str = concat!("AS", "IAJ7Q2XW4RT6YU8MNB");
    const AWS_SECRET: &str = concat!("wJalrXUtnFEMI/K7MDENG/", "bPxRfiCYEXAMPLEKEY");
    const JWT_TOKEN: &str = concat!(
        "eyJ",
        "hbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.",
        "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.",
        "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
    );
    const BASE64_SECRET: &str = concat!("JsZRgIrVdTKkfsEGGTdJ", "KUVAf1Woj3wfNUeB9PZQ");
    const BASE64URL_SECRET: &str = concat!("ebAfMloKUHJN5VuDPoBmzUig", "dV3-wIi4zPPoju2uVmQ=");
    const HEX50_SECRET: &str = concat!("87584413a416a83d5dafaa76e", "2425abea91ea7c260cd733e49");
    const HEX80_SECRET: &str = concat!(
        "96E5ED88023E714187C272CFBB60CD992B9E147B",
        "B60CDC4FB6E2ADF389E28ACF4199E4A59D3F745A"
    );
    const TELEGRAM_BOT: &str = concat!("123456789:", "AAH4Yg7U0WcCsXZIDd85IoAZIND7ElaIM8iqOd");

    fn must_refuse() -> Vec<(String, SecretRule)> {
        use SecretRule::*;
        let s = |x: &str| x.to_owned();
        vec![
            // PEM private keys.
            (s("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----"), PrivateKey),
            (s("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA"), PrivateKey),
            (s("key:\n-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEI"), PrivateKey),
            (s("-----BEGIN ENCRYPTED PRIVATE KEY-----"), PrivateKey),
            (s("-----BEGIN PRIVATE KEY-----"), PrivateKey),
            (s("-----BEGIN PGP PRIVATE KEY BLOCK-----"), PrivateKey),
            // OpenAI.
            (s(OPENAI_KEY), OpenAiKey),
            (s(OPENAI_PROJ_KEY), OpenAiKey),
            (format!("export OPENAI_API_KEY={OPENAI_KEY}"), OpenAiKey),
            (format!("client = OpenAI(api_key=\"{OPENAI_PROJ_KEY}\")"), OpenAiKey),
            // GitHub.
            (s(GHP), GithubToken),
            (s(GHO), GithubToken),
            (s(GHU), GithubToken),
            (s(GHS), GithubToken),
            (s(GHR), GithubToken),
            (s(GITHUB_PAT), GithubToken),
            (format!("git clone https://x-access-token:{GHP}@github.com/o/r.git"), GithubToken),
            // Slack.
            (s(SLACK_BOT), SlackToken),
            (format!("SLACK_TOKEN={SLACK_USER}"), SlackToken),
            (format!("post alerts to {SLACK_HOOK}"), SlackToken),
            // AWS.
            (s(AWS_KEY_ID), AwsAccessKey),
            (format!("aws_access_key_id = {AWS_STS_ID}"), AwsAccessKey),
            // JWT.
            (s(JWT_TOKEN), Jwt),
            (format!("Authorization: Bearer {JWT_TOKEN}"), Jwt),
            // Authorization headers.
            (s("Authorization: Bearer abc123def456ghi"), BearerHeader),
            (s("curl -H 'Authorization: Basic dXNlcjpwYXNz' https://api.test/"), BearerHeader),
            (s(r#"{"headers": {"Authorization": "Token 9f8e7d6c5b4a"}}"#), BearerHeader),
            (s("send it with bearer Ab12Cd34Ef56Gh78Ij90Kl"), BearerHeader),
            // Long high-entropy tokens.
            (s(BASE64_SECRET), HighEntropyToken),
            (format!("the backup passphrase is \"{BASE64URL_SECRET}\" keep it"), HighEntropyToken),
            (format!("seed {HEX50_SECRET}"), HighEntropyToken),
            (format!("0x{HEX80_SECRET}"), HighEntropyToken),
            (format!("my aws secret is {AWS_SECRET} ok?"), HighEntropyToken),
            (format!("bot {TELEGRAM_BOT}"), HighEntropyToken),
            // Credentials in URLs.
            (s("postgres://admin:hunter2@db.internal:5432/app"), CredentialKeyName),
            (s("redis://:s3cretPass@cache:6379/0"), CredentialKeyName),
            (s("https://api.service.test/v1/items?page=2&api_key=abc123"), CredentialKeyName),
            (s("https://app.test/callback#access_token=xyz987&token_type=bearer"), CredentialKeyName),
            (s("https://files.test/f.txt?X-Amz-Date=20240101&X-Amz-Signature=4f2a9c81d3e7b6a05c4d"), CredentialKeyName),
            (s("https://maps.googleapis.com/maps/api/js?key=AIzaQ8wE7rT6yU5iO4pA3sD2fG1hJ0kLzXc"), CredentialKeyName),
            (s("https://hooks.test/notify?password=letmein"), CredentialKeyName),
            // Assignments to credential names in free text.
            (s("DB_PASSWORD=hunter2"), CredentialKeyName),
            (s("mysql -u root --password=Tr0ub4dor&3 app"), CredentialKeyName),
            (s(r#"password = "correct horse battery staple""#), CredentialKeyName),
            (s(r#"{"client_secret": "abc"}"#), CredentialKeyName),
            (s("apiKey: 'q1w2e3r4'"), CredentialKeyName),
            (s("'db_pass' => 'letmein'"), CredentialKeyName),
            (s(r#"token := "abc123""#), CredentialKeyName),
            (s("GITHUB_TOKEN=abc123def"), CredentialKeyName),
            (s("kubectl create secret generic db --from-literal=password=S3cr3t!"), CredentialKeyName),
        ]
    }

    fn must_pass() -> Vec<&'static str> {
        vec![
            "Hello, world! This is a perfectly normal sentence about syncing memory.",
            "Die Donaudampfschifffahrtsgesellschaftskapitänsmütze liegt auf dem Tisch, schön grün.",
            "東京の天気は晴れです。明日は雨が降るかもしれません。",
            "Le mot de passe doit contenir au moins douze caractères, c'est la politique.",
            "Пароль должен быть длинным; токены хранятся только локально.",
            "مرحبا بالعالم، هذه جملة عادية",
            "https://docs.rs/regex/latest/regex/struct.Regex.html#method.is_match",
            "https://example.com/search?q=rust+secret+scanning&page=2&sort=desc",
            "https://docs.google.com/spreadsheets/d/1BxiMVs0XRA5nFMdKvBdBZjgmUUqptlbs74OgvE2upms/edit#gid=0",
            "see https://github.com/rust-lang/rust/commit/3f5fd8dd41153bc5fdca9427e9e05be2c767ba23 for details",
            "550e8400-e29b-41d4-a716-446655440000",
            "sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "commit 3f5fd8dd41153bc5fdca9427e9e05be2c767ba23",
            "md5 d41d8cd98f00b204e9800998ecf8427e",
            "sha512 cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e",
            "node abcdefghijk-lmnopqrstuv-wxyz234567c joined; compact id abcdefghijklmnopqrstuvwxyz234567",
            "/home/alice/.config/meshd/config.toml",
            r"C:\Users\Alice\AppData\Roaming\meshd\peers.toml",
            "/Users/Ann/Projects2024/MeshdConfigBackup/Quarterly3Report/summary.md",
            "# Deploy skill\n\n1. Run `cargo build --release`.\n2. Copy the binary.\n\n| step | time |\n| --- | --- |\n| build | 2m |\n\n> Never paste tokens here.",
            "fn main() {\n    let tokens = tokenizer.encode(text)?;\n    println!(\"{}\", tokens.len());\n}",
            "client = OpenAI(api_key=os.environ[\"OPENAI_API_KEY\"])\nresp = client.chat(max_tokens=4096, api_key=api_key)",
            r#"{"model": "gpt-4o", "max_tokens": 4096, "temperature": 0.2}"#,
            "Send the header `Authorization: Bearer $TOKEN` (or `Authorization: Bearer <your-token>`).",
            "The bearer of this letter is a friend; the bearer internationalization team agrees.",
            "call parseHttp2ResponseHeadersFromStream and getUserAccountPreferencesFromDatabase2024",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@laptop",
            "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ3b0k9Zq7vXw2YtR8LmN4PcA1sEwCgYIKoZIzj0EAwIw\n-----END CERTIFICATE-----",
            "We use scikit-learn and the task-management-system-architecture-overview doc; sk-learn too.",
            "password_policy: at least 12 characters, rotate yearly",
            "Set SLACK_TOKEN to xoxb-your-token-here and GITHUB_TOKEN to ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            "Token count: 1234, tokens used: 99",
            "![logo](data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==)",
            "released v1.2.3 at 2024-05-01T12:34:56Z from 2001:0db8:85a3:0000:0000:8a2e:0370:7334",
            "git@github.com:owner/repo.git and ssh://git@github.com/owner/repo and https://user@host.test/",
            "postgres://user:password@localhost:5432/app and postgres://app:${DB_PASS}@db/app",
            "contact alice.smith+meshd@example.org about the secretary role",
            "DATABASE_URL=postgres://localhost/app\nRUST_LOG=info\nPASSWORD_MIN_LENGTH=12",
            "api_key = \"YOUR_API_KEY\"\npassword: \"<choose one>\"\ntoken = ''",
            "12345678901234567890123456789012345678901234567890123456789",
            "db.connect(user=u, password=config.dbPassword)\nsession.token=self.token",
            "token=load_token_v2(path) and api_key=keys[0]",
            "short hex under the 48 limit: 0f3a9c2b7e4d8f1a6b5c0d9e8f7a6b5c4d3e2f1a9b8c",
            "const ELEMENTS: [&str; 3] = [\"MAX_RETRY_COUNT_FOR_OUTBOUND_CONNECTIONS\", \"b\", \"c\"];",
        ]
    }

    #[test]
    fn refuses_every_secret_with_the_expected_rule() {
        let cases = must_refuse();
        assert!(cases.len() >= 40);
        for (input, expected) in cases {
            let got = check_text("skill content", &input).err().map(|e| e.rule);
            assert_eq!(got, Some(expected), "input {input:?}");
        }
    }

    #[test]
    fn passes_ordinary_text() {
        let cases = must_pass();
        assert!(cases.len() >= 25);
        for input in cases {
            assert_eq!(
                check_text("skill content", input),
                Ok(()),
                "input {input:?}"
            );
        }
    }

    #[test]
    fn text_cases_also_apply_to_memory_values() {
        for (input, expected) in must_refuse() {
            let err = check_memory("notes", &json!({ "body": [input] })).unwrap_err();
            assert_eq!(err.rule, expected, "input {input:?}");
            assert_eq!(err.field, "value at /body/0");
        }
        for input in must_pass() {
            assert_eq!(
                check_memory("notes", &json!({ "body": [input] })),
                Ok(()),
                "{input:?}"
            );
        }
    }

    fn longest_token(input: &str) -> &str {
        input
            .split(|c: char| !(c.is_ascii() && is_token_byte(c as u8)))
            .max_by_key(|t| t.len())
            .unwrap_or("")
    }

    #[test]
    fn error_message_never_contains_the_secret() {
        for (input, rule) in must_refuse() {
            let err = check_text("skill content", &input).unwrap_err();
            let text = err.to_string();
            assert_eq!(
                text,
                format!("refused: skill content looks like a secret ({rule}); secrets and tokens must stay node-local")
            );
            let secret = longest_token(&input);
            assert!(secret.len() >= 6, "{input:?}");
            assert!(!text.contains(secret), "{text}");
            assert!(!format!("{err:?}").contains(secret), "{err:?}");
        }
        let memory_cases = [
            (OPENAI_KEY.to_owned(), json!("x")),
            ("notes".to_owned(), json!({ "a": [1, { "b": GHP }] })),
            ("notes".to_owned(), json!({ AWS_KEY_ID: "x" })),
            ("notes".to_owned(), json!({ "outer": { JWT_TOKEN: 1 } })),
            ("db.password".to_owned(), json!("hunter2-secret-value")),
            (
                "cfg".to_owned(),
                json!({ "creds": { "token": "tok-9f8e7d6c" } }),
            ),
        ];
        for (key, value) in memory_cases {
            let err = check_memory(&key, &value).unwrap_err();
            let shown = format!("{err} {err:?}");
            for secret in [
                OPENAI_KEY,
                GHP,
                AWS_KEY_ID,
                JWT_TOKEN,
                "hunter2-secret-value",
                "tok-9f8e7d6c",
            ] {
                assert!(!shown.contains(secret), "{shown}");
            }
        }
    }

    #[test]
    fn memory_entries_refused_with_field() {
        use SecretRule::*;
        let cases: Vec<(&str, serde_json::Value, &str, SecretRule)> = vec![
            (
                "db.password",
                json!("hunter2"),
                r#"key "db.password""#,
                CredentialKeyName,
            ),
            (
                "github_token",
                json!("abc"),
                r#"key "github_token""#,
                CredentialKeyName,
            ),
            ("apiKey", json!(12345), r#"key "apiKey""#, CredentialKeyName),
            (
                "service/api-key",
                json!("v4lue"),
                r#"key "service/api-key""#,
                CredentialKeyName,
            ),
            (
                "oauth.client_secret",
                json!("v4lue"),
                r#"key "oauth.client_secret""#,
                CredentialKeyName,
            ),
            (
                "ssh:private_key",
                json!("v4lue"),
                r#"key "ssh:private_key""#,
                CredentialKeyName,
            ),
            (
                "passwd",
                json!("v4lue"),
                r#"key "passwd""#,
                CredentialKeyName,
            ),
            (
                "aws.credentials",
                json!("v4lue"),
                r#"key "aws.credentials""#,
                CredentialKeyName,
            ),
            (
                "OPENAI_API_KEY",
                json!("v4lue"),
                r#"key "OPENAI_API_KEY""#,
                CredentialKeyName,
            ),
            (
                "db.password",
                json!({ "v": ["hunter2"] }),
                r#"key "db.password""#,
                CredentialKeyName,
            ),
            (
                "cfg",
                json!({ "creds": { "token": "abc" } }),
                "value at /creds/token",
                CredentialKeyName,
            ),
            (
                "cfg",
                json!({ "smtp": { "password": 1234 } }),
                "value at /smtp/password",
                CredentialKeyName,
            ),
            (
                "cfg",
                json!({ "password": { "value": "v4lue" } }),
                "value at /password",
                CredentialKeyName,
            ),
            (
                "cfg",
                json!([{ "a/b": { "refreshToken": "r" } }]),
                "value at /0/a~1b/refreshToken",
                CredentialKeyName,
            ),
            (
                "cfg",
                json!({ "x": ["ok", OPENAI_KEY] }),
                "value at /x/1",
                OpenAiKey,
            ),
            ("cfg", json!(GHP), "value", GithubToken),
            (
                "cfg",
                json!({ "x": { AWS_KEY_ID: true } }),
                "an object key in value at /x",
                AwsAccessKey,
            ),
            (
                "cfg",
                json!({ JWT_TOKEN: null }),
                "an object key in value",
                Jwt,
            ),
            (OPENAI_KEY, json!(null), "memory key", OpenAiKey),
            ("token", json!(0), r#"key "token""#, CredentialKeyName),
        ];
        for (key, value, field, rule) in cases {
            let Err(err) = check_memory(key, &value) else {
                panic!("{key} {value} should be refused");
            };
            assert_eq!(
                (err.field.as_str(), err.rule),
                (field, rule),
                "{key} {value}"
            );
        }
    }

    #[test]
    fn memory_entries_that_pass() {
        let cases: Vec<(&str, serde_json::Value)> = vec![
            (
                "llm.settings",
                json!({ "max_tokens": 4096, "token_count": 12, "tokens_used": 99, "model": "gpt-4o" }),
            ),
            ("contacts.secretary", json!("Ms. Smith, ext. 42")),
            ("security.password_policy", json!("min 12 chars")),
            ("security.password_hint", json!("the usual one")),
            ("db.password", json!("")),
            ("db.password", json!("   ")),
            ("api_key", json!(null)),
            ("api_key", json!(false)),
            ("api_key", json!({})),
            ("api_key", json!([])),
            ("github_token", json!("${GITHUB_TOKEN}")),
            ("openai.api_key", json!("OPENAI_API_KEY")),
            ("tokenizer.eos_token", json!("</s>")),
            ("sort_key", json!("name")),
            ("public_key", json!("ed25519 pubkey fingerprint 12:34")),
            ("k8s.secret_name", json!("prod-db")),
            (
                "paging",
                json!({ "next_page_token": "CAoQAA", "page_token": 3 }),
            ),
            ("render", json!({ "first_pass": 1, "tokens": 77 })),
            ("shell.pwd", json!("/home/alice")),
            (
                "peers",
                json!({ "abcdefghijk-lmnopqrstuv-wxyz234567c": { "addr": "10.0.0.2:4433" } }),
            ),
            (
                "creds.placeholder",
                json!({ "token": "<redacted>", "password": "********" }),
            ),
            (
                "blob.sha256",
                json!("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
            ),
        ];
        for (key, value) in cases {
            assert_eq!(check_memory(key, &value), Ok(()), "{key} {value}");
        }
    }

    #[test]
    fn credential_name_classification() {
        let credential = [
            "db.password",
            "github_token",
            "apiKey",
            "api-key",
            "APIKey",
            "client_secret",
            "private_key",
            "passwd",
            "credentials",
            "creds",
            "X-Amz-Security-Token",
            "access_token",
            "refreshToken",
            "DB_PASS",
            "dbpassword",
            "clientsecret",
            "password_confirmation",
            "secret_value",
            "a/b:c.token",
            "seed_phrase",
            "Authorization",
            "csrf_token",
            "aws_secret_access_key",
            "passphrase",
            "githubToken",
            "slackBotToken",
            "myAPIKey",
            "SMTPPass",
        ];
        let ordinary = [
            "max_tokens",
            "token_count",
            "tokens_used",
            "secretary",
            "password_policy",
            "password_hint",
            "token_type",
            "secret_name",
            "sort_key",
            "public_key",
            "key",
            "eos_token",
            "next_page_token",
            "tokenizer",
            "first_pass",
            "pwd",
            "tokens",
            "password.policy",
            "credentials.aws",
            "maxTokens",
            "",
            "...",
            "keyboard",
        ];
        for name in credential {
            assert!(
                is_credential_name(name),
                "{name} should be a credential name"
            );
        }
        for name in ordinary {
            assert!(
                !is_credential_name(name),
                "{name} should not be a credential name"
            );
        }
    }

    #[test]
    fn hash_lengths_pass_but_other_long_hex_does_not() {
        let digest = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        for len in [32, 40, 56, 64, 96, 128] {
            let hex: String = digest.chars().cycle().skip(3).take(len).collect();
            assert_eq!(check_text("t", &hex), Ok(()), "length {len}");
        }
        for len in [48, 50, 72, 80, 100] {
            let hex: String = digest.chars().cycle().skip(3).take(len).collect();
            let rule = check_text("t", &hex).err().map(|e| e.rule);
            assert_eq!(rule, Some(SecretRule::HighEntropyToken), "length {len}");
        }
        // Low-entropy hex (a repeated pattern) is not a secret.
        assert_eq!(check_text("t", &"ab".repeat(30)), Ok(()));
    }

    /// A fixed-seed xorshift, so the "random" tokens are the same on every run.
    fn pseudo_random(seed: &mut u64, alphabet: &[u8], len: usize) -> String {
        (0..len)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                let i = usize::try_from(*seed % alphabet.len() as u64).unwrap_or(0);
                char::from(alphabet[i])
            })
            .collect()
    }

    #[test]
    fn random_base64_is_refused_and_random_node_ids_pass() {
        let base64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let base32 = b"abcdefghijklmnopqrstuvwxyz234567";
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        for len in 32..96 {
            let token = pseudo_random(&mut seed, base64, len);
            // The generic rule needs all three classes; the generator rarely misses one.
            if !(token.bytes().any(|b| b.is_ascii_digit())) {
                continue;
            }
            let rule = check_text("t", &format!("value: {token}"))
                .err()
                .map(|e| e.rule);
            assert_eq!(rule, Some(SecretRule::HighEntropyToken), "{token}");
        }
        for _ in 0..200 {
            let id = pseudo_random(&mut seed, base32, 33);
            let grouped = format!("{}-{}-{}", &id[..11], &id[11..22], &id[22..]);
            assert_eq!(check_text("t", &grouped), Ok(()), "{grouped}");
            assert_eq!(check_text("t", &id[..32]), Ok(()), "{id}");
        }
    }

    #[test]
    fn display_names() {
        use SecretRule::*;
        let expected = [
            (PrivateKey, "PEM private key"),
            (OpenAiKey, "OpenAI API key"),
            (GithubToken, "GitHub token"),
            (SlackToken, "Slack token"),
            (AwsAccessKey, "AWS access key id"),
            (Jwt, "JSON Web Token"),
            (BearerHeader, "bearer authorization header"),
            (HighEntropyToken, "long high-entropy token"),
            (CredentialKeyName, "credential-like key name"),
        ];
        for (rule, name) in expected {
            assert_eq!(rule.to_string(), name);
        }
    }

    #[test]
    fn huge_and_odd_inputs_do_not_panic() {
        let big_prose = "Grüße aus Köln — 東京 🚀 ordinary words, no secrets here. ".repeat(20_000);
        assert_eq!(check_text("skill content", &big_prose), Ok(()));
        let with_secret = format!("{big_prose}{GHP}");
        assert_eq!(
            check_text("skill content", &with_secret).map_err(|e| e.rule),
            Err(SecretRule::GithubToken)
        );
        // One enormous token, multi-byte characters glued to tokens, lone delimiters.
        assert_eq!(check_text("t", &"a".repeat(2_000_000)), Ok(()));
        let glued = format!("é{BASE64_SECRET}é");
        assert_eq!(
            check_text("t", &glued).map_err(|e| e.rule),
            Err(SecretRule::HighEntropyToken)
        );
        for odd in [
            "",
            "=",
            "://",
            "a://@",
            "x://:@",
            "?=&",
            "0x",
            "-----BEGIN",
            "\u{0}\u{ffff}",
            "Bearer",
            "eyJ..",
        ] {
            assert_eq!(check_text("t", odd), Ok(()), "{odd:?}");
            assert_eq!(check_memory(odd, &json!(odd)), Ok(()), "{odd:?}");
        }
    }

    #[test]
    fn deep_nesting_is_walked_without_recursion() {
        // serde_json drops a Value recursively, so build and drop it on a thread with a big
        // stack; the check itself runs on a thread with a deliberately small one.
        let outer = std::thread::Builder::new().stack_size(256 << 20).spawn(|| {
            let mut deep = json!({ "k": OPENAI_KEY });
            for i in 0..50_000 {
                // Not `json!`: it would serialize `deep` again on every level.
                deep = if i % 2 == 0 {
                    Value::Array(vec![deep])
                } else {
                    Value::Object(std::iter::once(("n".to_owned(), deep)).collect())
                };
            }
            let result = std::thread::scope(|scope| {
                let inner = std::thread::Builder::new()
                    .stack_size(256 << 10)
                    .spawn_scoped(scope, || check_memory("deep", &deep).map_err(|e| e.rule));
                inner.map(|handle| handle.join())
            });
            matches!(result, Ok(Ok(Err(SecretRule::OpenAiKey))))
        });
        let joined = outer.map(|handle| handle.join());
        assert!(matches!(joined, Ok(Ok(true))), "{joined:?}");
    }
}
