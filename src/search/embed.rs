//! Embeddings from an HTTP endpoint, as the reference mesh gets them: Ollama's `/api/embed`
//! (`{"model","input"}` → `{"embeddings": [[...]]}`) or an OpenAI-compatible
//! `/v1/embeddings` (`{"model","input","dimensions"?}` → `{"data": [{"embedding": [...]}]}`).
//! Configured by `MESH_EMBEDDING_URL`, `MESH_EMBEDDING_MODEL`, `MESH_EMBEDDING_DIMENSIONS`
//! (the reference's variables) or `[search]` in meshd.toml; the environment wins.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use super::SearchError;

/// The reference's default model.
pub const DEFAULT_MODEL: &str = "nomic-embed-text";
/// Texts are cut to this many characters before they are sent, as the reference does.
const MAX_CHARS: usize = 32_000;
const TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer read from the endpoint: 64 texts of 4096 dimensions as JSON fit easily.
const MAX_ANSWER_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingConfig {
    pub url: String,
    pub model: String,
    pub dimensions: Option<u32>,
}

impl EmbeddingConfig {
    /// From the environment (`env`) over `[search]`; `None` when no URL is set anywhere.
    pub fn resolve(
        configured: &crate::config::SearchConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<EmbeddingConfig>, SearchError> {
        let pick = |var: &str, configured: &Option<String>| {
            env(var)
                .filter(|value| !value.trim().is_empty())
                .or_else(|| configured.clone())
                .filter(|value| !value.trim().is_empty())
        };
        let Some(url) = pick("MESH_EMBEDDING_URL", &configured.embedding_url) else {
            return Ok(None);
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(SearchError::Config(format!(
                "the embedding URL '{url}' must start with http:// or https:// \
                 (for example http://localhost:11434/api/embed for Ollama)"
            )));
        }
        let model = pick("MESH_EMBEDDING_MODEL", &configured.embedding_model)
            .unwrap_or_else(|| DEFAULT_MODEL.to_string());
        let dimensions = match env("MESH_EMBEDDING_DIMENSIONS").filter(|v| !v.trim().is_empty()) {
            Some(text) => Some(text.trim().parse::<u32>().map_err(|_| {
                SearchError::Config(format!(
                    "MESH_EMBEDDING_DIMENSIONS='{text}' is not a positive number"
                ))
            })?),
            None => configured.embedding_dimensions,
        };
        Ok(Some(EmbeddingConfig {
            url,
            model,
            dimensions,
        }))
    }

    fn is_ollama(&self) -> bool {
        self.url.contains("/api/embed")
    }

    /// One vector per text, in order.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, SearchError> {
        let input: Vec<&str> = texts.iter().map(|text| cut(text)).collect();
        let mut body = json!({"model": self.model, "input": input});
        if let (false, Some(dimensions)) = (self.is_ollama(), self.dimensions) {
            body["dimensions"] = json!(dimensions);
        }
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            .http_status_as_error(false)
            .build()
            .new_agent();
        let mut answer = agent
            .post(&self.url)
            .header("content-type", "application/json")
            .send(body.to_string())
            .map_err(|e| self.failed(format!("cannot reach it: {e}")))?;
        let status = answer.status();
        let text = answer
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_string()
            .map_err(|e| self.failed(format!("cannot read its answer: {e}")))?;
        if !status.is_success() {
            let detail: String = text.chars().take(200).collect();
            return Err(self.failed(format!("it answered {status}: {detail}")));
        }
        let vectors = self.vectors(&text)?;
        if vectors.len() != texts.len() {
            return Err(self.failed(format!(
                "it returned {} vectors for {} texts",
                vectors.len(),
                texts.len()
            )));
        }
        Ok(vectors)
    }

    fn vectors(&self, text: &str) -> Result<Vec<Vec<f32>>, SearchError> {
        #[derive(Deserialize)]
        struct OpenAiItem {
            embedding: Vec<f32>,
        }
        let value: Value = serde_json::from_str(text)
            .map_err(|e| self.failed(format!("its answer is not JSON: {e}")))?;
        let vectors = if let Some(embeddings) = value.get("embeddings") {
            serde_json::from_value::<Vec<Vec<f32>>>(embeddings.clone()).ok()
        } else if let Some(data) = value.get("data") {
            serde_json::from_value::<Vec<OpenAiItem>>(data.clone())
                .ok()
                .map(|items| items.into_iter().map(|item| item.embedding).collect())
        } else {
            None
        };
        let vectors = vectors.ok_or_else(|| {
            self.failed(
                "its answer has neither `embeddings` (Ollama) nor `data[].embedding` (OpenAI)"
                    .into(),
            )
        })?;
        if vectors
            .iter()
            .any(|v| v.is_empty() || v.iter().any(|x| !x.is_finite()))
        {
            return Err(self.failed("it returned an empty or non-finite vector".into()));
        }
        Ok(vectors)
    }

    fn failed(&self, reason: String) -> SearchError {
        SearchError::Embedding {
            url: self.url.clone(),
            reason,
        }
    }
}

fn cut(text: &str) -> &str {
    match text.char_indices().nth(MAX_CHARS) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// Cosine similarity; 0 for vectors of different lengths or of length zero.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return 0.0;
    }
    let (mut dot, mut na, mut nb) = (0f32, 0f32, 0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SearchConfig;

    #[test]
    fn the_environment_wins_and_no_url_is_no_embedder() {
        let configured = SearchConfig {
            embedding_url: Some("http://file/api/embed".into()),
            embedding_model: Some("file-model".into()),
            embedding_dimensions: Some(8),
        };
        let none = |_: &str| None;
        let from_file = EmbeddingConfig::resolve(&configured, none)
            .unwrap()
            .unwrap();
        assert_eq!(from_file.model, "file-model");
        let env = |var: &str| {
            (var == "MESH_EMBEDDING_URL").then(|| "https://env/v1/embeddings".to_string())
        };
        let from_env = EmbeddingConfig::resolve(&configured, env).unwrap().unwrap();
        assert_eq!(from_env.url, "https://env/v1/embeddings");
        assert!(EmbeddingConfig::resolve(&SearchConfig::default(), none)
            .unwrap()
            .is_none());
        let bad = |var: &str| (var == "MESH_EMBEDDING_URL").then(|| "localhost:11434".to_string());
        assert!(EmbeddingConfig::resolve(&SearchConfig::default(), bad).is_err());
    }

    #[test]
    fn both_answer_shapes_are_read_and_garbage_is_an_error() {
        let config = EmbeddingConfig {
            url: "http://x/api/embed".into(),
            model: "m".into(),
            dimensions: None,
        };
        assert_eq!(
            config
                .vectors(r#"{"embeddings":[[1,0],[0,1]]}"#)
                .unwrap()
                .len(),
            2
        );
        let openai = r#"{"data":[{"embedding":[0.5,0.5],"index":0}]}"#;
        assert_eq!(config.vectors(openai).unwrap(), vec![vec![0.5, 0.5]]);
        assert!(config.vectors(r#"{"embeddings":[[]]}"#).is_err());
        assert!(config.vectors(r#"{"other":1}"#).is_err());
        assert!(config.vectors("not json").is_err());
    }

    #[test]
    fn cosine_is_one_for_the_same_direction() {
        assert!((cosine(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-6);
        assert_eq!(cosine(&[1.0], &[1.0, 0.0]), 0.0);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
    }
}
