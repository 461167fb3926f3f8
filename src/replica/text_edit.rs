//! How a skill's Automerge Text is brought to a new content: the edit plan.
//!
//! Automerge's own `update_text` runs an unbounded Myers diff over graphemes, quadratic in the
//! size of the change (a 10k-character rewrite took 1.7 s, 100k more than two minutes). Here
//! the texts are compared line by line with imara-diff's histogram algorithm (near linear),
//! and each changed run of lines of at most `REFINE_MAX_BYTES` on both sides is compared again
//! grapheme by grapheme (imara-diff's Myers, whose heuristics cap its cost), so an edit inside
//! a line stays a small splice and merges with a concurrent edit of the same line as before.
//! A larger changed run is spliced whole. Splitting at graphemes never cuts a character, so
//! the splice indexes are right in whatever unit the document counts (automerge 0.12 counts
//! Unicode code points unless built with `utf8-indexing` or `utf16-indexing`).
//!
//! What remains is Automerge's own cost per character: in automerge 0.12 about 1.5 µs to
//! insert one and 8 µs to delete one, so rewriting a 1 MiB text in place costs about 10 s and
//! makes every peer apply a million deletions. When a plan would delete more than half of a
//! text of at least `REWRITE_MIN_WIDTH` characters, the text is rewritten instead: a fresh
//! Text object holding the new content (about 0.4 s for the longest text kept as Text, see
//! `skills_doc`). A concurrent edit of the old text is then lost rather than merged into a
//! text that no longer has its context; smaller texts and smaller changes always merge.

use std::ops::Range;

use automerge::TextEncoding;
use imara_diff::{Algorithm, Diff, InternedInput};
use unicode_segmentation::UnicodeSegmentation;

/// Changed runs of lines up to this size (bytes, each side) are refined to graphemes.
const REFINE_MAX_BYTES: usize = 4096;
/// Texts shorter than this (in the document's index unit) are always edited in place.
const REWRITE_MIN_WIDTH: usize = 4096;

/// How to turn a Text object's content into a new one.
#[derive(Debug, PartialEq, Eq)]
pub enum TextEdit {
    /// Splices to make in order; each index already counts the splices before it.
    Splices(Vec<Splice>),
    /// Most of a large text changes: put a fresh Text object holding the new content.
    Rewrite,
}

/// One `splice_text`: at `index`, delete `delete` units and insert `insert`.
#[derive(Debug, PartialEq, Eq)]
pub struct Splice {
    pub index: usize,
    pub delete: usize,
    pub insert: String,
}

/// The edit that turns `old` into `new`, with indexes counted in `encoding`.
pub fn plan(old: &str, new: &str, encoding: TextEncoding) -> TextEdit {
    let mut planner = Planner {
        encoding,
        at: 0,
        deleted: 0,
        splices: Vec::new(),
    };
    if old != new {
        planner.diff(old, new, Unit::Line);
    }
    let old_width = width(encoding, old);
    if old_width >= REWRITE_MIN_WIDTH && planner.deleted * 2 > old_width {
        return TextEdit::Rewrite;
    }
    TextEdit::Splices(planner.splices)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Unit {
    Line,
    Grapheme,
}

struct Planner {
    encoding: TextEncoding,
    /// Where the next unchanged piece starts in the text as edited so far.
    at: usize,
    /// Units the splices delete, for the rewrite rule.
    deleted: usize,
    splices: Vec<Splice>,
}

impl Planner {
    /// Plans the edit of `old` (starting at `self.at`) into `new` and leaves `self.at` after it.
    fn diff(&mut self, old: &str, new: &str, unit: Unit) {
        let (old_pieces, new_pieces) = (Pieces::split(old, unit), Pieces::split(new, unit));
        let mut input = InternedInput::default();
        input.update_before(old_pieces.iter());
        input.update_after(new_pieces.iter());
        let algorithm = match unit {
            Unit::Line => Algorithm::Histogram,
            // The histogram heuristic does not work on a small alphabet of tokens.
            Unit::Grapheme => Algorithm::Myers,
        };
        let diff = Diff::compute(algorithm, &input);
        let mut unchanged_from = 0;
        for hunk in diff.hunks() {
            self.keep(old_pieces.span(unchanged_from..hunk.before.start));
            let removed = old_pieces.span(hunk.before.start..hunk.before.end);
            let added = new_pieces.span(hunk.after.start..hunk.after.end);
            let refine = unit == Unit::Line
                && removed.len() <= REFINE_MAX_BYTES
                && added.len() <= REFINE_MAX_BYTES;
            if refine {
                self.diff(removed, added, Unit::Grapheme);
            } else {
                self.splice(removed, added);
            }
            unchanged_from = hunk.before.end;
        }
        self.keep(old_pieces.span(unchanged_from..old_pieces.len()));
    }

    fn keep(&mut self, unchanged: &str) {
        self.at += width(self.encoding, unchanged);
    }

    fn splice(&mut self, removed: &str, added: &str) {
        let delete = width(self.encoding, removed);
        self.splices.push(Splice {
            index: self.at,
            delete,
            insert: added.to_string(),
        });
        self.deleted += delete;
        self.at += width(self.encoding, added);
    }
}

/// A text cut into lines (each with its `\n`) or graphemes, which concatenate back to it.
struct Pieces<'a> {
    text: &'a str,
    /// Byte offset of each piece, then the text's length.
    bounds: Vec<usize>,
}

impl<'a> Pieces<'a> {
    fn split(text: &'a str, unit: Unit) -> Pieces<'a> {
        let mut bounds: Vec<usize> = match unit {
            Unit::Line => text
                .split_inclusive('\n')
                .scan(0, |end, line| {
                    let start = *end;
                    *end += line.len();
                    Some(start)
                })
                .collect(),
            Unit::Grapheme => text.grapheme_indices(true).map(|(at, _)| at).collect(),
        };
        bounds.push(text.len());
        Pieces { text, bounds }
    }

    fn len(&self) -> u32 {
        (self.bounds.len() - 1) as u32
    }

    fn span(&self, pieces: Range<u32>) -> &'a str {
        &self.text[self.bounds[pieces.start as usize]..self.bounds[pieces.end as usize]]
    }

    fn iter(&self) -> impl Iterator<Item = &'a str> + '_ {
        (0..self.len()).map(|piece| self.span(piece..piece + 1))
    }
}

/// The length of `text` in the unit Automerge indexes Text by.
pub fn width(encoding: TextEncoding, text: &str) -> usize {
    match encoding {
        TextEncoding::UnicodeCodePoint => text.chars().count(),
        TextEncoding::Utf8CodeUnit => text.len(),
        TextEncoding::Utf16CodeUnit => text.encode_utf16().count(),
        TextEncoding::GraphemeCluster => text.graphemes(true).count(),
    }
}

#[cfg(test)]
mod tests {
    use automerge::transaction::Transactable;
    use automerge::{Automerge, ObjType, ReadDoc, ROOT};
    use proptest::prelude::*;

    use super::*;

    /// Applies the plan to a Text holding `old` and returns the result.
    fn edited(old: &str, new: &str) -> (String, TextEdit) {
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        let text = tx.put_object(ROOT, "t", ObjType::Text).unwrap();
        tx.splice_text(&text, 0, 0, old).unwrap();
        let edit = plan(old, new, tx.text_encoding());
        match &edit {
            TextEdit::Splices(splices) => {
                for splice in splices {
                    tx.splice_text(&text, splice.index, splice.delete as isize, &splice.insert)
                        .unwrap();
                }
            }
            TextEdit::Rewrite => {
                let fresh = tx.put_object(ROOT, "t", ObjType::Text).unwrap();
                tx.splice_text(&fresh, 0, 0, new).unwrap();
            }
        }
        let (_, text) = tx.get(ROOT, "t").unwrap().unwrap();
        (tx.text(&text).unwrap(), edit)
    }

    #[test]
    fn an_edit_inside_a_line_is_a_small_splice() {
        let old = "# Triage\nfirst step\nsecond step\n";
        let new = "# Triage\nfirst small step\nsecond step\n";
        let (result, edit) = edited(old, new);
        assert_eq!(result, new);
        // "small " or an equally short slide of it ("mall s" one further).
        let TextEdit::Splices(splices) = edit else {
            panic!("a small edit is spliced");
        };
        assert_eq!(splices.len(), 1);
        assert_eq!((splices[0].delete, splices[0].insert.len()), (0, 6));
    }

    #[test]
    fn indexes_count_code_points_across_emoji_and_cjk() {
        let old = "🐻‍❄️ 熊 bear\n技能 skill 🎉\nend";
        let new = "🐻‍❄️ 白熊 polar bear\n技能 skill 🎉🎉\nend 終";
        assert_eq!(edited(old, new).0, new);
        // The edit after the emoji sequence must land after its four code points.
        let TextEdit::Splices(splices) = plan(old, new, TextEncoding::UnicodeCodePoint) else {
            panic!("a small edit is spliced");
        };
        assert_eq!(splices[0].index, 5);
        assert_eq!(splices[0].insert, "白");
    }

    #[test]
    fn a_large_rewrite_replaces_the_text_and_a_small_one_splices() {
        let old = "alpha beta gamma\n".repeat(500);
        let new = "delta epsilon\n".repeat(600);
        let (result, edit) = edited(&old, &new);
        assert_eq!((result.as_str(), edit), (new.as_str(), TextEdit::Rewrite));
        let (result, edit) = edited("alpha beta\n", "something else\n");
        assert_eq!(result, "something else\n");
        assert!(matches!(edit, TextEdit::Splices(_)));
    }

    #[test]
    fn widths_follow_the_document_encoding() {
        let text = "a🎉é漢";
        assert_eq!(width(TextEncoding::UnicodeCodePoint, text), 4);
        assert_eq!(width(TextEncoding::Utf8CodeUnit, text), 1 + 4 + 2 + 3);
        assert_eq!(width(TextEncoding::Utf16CodeUnit, text), 1 + 2 + 1 + 1);
        assert_eq!(width(TextEncoding::GraphemeCluster, text), 4);
    }

    fn text() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("a"),
            Just("b "),
            Just("\n"),
            Just("\r\n"),
            Just("é"),
            Just("e\u{301}"),
            Just("漢字"),
            Just("🎉"),
            Just("🐻‍❄️"),
        ];
        proptest::collection::vec(piece, 0..200).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #[test]
        fn any_plan_produces_the_new_text(old in text(), new in text()) {
            prop_assert_eq!(edited(&old, &new).0, new);
        }
    }
}
