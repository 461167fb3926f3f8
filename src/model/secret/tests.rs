//! The guard against real-looking credentials and ordinary text alike.

use serde_json::json;

use super::entropy::is_token_byte;
use super::*;

// Every credential-shaped literal is assembled with `concat!` so that this source file never
// holds a contiguous token that a scanner (or this guard, fed the file) would flag.
const OPENAI_KEY: &str = concat!("sk-", "CZyZo9vxKwZQOZ9no17JDrhHZSBAdzANrwcPO76vYzftLw9M");
const OPENAI_PROJ_KEY: &str = concat!("sk-", "proj-", "lRTIZ7FAbopt3szYQ9ORAdnXJHy_7d4IQZAGcqC3PJ");
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
        (
            s("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----"),
            PrivateKey,
        ),
        (
            s("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA"),
            PrivateKey,
        ),
        (
            s("key:\n-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEI"),
            PrivateKey,
        ),
        (s("-----BEGIN ENCRYPTED PRIVATE KEY-----"), PrivateKey),
        (s("-----BEGIN PRIVATE KEY-----"), PrivateKey),
        (s("-----BEGIN PGP PRIVATE KEY BLOCK-----"), PrivateKey),
        // OpenAI.
        (s(OPENAI_KEY), OpenAiKey),
        (s(OPENAI_PROJ_KEY), OpenAiKey),
        (format!("export OPENAI_API_KEY={OPENAI_KEY}"), OpenAiKey),
        (
            format!("client = OpenAI(api_key=\"{OPENAI_PROJ_KEY}\")"),
            OpenAiKey,
        ),
        // GitHub.
        (s(GHP), GithubToken),
        (s(GHO), GithubToken),
        (s(GHU), GithubToken),
        (s(GHS), GithubToken),
        (s(GHR), GithubToken),
        (s(GITHUB_PAT), GithubToken),
        (
            format!("git clone https://x-access-token:{GHP}@github.com/o/r.git"),
            GithubToken,
        ),
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
        (
            s("curl -H 'Authorization: Basic dXNlcjpwYXNz' https://api.test/"),
            BearerHeader,
        ),
        (
            s(r#"{"headers": {"Authorization": "Token 9f8e7d6c5b4a"}}"#),
            BearerHeader,
        ),
        (
            s("send it with bearer Ab12Cd34Ef56Gh78Ij90Kl"),
            BearerHeader,
        ),
        // Long high-entropy tokens.
        (s(BASE64_SECRET), HighEntropyToken),
        (
            format!("the backup passphrase is \"{BASE64URL_SECRET}\" keep it"),
            HighEntropyToken,
        ),
        (format!("seed {HEX50_SECRET}"), HighEntropyToken),
        (format!("0x{HEX80_SECRET}"), HighEntropyToken),
        (
            format!("my aws secret is {AWS_SECRET} ok?"),
            HighEntropyToken,
        ),
        (format!("bot {TELEGRAM_BOT}"), HighEntropyToken),
        // Credentials in URLs.
        (
            s("postgres://admin:hunter2@db.internal:5432/app"),
            CredentialKeyName,
        ),
        (s("redis://:s3cretPass@cache:6379/0"), CredentialKeyName),
        (
            s("https://api.service.test/v1/items?page=2&api_key=abc123"),
            CredentialKeyName,
        ),
        (
            s("https://app.test/callback#access_token=xyz987&token_type=bearer"),
            CredentialKeyName,
        ),
        (
            s("https://files.test/f.txt?X-Amz-Date=20240101&X-Amz-Signature=4f2a9c81d3e7b6a05c4d"),
            CredentialKeyName,
        ),
        (
            s("https://maps.googleapis.com/maps/api/js?key=AIzaQ8wE7rT6yU5iO4pA3sD2fG1hJ0kLzXc"),
            CredentialKeyName,
        ),
        (
            s("https://hooks.test/notify?password=letmein"),
            CredentialKeyName,
        ),
        // Assignments to credential names in free text.
        (s("DB_PASSWORD=hunter2"), CredentialKeyName),
        (
            s("mysql -u root --password=Tr0ub4dor&3 app"),
            CredentialKeyName,
        ),
        (
            s(r#"password = "correct horse battery staple""#),
            CredentialKeyName,
        ),
        (s(r#"{"client_secret": "abc"}"#), CredentialKeyName),
        (s("apiKey: 'q1w2e3r4'"), CredentialKeyName),
        (s("'db_pass' => 'letmein'"), CredentialKeyName),
        (s(r#"token := "abc123""#), CredentialKeyName),
        (s("GITHUB_TOKEN=abc123def"), CredentialKeyName),
        (
            s("kubectl create secret generic db --from-literal=password=S3cr3t!"),
            CredentialKeyName,
        ),
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

// Public artifacts: random-looking by design, labelled by their names (issue 15).
const ED25519_SIG: &str = concat!(
    "9zUChbwJKOn8PQQO4c6uJdux/149HVZ3tVtHZENYOu/",
    "bNN9azFA5Tuy6gms7k3TXa30UdpDMXHCRUO6xpXNnxg=="
);
const ED25519_SIG_URL: &str = concat!(
    "3c_-EH318dYEMiOILJ3wyLDYuARJh34m49sZ5B1lDBJ3udfrjkt",
    "m7IA7LYvygFoUPE9PKtOgUWPneVbeccgSwQ"
);
const SHA256_B64: &str = concat!("4OZ1jFHH3rrePIFIcm+gBUgLsdcU", "/KfEzVhEEyW7+F8=");
const SHA512_B64: &str = concat!(
    "Ac2noy8EjGJf/xi5q8Q+T7D7MfBoEE/bByPgUSce0Sodu0y8m",
    "o6v3ii9ABe0R6QV6Zo8uQ6RW9xqidCukWLVpg=="
);
const SRI_SHA384: &str = concat!(
    "sha384-",
    "SHZa0b95zBO5tAjgcIhx7lxMGtB0ArfxyN1pFyAWZ8Y1+QQg93KNRM6/eh0Ok7Pq"
);
const CID_V0: &str = concat!("QmYwAPJzv5CZsnA625s3Xf2n", "emtYgPpHdWEz79ojWnPbdG");
/// An Azure storage account key: 64 random bytes, exactly the shape of an Ed25519 signature.
const AZURE_KEY: &str = concat!(
    "6NbLRXkkHa1+Y2AD10Lt970XSRAKc+QP8UEo0n+Qe9/",
    "5fwuAD3nXFJH1djvHwZdysbhBrRWcAg5VwKbVYW9YDg=="
);
/// `openssl rand -base64 32`: the shape of a base64 SHA-256 digest.
const RAND_32_B64: &str = concat!("nu+0TZhyT4zSB8xu5N7kYgPkq", "+pZnWPohAAkQD9//IM=");

/// Signatures, digests and ids under the names that say what they are: every one passes.
fn public_artifacts() -> Vec<(&'static str, serde_json::Value)> {
    vec![
        ("release.sig", json!(ED25519_SIG)),
        ("release.signature", json!(ED25519_SIG_URL)),
        ("bridge.msg", json!({ "payload": "hi", "sig": ED25519_SIG })),
        ("bridge.msg", json!({ "signature": ED25519_SIG })),
        (
            "bridge.msgs",
            json!({ "signatures": [ED25519_SIG, ED25519_SIG_URL] }),
        ),
        (
            "artifact",
            json!({ "sha256": SHA256_B64, "sha512": SHA512_B64 }),
        ),
        ("artifact.digest", json!(format!("sha256:{SHA256_B64}"))),
        ("artifact", json!({ "checksum_b64": SHA256_B64 })),
        ("artifact", json!({ "integrity": SRI_SHA384 })),
        ("node.key_fingerprint", json!(SHA256_B64)),
        ("api_key_hash", json!(SHA256_B64)),
        ("cdn.etag", json!(SHA256_B64)),
        ("ipfs", json!({ "cid": CID_V0 })),
        ("notes", json!(CID_V0)),
        ("notes", json!(SRI_SHA384)),
        (
            "notes",
            json!(format!(
                "<script src=\"/app.js\" integrity=\"{SRI_SHA384}\"></script>"
            )),
        ),
        (
            "notes",
            json!(format!("signed release; sig: {ED25519_SIG}")),
        ),
        (
            "notes",
            json!(format!("{{\"type\":\"memory\",\"sig\":\"{ED25519_SIG}\"}}")),
        ),
        ("notes", json!(format!("sha512={SHA512_B64}"))),
        (
            "notes",
            json!("sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
        ),
        (
            "notes",
            json!("sha1 79448813e82fdecb51873e8ad0107e0c5a57112e"),
        ),
        ("notes", json!("MD5 1EF21DAD4727F400E311059101E207A3")),
        ("commit", json!("3f5fd8dd41153bc5fdca9427e9e05be2c767ba23")),
        ("request.id", json!("550e8400-e29b-41d4-a716-446655440000")),
        (
            "change",
            json!({ "hash": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08" }),
        ),
    ]
}

/// Credentials, whatever else sits beside them: every one is refused with this rule.
fn credentials_next_to_artifacts() -> Vec<(&'static str, serde_json::Value, SecretRule)> {
    use SecretRule::*;
    vec![
        // The same shapes as the artifacts above, without a name or under a credential name
        // (the value is scanned before its name is judged, so the statistical rule reports).
        ("notes", json!(ED25519_SIG), HighEntropyToken),
        ("notes", json!(AZURE_KEY), HighEntropyToken),
        (
            "notes",
            json!(format!("the signature is {ED25519_SIG}")),
            HighEntropyToken,
        ),
        ("notes", json!(RAND_32_B64), HighEntropyToken),
        ("storage.account_key", json!(AZURE_KEY), HighEntropyToken),
        ("db.password", json!(ED25519_SIG), HighEntropyToken),
        ("cfg", json!({ "token": SHA256_B64 }), HighEntropyToken),
        ("cfg", json!({ "secret": ED25519_SIG }), HighEntropyToken),
        ("cfg", json!({ "api_key": SHA512_B64 }), HighEntropyToken),
        (
            "cfg",
            json!({ "signing_key": ED25519_SIG }),
            HighEntropyToken,
        ),
        (
            "cfg",
            json!({ "signing_secret": ED25519_SIG }),
            HighEntropyToken,
        ),
        // A credential name above the artifact name wins.
        ("api_key", json!({ "sig": ED25519_SIG }), CredentialKeyName),
        (
            "cfg",
            json!({ "password": { "hash": SHA256_B64 } }),
            CredentialKeyName,
        ),
        // An artifact name does not excuse a credential's own shape.
        ("cfg", json!({ "sig": GHP }), GithubToken),
        ("cfg", json!({ "signature": JWT_TOKEN }), Jwt),
        ("cfg", json!({ "hash": OPENAI_KEY }), OpenAiKey),
        ("cfg", json!({ "digest": AWS_KEY_ID }), AwsAccessKey),
        (
            "release.sig",
            json!(format!("Bearer {BASE64_SECRET}")),
            BearerHeader,
        ),
        // Under an artifact name, only one encoded blob is excused, not prose around a secret.
        (
            "release.sig",
            json!(format!("sig ok; backup {AZURE_KEY}")),
            HighEntropyToken,
        ),
        (
            "cfg",
            json!({ "hash": format!("{ED25519_SIG} {BASE64_SECRET}") }),
            HighEntropyToken,
        ),
        // In text, the label must be the name right before the value.
        (
            "notes",
            json!(format!("signature verified, key {AZURE_KEY}")),
            HighEntropyToken,
        ),
        (
            "notes",
            json!(format!(
                "DefaultEndpointsProtocol=https;AccountName=x;AccountKey={AZURE_KEY}"
            )),
            HighEntropyToken,
        ),
    ]
}

#[test]
fn signatures_digests_and_content_ids_under_their_names_pass() {
    for (key, value) in public_artifacts() {
        assert_eq!(check_memory(key, &value), Ok(()), "{key} {value}");
    }
}

#[test]
fn artifact_names_keep_every_credential_refused() {
    for (key, value, rule) in credentials_next_to_artifacts() {
        let got = check_memory(key, &value).err().map(|e| e.rule);
        assert_eq!(got, Some(rule), "{key} {value}");
    }
}

#[test]
fn artifact_and_credential_names_are_told_apart() {
    let artifact = [
        "sig",
        "signature",
        "release.sig",
        "sha256",
        "SHA512",
        "content_digest",
        "checksumB64",
        "fingerprint",
        "api_key_hash",
        "etag",
        "cid",
    ];
    let not_artifact = [
        "signing_key",
        "signing_secret",
        "sig_token",
        "hash_secret",
        "password",
        "hashing",
        "signer",
        "notes",
    ];
    for name in artifact {
        assert!(rules::is_artifact_name(name), "{name} names an artifact");
        assert!(!is_credential_name(name), "{name} is not a credential name");
    }
    for name in not_artifact {
        assert!(!rules::is_artifact_name(name), "{name} names no artifact");
    }
}
