//! Edits of a JSON5 document that keep every byte they do not change: comments, trailing
//! commas, quoting and indentation. jsonc-parser's concrete syntax tree holds the whole text,
//! trivia included, and new values take the file's indentation, newlines and comma style.

use jsonc_parser::cst::{CstInputValue, CstNode, CstObject, CstObjectProp, CstRootNode};
use jsonc_parser::ParseOptions;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("line {line}, column {column}: {message}; fix it (the file is JSON5) and run again")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("the file cannot be read back exactly as written, so meshd leaves it alone; add the settings by hand (see docs/agents.md)")]
    NotRoundTrip,
    #[error("`{key}` is {found}, but it must be {expected}: make it {expected} (or remove it) and run again")]
    Shape {
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("`{key}` is written {count} times; OpenClaw reads only the last one: keep one and run again")]
    Duplicate { key: String, count: usize },
}

/// What `ConfigDocument::set` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setting {
    Unchanged,
    Created,
    /// The value before, as compact JSON.
    Replaced {
        old: String,
    },
}

/// A parsed JSON5 document, edited in place.
pub struct ConfigDocument {
    // Dropping the root while nodes of the tree are in use panics in jsonc-parser, so every
    // node handle lives only inside a method call.
    root: CstRootNode,
}

/// Where a key path ends in the document.
enum Slot {
    Present(CstObjectProp),
    /// `path[missing..]` does not exist; `objects` are the top level and the objects at
    /// `path[..missing]`, outermost first.
    Missing {
        objects: Vec<CstObject>,
        missing: usize,
    },
}

impl ConfigDocument {
    /// Parses JSON5 as OpenClaw reads it. Missing commas are not JSON5, though jsonc-parser
    /// would accept them, so they are refused here rather than written back.
    pub fn parse(text: &str) -> Result<ConfigDocument, EditError> {
        let options = ParseOptions {
            allow_missing_commas: false,
            ..ParseOptions::default()
        };
        let root = CstRootNode::parse(text, &options).map_err(|error| EditError::Syntax {
            line: error.line_display(),
            column: error.column_display(),
            message: error.kind().to_string(),
        })?;
        // Every edit relies on the tree holding the text whole.
        if root.to_string() != text {
            return Err(EditError::NotRoundTrip);
        }
        Ok(ConfigDocument { root })
    }

    pub fn text(&self) -> String {
        self.root.to_string()
    }

    /// Whether `path` exists; a wrong shape on the way is an error.
    pub fn contains(&self, path: &[&str]) -> Result<bool, EditError> {
        Ok(matches!(self.find(path)?, Slot::Present(_)))
    }

    /// Puts `value` at `path` unless it is already there, creating the objects on the way.
    pub fn set(&self, path: &[&str], value: &Value) -> Result<Setting, EditError> {
        match self.find(path)? {
            Slot::Present(prop) => {
                let old = prop.value().and_then(|node| node.to_serde_value());
                if old.as_ref() == Some(value) {
                    return Ok(Setting::Unchanged);
                }
                let old = match (old, prop.value()) {
                    (Some(old), _) => old.to_string(),
                    (None, Some(node)) => node.to_string(),
                    (None, None) => String::new(),
                };
                prop.set_value(input_value(value));
                Ok(Setting::Replaced { old })
            }
            Slot::Missing { objects, missing } => {
                insert_missing(&objects, &path[missing..], input_value(value));
                Ok(Setting::Created)
            }
        }
    }

    /// Appends the string `item` to the array at `path` (created when missing) unless an
    /// element is a string that `same` accepts. Returns whether it appended.
    pub fn append_unique(
        &self,
        path: &[&str],
        item: &str,
        same: impl Fn(&str) -> bool,
    ) -> Result<bool, EditError> {
        match self.find(path)? {
            Slot::Present(prop) => {
                let array = prop
                    .array_value()
                    .ok_or_else(|| shape_error(path, "an array", prop.value()))?;
                let present = array.elements().iter().any(|element| {
                    element
                        .as_string_lit()
                        .and_then(|text| text.decoded_value().ok())
                        .is_some_and(|text| same(&text))
                });
                if !present {
                    array.append(CstInputValue::String(item.to_string()));
                }
                Ok(!present)
            }
            Slot::Missing { objects, missing } => {
                let array = CstInputValue::Array(vec![CstInputValue::String(item.to_string())]);
                insert_missing(&objects, &path[missing..], array);
                Ok(true)
            }
        }
    }

    fn find(&self, path: &[&str]) -> Result<Slot, EditError> {
        let mut objects = vec![self.root_object()?];
        for (depth, key) in path.iter().enumerate() {
            let Some(object) = objects.last() else {
                break;
            };
            let Some(prop) = only_property(object, key, &path[..=depth])? else {
                return Ok(Slot::Missing {
                    objects,
                    missing: depth,
                });
            };
            if depth + 1 == path.len() {
                return Ok(Slot::Present(prop));
            }
            let inner = prop
                .object_value()
                .ok_or_else(|| shape_error(&path[..=depth], "an object", prop.value()))?;
            objects.push(inner);
        }
        Ok(Slot::Missing {
            missing: path.len(),
            objects,
        })
    }

    /// The top-level object; an empty document (or one of comments only) gets one.
    fn root_object(&self) -> Result<CstObject, EditError> {
        match self.root.value() {
            None => Ok(self.root.object_value_or_set()),
            Some(node) => node.as_object().ok_or_else(|| EditError::Shape {
                key: "the top level".to_string(),
                expected: "an object",
                found: kind_of(&node),
            }),
        }
    }
}

/// The property `key` of `object`, refusing a key written twice: editing one of two copies
/// might change the one OpenClaw ignores.
fn only_property(
    object: &CstObject,
    key: &str,
    path: &[&str],
) -> Result<Option<CstObjectProp>, EditError> {
    let mut matching = object
        .properties()
        .into_iter()
        .filter(|prop| prop.decoded_name().as_deref() == Some(key));
    let first = matching.next();
    let others = matching.count();
    if others > 0 {
        return Err(EditError::Duplicate {
            key: path.join("."),
            count: others + 1,
        });
    }
    Ok(first)
}

/// Adds `keys` under the last of `objects` as nested objects ending in `value`, in one
/// insertion so the new lines are laid out together. The objects around it are spread over
/// lines first: jsonc-parser spreads only the one it inserts into, and a one-line object
/// holding a multi-line one reads badly.
fn insert_missing(objects: &[CstObject], keys: &[&str], value: CstInputValue) {
    let (Some((first, rest)), Some(parent)) = (keys.split_first(), objects.last()) else {
        return;
    };
    for object in objects {
        object.ensure_multiline();
    }
    let nested = rest.iter().rev().fold(value, |inner, key| {
        CstInputValue::Object(vec![(key.to_string(), inner)])
    });
    parent.append(first, nested);
}

fn input_value(value: &Value) -> CstInputValue {
    match value {
        Value::Null => CstInputValue::Null,
        Value::Bool(flag) => CstInputValue::Bool(*flag),
        Value::Number(number) => CstInputValue::Number(number.to_string()),
        Value::String(text) => CstInputValue::String(text.clone()),
        Value::Array(items) => CstInputValue::Array(items.iter().map(input_value).collect()),
        Value::Object(map) => CstInputValue::Object(
            map.iter()
                .map(|(key, value)| (key.clone(), input_value(value)))
                .collect(),
        ),
    }
}

fn shape_error(path: &[&str], expected: &'static str, found: Option<CstNode>) -> EditError {
    EditError::Shape {
        key: path.join("."),
        expected,
        found: found.as_ref().map_or("empty", kind_of),
    }
}

fn kind_of(node: &CstNode) -> &'static str {
    if node.as_object().is_some() {
        "an object"
    } else if node.as_array().is_some() {
        "an array"
    } else if node.as_string_lit().is_some() {
        "a string"
    } else if node.as_number_lit().is_some() {
        "a number"
    } else if node.as_boolean_lit().is_some() {
        "a boolean"
    } else if node.as_null_keyword().is_some() {
        "null"
    } else {
        "a bare word"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const COMMENTED: &str = "// OpenClaw configuration\n{\n  /* the gateway */\n  gateway: { port: 18789, },\n  'skills': {\n    load: {\n      extraDirs: [\"/a\", \"/b\",], // shared\n    },\n  },\n}\n";

    fn parse(text: &str) -> ConfigDocument {
        ConfigDocument::parse(text).unwrap()
    }

    #[test]
    fn an_append_keeps_comments_and_trailing_commas_elsewhere() {
        let document = parse(COMMENTED);
        assert!(document
            .append_unique(&["skills", "load", "extraDirs"], "/c", |dir| dir == "/c")
            .unwrap());
        let text = document.text();
        assert!(text.starts_with(
            "// OpenClaw configuration\n{\n  /* the gateway */\n  gateway: { port: 18789, },\n"
        ));
        assert!(
            text.contains("extraDirs: [\"/a\", \"/b\", \"/c\"], // shared\n    },\n  },\n}\n"),
            "{text}"
        );
    }

    #[test]
    fn an_item_already_present_is_not_appended_again() {
        let document = parse(COMMENTED);
        let appended = document
            .append_unique(&["skills", "load", "extraDirs"], "/b/", |dir| {
                std::path::Path::new(dir) == std::path::Path::new("/b/")
            })
            .unwrap();
        assert!(!appended);
        assert_eq!(document.text(), COMMENTED);
    }

    #[test]
    fn missing_keys_are_created_as_nested_objects_in_the_file_style() {
        let document = parse(COMMENTED);
        let path = ["agents", "defaults", "memorySearch", "extraPaths"];
        assert!(document.append_unique(&path, "/m", |_| false).unwrap());
        let text = document.text();
        let expected = "  \"agents\": {\n    \"defaults\": {\n      \"memorySearch\": {\n        \"extraPaths\": [\"/m\"],\n      },\n    },\n  },\n}\n";
        assert!(text.ends_with(expected), "{text}");
        let reread = parse(&text);
        assert!(reread.contains(&path).unwrap());
    }

    #[test]
    fn set_creates_then_reports_unchanged_then_replaces() {
        let document = parse("{}");
        let path = ["mcp", "servers", "meshd", "command"];
        assert_eq!(
            document.set(&path, &json!("/bin/meshd")).unwrap(),
            Setting::Created
        );
        assert_eq!(
            document.set(&path, &json!("/bin/meshd")).unwrap(),
            Setting::Unchanged
        );
        assert_eq!(
            document.set(&path, &json!("/usr/bin/meshd")).unwrap(),
            Setting::Replaced {
                old: "\"/bin/meshd\"".to_string()
            }
        );
        let value: Value = serde_json::from_str(&document.text()).unwrap();
        assert_eq!(
            value["mcp"]["servers"]["meshd"]["command"],
            "/usr/bin/meshd"
        );
    }

    #[test]
    fn an_empty_or_comment_only_document_gets_an_object() {
        for text in ["", "// nothing yet\n"] {
            let document = parse(text);
            document.set(&["a"], &json!(1)).unwrap();
            assert!(document.text().starts_with(text));
            assert!(document.text().contains("\"a\": 1"), "{}", document.text());
        }
    }

    #[test]
    fn wrong_shapes_name_the_key_and_change_nothing() {
        let cases = [
            ("{ skills: \"none\" }", "skills", "a string"),
            (
                "{ skills: { load: { extraDirs: \"/x\" } } }",
                "skills.load.extraDirs",
                "a string",
            ),
            ("{ skills: { load: [] } }", "skills.load", "an array"),
        ];
        for (text, key, found) in cases {
            let document = parse(text);
            let error = document
                .append_unique(&["skills", "load", "extraDirs"], "/s", |_| false)
                .unwrap_err();
            match &error {
                EditError::Shape {
                    key: named,
                    found: kind,
                    ..
                } => {
                    assert_eq!(named, key);
                    assert_eq!(*kind, found);
                }
                other => panic!("{other:?}"),
            }
            assert!(error.to_string().contains(key));
            assert_eq!(document.text(), text);
        }
        let error = ConfigDocument::parse("[1, 2]")
            .unwrap()
            .set(&["a"], &json!(1))
            .unwrap_err();
        assert!(error.to_string().contains("the top level"), "{error}");
    }

    #[test]
    fn a_key_written_twice_is_refused() {
        let document = parse("{ mcp: {}, \"mcp\": { servers: {} } }");
        let error = document
            .set(&["mcp", "servers", "meshd"], &json!({}))
            .unwrap_err();
        assert!(
            matches!(&error, EditError::Duplicate { key, count: 2 } if key == "mcp"),
            "{error:?}"
        );
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        for text in ["{\n  a: 1,\n  b: [1 2],\n}", "{\n  a: 1\n", "{\n  a: @\n}"] {
            let Err(error) = ConfigDocument::parse(text) else {
                panic!("accepted {text:?}");
            };
            assert!(
                matches!(error, EditError::Syntax { line: 1..=3, .. }),
                "{error:?}"
            );
            assert!(error.to_string().starts_with("line "), "{error}");
        }
    }

    #[test]
    fn json5_literals_survive_an_edit_byte_for_byte() {
        let text = "{\n  hex: 0x1F,\n  big: Infinity,\n  nan: NaN,\n  plus: +1,\n  half: .5,\n  quote: 'single',\n  long: \"one\\\n two\",\n}\n";
        let document = parse(text);
        document.set(&["added"], &json!(true)).unwrap();
        let edited = document.text();
        let kept = text.trim_end_matches("}\n");
        assert!(edited.starts_with(kept), "{edited}");
        assert!(edited.ends_with("  \"added\": true,\n}\n"), "{edited}");
    }
}
