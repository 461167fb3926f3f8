//! The reference mesh's canonical form of a bridge message: what its `mesh/signing.js` signs.
//!
//! The reference builds it in JavaScript: `JSON.parse` the message, copy it without `sig` and
//! `signature`, re-insert the top-level keys in sorted order, `JSON.stringify`. A signature
//! covers those exact bytes, so meshd must reproduce every JavaScript rule involved, and
//! `serde_json::Value` cannot: without its `preserve_order` feature (off in this crate, and
//! turning it on would change every map meshd prints) it sorts nested keys, which JavaScript
//! keeps in arrival order, and it does not hold numbers as JavaScript does. So this module
//! reads the message text itself into a small tree with JavaScript's semantics:
//!
//! - strings are UTF-16 code units, so an escaped lone surrogate survives as in JavaScript;
//! - numbers are `f64` (correctly rounded, as `JSON.parse`), printed as `Number::toString`
//!   prints them (shortest round trip, `1e+21`, `1e-7`, `-0` as `0`);
//! - object keys keep JavaScript's property order: array-index keys (`"0"`, `"17"`) first in
//!   numeric order, then the others in first-arrival order; a repeated key keeps its first
//!   place and takes its last value.

use std::collections::HashMap;
use std::fmt::Write;

/// Deeper nesting is refused: far beyond any message (serde_json stops at 128), and it keeps
/// the recursion here bounded whatever the input.
const MAX_DEPTH: usize = 256;

/// A JSON value as JavaScript holds it after `JSON.parse`.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Number(f64),
    String(Vec<u16>),
    Array(Vec<Json>),
    /// Entries in arrival order, each key once (see `Json::properties` for the print order).
    Object(Vec<(Vec<u16>, Json)>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not JSON at byte {offset}: {what}")]
pub struct ParseError {
    pub offset: usize,
    pub what: &'static str,
}

/// Reads `text` as `JSON.parse` does.
pub fn parse(text: &str) -> Result<Json, ParseError> {
    let mut parser = Parser {
        bytes: text.as_bytes(),
        text,
        at: 0,
    };
    let value = parser.value(0)?;
    parser.skip_space();
    if parser.at != parser.bytes.len() {
        return Err(parser.error("text after the value"));
    }
    Ok(value)
}

/// The text `JSON.stringify(value)` gives.
pub fn stringify(value: &Json) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

/// The reference's `canonicalMessage(msg)`: the top-level entries but `sig` and `signature`,
/// sorted by key, printed as `JSON.stringify` prints them; `None` when `message` is not an
/// object (the reference only signs objects).
pub fn canonical(message: &Json) -> Option<String> {
    let Json::Object(entries) = message else {
        return None;
    };
    let mut kept: Vec<(Vec<u16>, Json)> = entries
        .iter()
        .filter(|(key, _)| !is_key(key, "sig") && !is_key(key, "signature"))
        // The reference re-inserts with `out[k] = o[k]`: for `__proto__` that assignment sets
        // the prototype instead of adding a property, so the key never reaches the output.
        .filter(|(key, _)| !is_key(key, "__proto__"))
        .cloned()
        .collect();
    // `Array.prototype.sort` without a comparator compares UTF-16 code units, as `Vec<u16>`
    // does; the fresh object then puts array-index keys first again (`write_object`).
    kept.sort_by(|a, b| a.0.cmp(&b.0));
    Some(stringify(&Json::Object(kept)))
}

impl Json {
    /// The value of `key` (the last one given, as `JSON.parse` keeps).
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(entries) => entries
                .iter()
                .find(|(name, _)| is_key(name, key))
                .map(|(_, value)| value),
            _ => None,
        }
    }

    /// The value as Rust text, when it is a string without lone surrogates.
    pub fn as_text(&self) -> Option<String> {
        match self {
            Json::String(units) => String::from_utf16(units).ok(),
            _ => None,
        }
    }

    /// JavaScript truthiness, which the reference's `msg.sig || msg.signature` relies on.
    pub fn is_truthy(&self) -> bool {
        match self {
            Json::Null | Json::Bool(false) => false,
            Json::Number(n) => *n != 0.0 && !n.is_nan(),
            Json::String(units) => !units.is_empty(),
            _ => true,
        }
    }
}

pub fn is_key(units: &[u16], key: &str) -> bool {
    units.iter().copied().eq(key.encode_utf16())
}

struct Parser<'a> {
    bytes: &'a [u8],
    text: &'a str,
    at: usize,
}

impl Parser<'_> {
    fn error(&self, what: &'static str) -> ParseError {
        ParseError {
            offset: self.at,
            what,
        }
    }

    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn expect(&mut self, byte: u8, what: &'static str) -> Result<(), ParseError> {
        self.skip_space();
        match self.peek() {
            Some(found) if found == byte => {
                self.at += 1;
                Ok(())
            }
            _ => Err(self.error(what)),
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json, ParseError> {
        if depth > MAX_DEPTH {
            return Err(self.error("nested too deep"));
        }
        self.skip_space();
        match self.peek() {
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => self.string().map(Json::String),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => self.literal(),
        }
    }

    fn literal(&mut self) -> Result<Json, ParseError> {
        let rest = &self.bytes[self.at..];
        let (value, length) = if rest.starts_with(b"true") {
            (Json::Bool(true), 4)
        } else if rest.starts_with(b"false") {
            (Json::Bool(false), 5)
        } else if rest.starts_with(b"null") {
            (Json::Null, 4)
        } else {
            return Err(self.error("expected a value"));
        };
        self.at += length;
        Ok(value)
    }

    fn array(&mut self, depth: usize) -> Result<Json, ParseError> {
        self.at += 1;
        let mut items = Vec::new();
        self.skip_space();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(Json::Array(items));
        }
        loop {
            items.push(self.value(depth + 1)?);
            self.skip_space();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    return Ok(Json::Array(items));
                }
                _ => return Err(self.error("expected ',' or ']'")),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Json, ParseError> {
        self.at += 1;
        let mut entries: Vec<(Vec<u16>, Json)> = Vec::new();
        // Where each key sits, so a repeated key is found without a quadratic scan.
        let mut places: HashMap<Vec<u16>, usize> = HashMap::new();
        self.skip_space();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(Json::Object(entries));
        }
        loop {
            self.skip_space();
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a key"));
            }
            let key = self.string()?;
            self.expect(b':', "expected ':'")?;
            let value = self.value(depth + 1)?;
            match places.get(&key) {
                Some(&place) => entries[place].1 = value,
                None => {
                    places.insert(key.clone(), entries.len());
                    entries.push((key, value));
                }
            }
            self.skip_space();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return Ok(Json::Object(entries));
                }
                _ => return Err(self.error("expected ',' or '}'")),
            }
        }
    }

    fn string(&mut self) -> Result<Vec<u16>, ParseError> {
        self.at += 1;
        let mut units = Vec::new();
        loop {
            let Some(byte) = self.peek() else {
                return Err(self.error("unterminated string"));
            };
            match byte {
                b'"' => {
                    self.at += 1;
                    return Ok(units);
                }
                b'\\' => {
                    self.at += 1;
                    units.push(self.escape()?);
                }
                0x00..=0x1f => return Err(self.error("control character in a string")),
                _ => {
                    // `at` is on a character boundary: it only ever moves by whole characters.
                    let Some(c) = self.text[self.at..].chars().next() else {
                        return Err(self.error("unterminated string"));
                    };
                    let mut buffer = [0u16; 2];
                    units.extend_from_slice(c.encode_utf16(&mut buffer));
                    self.at += c.len_utf8();
                }
            }
        }
    }

    fn escape(&mut self) -> Result<u16, ParseError> {
        let Some(byte) = self.peek() else {
            return Err(self.error("unterminated escape"));
        };
        self.at += 1;
        Ok(match byte {
            b'"' => 0x22,
            b'\\' => 0x5c,
            b'/' => 0x2f,
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => 0x0a,
            b'r' => 0x0d,
            b't' => 0x09,
            b'u' => {
                let hex = self
                    .bytes
                    .get(self.at..self.at + 4)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .filter(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
                    .and_then(|hex| u16::from_str_radix(hex, 16).ok())
                    .ok_or_else(|| self.error("bad \\u escape"))?;
                self.at += 4;
                hex
            }
            _ => return Err(self.error("bad escape")),
        })
    }

    /// The JSON number grammar, then Rust's correctly rounded `f64` parse (as `JSON.parse`).
    fn number(&mut self) -> Result<Json, ParseError> {
        let start = self.at;
        self.eat(b'-');
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.error("bad number")),
        }
        if self.eat(b'.') {
            self.required_digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            let _ = self.eat(b'+') || self.eat(b'-');
            self.required_digits()?;
        }
        self.text[start..self.at]
            .parse::<f64>()
            .map(Json::Number)
            .map_err(|_| self.error("bad number"))
    }

    fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        self.at += usize::from(found);
        found
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
    }

    fn required_digits(&mut self) -> Result<(), ParseError> {
        let start = self.at;
        self.digits();
        if self.at == start {
            return Err(self.error("bad number"));
        }
        Ok(())
    }
}

fn write_value(out: &mut String, value: &Json) {
    match value {
        Json::Null => out.push_str("null"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Number(n) => write_number(out, *n),
        Json::String(units) => write_string(out, units),
        Json::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Json::Object(entries) => write_object(out, entries),
    }
}

/// Array-index keys first in numeric order, then the rest as they are: the order
/// `JSON.stringify` walks an object's own properties in.
fn write_object(out: &mut String, entries: &[(Vec<u16>, Json)]) {
    let mut indexed: Vec<(u32, &(Vec<u16>, Json))> = entries
        .iter()
        .filter_map(|entry| array_index(&entry.0).map(|index| (index, entry)))
        .collect();
    indexed.sort_by_key(|(index, _)| *index);
    let named = entries
        .iter()
        .filter(|entry| array_index(&entry.0).is_none());
    out.push('{');
    let ordered = indexed.into_iter().map(|(_, entry)| entry).chain(named);
    for (place, (key, value)) in ordered.enumerate() {
        if place > 0 {
            out.push(',');
        }
        write_string(out, key);
        out.push(':');
        write_value(out, value);
    }
    out.push('}');
}

/// A key JavaScript treats as an array index: the canonical decimal form of an integer
/// from 0 to 2^32 - 2.
fn array_index(key: &[u16]) -> Option<u32> {
    let digits = String::from_utf16(key).ok()?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) || digits.is_empty() {
        return None;
    }
    if digits.len() > 1 && digits.starts_with('0') {
        return None;
    }
    digits.parse::<u32>().ok().filter(|&index| index < u32::MAX)
}

/// `JSON.stringify`'s string quoting (ES2019 "well-formed"): the two-character escapes,
/// `\u00xx` for other control characters and `\udxxx` for lone surrogates, all in lowercase
/// hex; everything else as it is.
fn write_string(out: &mut String, units: &[u16]) {
    out.push('"');
    for decoded in char::decode_utf16(units.iter().copied()) {
        match decoded {
            Ok('"') => out.push_str("\\\""),
            Ok('\\') => out.push_str("\\\\"),
            Ok('\u{8}') => out.push_str("\\b"),
            Ok('\u{c}') => out.push_str("\\f"),
            Ok('\n') => out.push_str("\\n"),
            Ok('\r') => out.push_str("\\r"),
            Ok('\t') => out.push_str("\\t"),
            Ok(c) if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            Ok(c) => out.push(c),
            Err(lone) => {
                let _ = write!(out, "\\u{:04x}", lone.unpaired_surrogate());
            }
        }
    }
    out.push('"');
}

/// ECMAScript `Number::toString(x)` for a finite `x`; `JSON.stringify` prints `null` for the
/// rest. Rust's `{:e}` gives the shortest digits that round-trip (the `s` and `n` of the
/// specification); only the layout differs.
fn write_number(out: &mut String, x: f64) {
    if !x.is_finite() {
        out.push_str("null");
        return;
    }
    if x == 0.0 {
        out.push('0');
        return;
    }
    if x < 0.0 {
        out.push('-');
    }
    let scientific = format!("{:e}", x.abs());
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let k = digits.len() as i64;
    // The decimal point sits after `n` digits: x = 0.d1d2... * 10^n.
    let n = exponent.parse::<i64>().unwrap_or(0) + 1;
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        let (whole, fraction) = digits.split_at(n as usize);
        let _ = write!(out, "{whole}.{fraction}");
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(&digits);
    } else {
        let (first, rest) = digits.split_at(1);
        out.push_str(first);
        if !rest.is_empty() {
            let _ = write!(out, ".{rest}");
        }
        let sign = if n - 1 < 0 { '-' } else { '+' };
        let _ = write!(out, "e{sign}{}", (n - 1).abs());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical_of(text: &str) -> String {
        canonical(&parse(text).unwrap()).unwrap()
    }

    fn number(x: f64) -> String {
        stringify(&Json::Number(x))
    }

    #[test]
    fn top_level_keys_are_sorted_and_nested_ones_keep_their_order() {
        let text = r#"{"ts":1,"value":{"zeta":1,"alpha":{"y":2,"b":3}},"type":"memory","sig":"x"}"#;
        assert_eq!(
            canonical_of(text),
            r#"{"ts":1,"type":"memory","value":{"zeta":1,"alpha":{"y":2,"b":3}}}"#
        );
    }

    #[test]
    fn sig_and_signature_and_proto_are_left_out() {
        let text = r#"{"b":1,"signature":"s","__proto__":{"x":1},"a":2,"sig":"t"}"#;
        assert_eq!(canonical_of(text), r#"{"a":2,"b":1}"#);
        let nested = r#"{"v":{"__proto__":1,"sig":2}}"#;
        assert_eq!(
            canonical_of(nested),
            nested,
            "only the top level loses them"
        );
    }

    #[test]
    fn array_index_keys_come_first_in_numeric_order() {
        let text = r#"{"b":1,"10":2,"a":{"x":0,"2":1,"1":2,"01":3,"4294967295":4},"9":3}"#;
        assert_eq!(
            canonical_of(text),
            r#"{"9":3,"10":2,"a":{"1":2,"2":1,"x":0,"01":3,"4294967295":4},"b":1}"#
        );
    }

    #[test]
    fn a_repeated_key_keeps_its_first_place_and_last_value() {
        let text = r#"{"v":{"a":1,"b":2,"a":3}}"#;
        assert_eq!(canonical_of(text), r#"{"v":{"a":3,"b":2}}"#);
    }

    #[test]
    fn strings_are_escaped_as_json_stringify_does() {
        let text =
            r#"{"s":"é ✓ 𝄞 \u00e9 \/ \u001F \u007f \b\f\n\r\t \" \\ \u2028 \ud800 \udc00x"}"#;
        assert_eq!(
            canonical_of(text),
            "{\"s\":\"é ✓ 𝄞 é / \\u001f \u{7f} \\b\\f\\n\\r\\t \\\" \\\\ \u{2028} \\ud800 \\udc00x\"}"
        );
        let pair = r#"{"s":"\ud834\udd1e"}"#;
        assert_eq!(canonical_of(pair), "{\"s\":\"𝄞\"}");
    }

    #[test]
    fn numbers_print_as_javascript_prints_them() {
        let cases = [
            (0.0, "0"),
            (-0.0, "0"),
            (1.0, "1"),
            (-1.5, "-1.5"),
            (1739123456.0, "1739123456"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (123456789012345680000.0, "123456789012345680000"),
            (1.5e-7, "1.5e-7"),
            (1e-6, "0.000001"),
            (0.000001234, "0.000001234"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (2.5e25, "2.5e+25"),
            (f64::INFINITY, "null"),
            (f64::NAN, "null"),
        ];
        for (x, printed) in cases {
            assert_eq!(number(x), printed, "{x:e}");
        }
        let text = r#"{"a":12345678901234567890,"b":1E2,"c":1e400,"d":-0,"e":0.5e1}"#;
        assert_eq!(
            canonical_of(text),
            r#"{"a":12345678901234567000,"b":100,"c":null,"d":0,"e":5}"#
        );
    }

    #[test]
    fn arrays_and_literals_and_whitespace() {
        let text = " {\"a\" : [ 1 , true,false ,null, [], {} ] } \n";
        assert_eq!(canonical_of(text), r#"{"a":[1,true,false,null,[],{}]}"#);
    }

    #[test]
    fn what_json_parse_refuses_is_refused_without_panic() {
        let deep = "[".repeat(MAX_DEPTH + 2) + &"]".repeat(MAX_DEPTH + 2);
        let bad = [
            "",
            "{",
            "{\"a\"}",
            "{\"a\":1,}",
            "[1,]",
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "+1",
            "tru",
            "\"\u{1}\"",
            "\"\\x\"",
            "\"\\u12\"",
            "\"\\u12g4\"",
            "{} x",
            "'a'",
            "NaN",
            "\"abc",
            &deep,
        ];
        for text in bad {
            assert!(parse(text).is_err(), "{text:?}");
        }
        assert_eq!(canonical(&parse("[1]").unwrap()), None);
        assert_eq!(canonical(&parse("\"x\"").unwrap()), None);
    }
}
