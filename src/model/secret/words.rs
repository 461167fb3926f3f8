//! The word lists the name rules and the placeholder test read, as tables (see "Key names"
//! and "Placeholders" in the module docs of `secret`). Words are lowercase.

/// A name whose last word is one of these is a credential's.
pub(super) const CREDENTIAL_WORDS: &[&str] = &[
    "password",
    "passwords",
    "passwd",
    "passphrase",
    "secret",
    "secrets",
    "credential",
    "credentials",
    "creds",
    "authorization",
    "mnemonic",
    "apikey",
    "accesskey",
    "secretkey",
    "privatekey",
    "privkey",
    "signingkey",
    "masterkey",
    "encryptionkey",
    "sessionkey",
    "accesstoken",
    "authtoken",
    "apitoken",
    "bearertoken",
    "refreshtoken",
    "idtoken",
    "sessiontoken",
    "csrftoken",
    "xsrftoken",
];

/// A single word ending in one of these is a credential's (`dbpassword`, `clientsecret`).
pub(super) const CREDENTIAL_ENDINGS: &[&str] = &["password", "passwd", "secret"];

/// Trailing words that still denote the credential itself (`db_password_confirmation`):
/// dropped before the last word is judged.
pub(super) const CREDENTIAL_FORM_WORDS: &[&str] = &[
    "value",
    "val",
    "raw",
    "plain",
    "plaintext",
    "cleartext",
    "b64",
    "base64",
    "hex",
    "str",
    "string",
    "confirm",
    "confirmation",
];

/// `token` after one of these is an LLM vocabulary, pagination or counting token, not a
/// credential.
pub(super) const NOT_CREDENTIAL_BEFORE_TOKEN: &[&str] = &[
    "eos",
    "bos",
    "pad",
    "unk",
    "sep",
    "cls",
    "mask",
    "special",
    "start",
    "end",
    "stop",
    "page",
    "next",
    "prev",
    "previous",
    "continuation",
    "pagination",
    "cursor",
    "sync",
    "resume",
    "max",
    "min",
    "num",
    "total",
    "input",
    "output",
    "prompt",
    "completion",
    "first",
    "last",
    "current",
    "word",
];

/// `key` is a credential only after one of these (`sort_key`, `public_key` pass).
pub(super) const CREDENTIAL_BEFORE_KEY: &[&str] = &[
    "api",
    "private",
    "priv",
    "secret",
    "access",
    "signing",
    "encryption",
    "master",
    "auth",
    "client",
    "session",
    "hmac",
    "shared",
    "subscription",
    "app",
];

/// `pass` is a credential only after one of these (`render_pass`, `first_pass` pass).
pub(super) const CREDENTIAL_BEFORE_PASS: &[&str] = &[
    "db", "database", "user", "admin", "root", "smtp", "mail", "email", "ftp", "redis", "mysql",
    "postgres", "pg", "ldap", "wifi", "proxy", "login", "basic", "http",
];

/// `phrase` is a credential only after one of these.
pub(super) const CREDENTIAL_BEFORE_PHRASE: &[&str] = &["seed", "recovery", "pass"];

/// URL parameters that carry API keys and signatures of pre-signed URLs, whatever their
/// names say; compared lowercase.
pub(super) const URL_KEY_PARAMS: &[&str] = &[
    "key",
    "sig",
    "signature",
    "x-amz-signature",
    "x-goog-signature",
];

/// A value made only of these is a mask (`****`, `xxxx`, `•••`).
pub(super) const MASK_CHARS: &[char] = &['*', 'x', 'X', '.', '#', '-', '_', '•', '…'];

/// Values that stand for a credential rather than being one; compared lowercase.
pub(super) const PLACEHOLDER_WORDS: &[&str] = &[
    "none", "null", "nil", "n/a", "redacted", "todo", "tbd", "password", "passwd", "pass", "pwd",
    "secret", "token", "apikey", "api_key", "key",
];

/// A value containing one of these (lowercase) is a placeholder.
pub(super) const PLACEHOLDER_MARKERS: &[&str] = &["your", "example", "placeholder"];

/// A name whose last word is one of these labels a public artifact derived from data: a
/// digest, checksum, signature or content address (`release.sig`, `sha256`, `etag`). Random by
/// design, such values would trip the statistical rule; their name says what they are.
pub(super) const ARTIFACT_WORDS: &[&str] = &[
    "sig",
    "sigs",
    "signature",
    "signatures",
    "hash",
    "hashes",
    "digest",
    "digests",
    "checksum",
    "checksums",
    "fingerprint",
    "fingerprints",
    "integrity",
    "etag",
    "cid",
    "multihash",
    "md5",
    "sha",
    "sha1",
    "sha224",
    "sha256",
    "sha384",
    "sha512",
    "sha3",
    "blake2b",
    "blake2s",
    "blake3",
    "crc32",
];

/// Digest names that label the token they begin, as Subresource Integrity and Nix write
/// digests (`sha384-<base64>`); compared lowercase, with the `-` or `_` after them.
pub(super) const DIGEST_PREFIXES: &[&str] =
    &["sha1", "sha256", "sha384", "sha512", "md5", "blake3"];
