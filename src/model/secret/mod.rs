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
//! 9. [`SecretRule::HighEntropyToken`]: see "High-entropy tokens" below; not applied to a
//!    value that is named a digest or signature (see "Names of public artifacts").
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
//! # Names of public artifacts
//!
//! Digests, checksums, signatures and content addresses are random-looking by design, and
//! publishing them leaks nothing: a signature proves, it grants nothing. The statistical rule
//! cannot tell them from a random secret of the same size: an Ed25519 signature and an Azure
//! storage account key are both 64 random bytes, 88 characters of padded base64; a base64
//! SHA-256 digest and `openssl rand -base64 32` are both 44. Only a name says which it is, so
//! the guard trusts names both ways, with credentials first:
//!
//! * **A credential name refuses** whatever is under it (rule 8), an artifact name below it
//!   included: `{"api_key": {"sig": ...}}` is refused.
//! * **An artifact name excuses one encoded blob from the statistical rule, nothing else.** A
//!   name is an artifact name when its head word (found as for credential names, below) is
//!   `sig`, `sigs`, `signature(s)`, `hash(es)`, `digest(s)`, `checksum(s)`, `fingerprint(s)`,
//!   `integrity`, `etag`, `cid`, `multihash` or a digest algorithm (`md5`, `sha`, `sha1`,
//!   `sha224`, `sha256`, `sha384`, `sha512`, `sha3`, `blake2b`, `blake2s`, `blake3`,
//!   `crc32`): `release.sig`, `checksum_b64`, `api_key_hash` (a key's hash is what one keeps
//!   instead of the key). In a memory entry the name is the innermost object key above the
//!   string (through arrays), else the memory key, and the string must be one blob of
//!   base64, base64url or hex, optionally after an algorithm label (`sha256:...`); prose
//!   under such a name is scanned as usual. In free text the name is the one right before
//!   the token, separated only by spaces, quotes, `:` or `=` (`sig: X`, `"signature": "X"`,
//!   `sha512=X`); `the signature is X` is not labelled. Rules 1-7 still apply: a GitHub
//!   token named `hash` is refused.
//! * **Self-labelled forms pass without a name**: a token that begins with a digest name and a
//!   dash or underscore (`sha384-<base64>` as Subresource Integrity and Nix write it), and an
//!   IPFS CIDv0 (`Qm` + 44 base58 characters, a SHA-256 multihash).
//! * **Without a name, random base64 is refused**, signatures included: an unnamed 88-character
//!   value may be a storage key as well as a signature, and refusing a signature costs a
//!   rename (`sig`) while passing a key leaks it for good. Hex of a digest length passes
//!   unnamed (rule 9), as before.
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
//!   name rule cannot tell it from a credential), base58 identifiers such as Bitcoin addresses,
//!   base64 of non-secret data outside a media `data:` URI (a signature or digest without a
//!   name that says so), and a mixed-case random identifier of 32+ characters (a Google Docs
//!   id outside its URL).
//! * Passed although secret: single-case random tokens and 64-hex-character keys without a
//!   credential name, a random secret stored under an artifact name (`{"hash": <key>}`), unquoted `password: hunter2`, `password=hunter` (looks like a code
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

mod entropy;
mod rules;
mod words;

#[cfg(test)]
mod tests;

use std::fmt;

use serde_json::Value;

use rules::{is_artifact_name, is_credential_name, is_placeholder, scan, scan_named};

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
    // Each value goes with its node, the innermost credential name above it, and whether the
    // innermost name above it (object key, else the memory key) names a public artifact.
    let mut stack: Vec<(&Value, usize, Option<Owner>, bool)> = vec![(
        value,
        ROOT,
        key_owner.then_some(Owner::MemoryKey),
        is_artifact_name(key),
    )];
    while let Some((value, node, owner, artifact)) = stack.pop() {
        let refuse_owner = |owner: Owner, paths: &Paths| {
            let field = match owner {
                Owner::MemoryKey => format!("key {key:?}"),
                Owner::Node(n) => value_field(&paths.pointer(n)),
            };
            found(field, SecretRule::CredentialKeyName)
        };
        match value {
            Value::String(s) => {
                if let Some(rule) = scan_named(s, artifact) {
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
                    stack.push((item, child, owner, artifact));
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
                    stack.push((v, child, child_owner, is_artifact_name(k)));
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
