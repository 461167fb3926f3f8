//! Placeholder: the secret guard lands in the next commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused: {field} looks like a secret ({rule:?}); secrets and tokens must stay node-local")]
pub struct SecretFound {
    pub field: String,
    pub rule: SecretRule,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretRule {
    PrivateKey,
}
pub fn check_memory(_key: &str, _value: &serde_json::Value) -> Result<(), SecretFound> {
    Ok(())
}
pub fn check_text(_field: &str, _text: &str) -> Result<(), SecretFound> {
    Ok(())
}
