//! The Content-Type a write may carry. A web page may send `text/plain`,
//! `application/x-www-form-urlencoded` and `multipart/form-data` anywhere without asking the
//! server first (a CORS "simple request", or a plain HTML form), so a write says it is JSON.
//!
//! A write with no Content-Type at all is accepted: the reference servers never read the
//! header, and Node's `http.request` and most HTTP libraries send none unless told to. A
//! browser sends none only for a body it cannot label, and then always with an Origin, which
//! `browser` refuses unless it is allowed.

use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};

use super::HttpError;

/// What a route's body may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyType {
    /// One JSON document: `application/json`.
    Json,
    /// JSON, or JSON Lines (one message a line) as the bridge routes read them.
    JsonOrLines,
}

const JSON: &str = "application/json";
const JSON_LINES: [&str; 2] = ["application/x-ndjson", "application/jsonl"];

impl BodyType {
    /// 415 when the request declares a media type this route does not read; parameters such
    /// as `charset` are ignored.
    pub fn check(self, headers: &HeaderMap) -> Result<(), HttpError> {
        let Some(declared) = headers.get(CONTENT_TYPE) else {
            return Ok(());
        };
        let declared = String::from_utf8_lossy(declared.as_bytes());
        let media_type = declared.split(';').next().unwrap_or_default().trim();
        let is = |expected: &str| media_type.eq_ignore_ascii_case(expected);
        let accepted = match self {
            BodyType::Json => is(JSON),
            BodyType::JsonOrLines => is(JSON) || JSON_LINES.into_iter().any(is),
        };
        if accepted {
            return Ok(());
        }
        let expected = match self {
            BodyType::Json => JSON.to_string(),
            BodyType::JsonOrLines => {
                format!("{JSON} (or {} for JSON Lines)", JSON_LINES.join(", "))
            }
        };
        Err(HttpError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type '{declared}' is not accepted: send the body as {expected}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body_type: BodyType, content_type: Option<&str>) -> Result<(), StatusCode> {
        let mut headers = HeaderMap::new();
        if let Some(value) = content_type {
            headers.insert(CONTENT_TYPE, value.parse().unwrap());
        }
        body_type.check(&headers).map_err(|e| e.status)
    }

    #[test]
    fn json_with_any_parameters_or_no_type_at_all_passes() {
        for body_type in [BodyType::Json, BodyType::JsonOrLines] {
            for accepted in [
                None,
                Some("application/json"),
                Some("Application/JSON; charset=utf-8"),
            ] {
                assert_eq!(check(body_type, accepted), Ok(()), "{accepted:?}");
            }
        }
        assert_eq!(
            check(BodyType::JsonOrLines, Some("application/x-ndjson")),
            Ok(())
        );
        assert_eq!(
            check(BodyType::JsonOrLines, Some("application/jsonl")),
            Ok(())
        );
    }

    #[test]
    fn what_a_form_can_send_is_415() {
        for refused in [
            "text/plain;charset=UTF-8",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "",
            "application/jsonp",
        ] {
            for body_type in [BodyType::Json, BodyType::JsonOrLines] {
                let status = check(body_type, Some(refused));
                assert_eq!(status, Err(StatusCode::UNSUPPORTED_MEDIA_TYPE), "{refused}");
            }
        }
        let lines = check(BodyType::Json, Some("application/x-ndjson"));
        assert_eq!(lines, Err(StatusCode::UNSUPPORTED_MEDIA_TYPE));
    }
}
