//! The piece of a text shown with a hit: the window of words holding the most query words.
//! The index keeps no text (it is contentless), so snippets are cut from the replica's text.

use super::query::words;

/// Words in a snippet.
const WINDOW_WORDS: usize = 24;
/// A snippet never exceeds this many bytes (a window of very long "words" is cut).
const MAX_SNIPPET_BYTES: usize = 320;

/// The best window of `text` for `terms` (lowercased), on one line, with `…` where text was
/// left out. Without terms, or without a match, the start of the text.
pub fn snippet(text: &str, terms: &[String]) -> String {
    let spans: Vec<(usize, usize)> = words(text)
        .map(|word| {
            let start = word.as_ptr() as usize - text.as_ptr() as usize;
            (start, start + word.len())
        })
        .collect();
    if spans.is_empty() {
        return one_line(cut(text, MAX_SNIPPET_BYTES));
    }
    let matched: Vec<Option<usize>> = spans
        .iter()
        .map(|&(s, e)| matching_term(&text[s..e], terms))
        .collect();
    let first = best_window_start(&matched, terms.len());
    let last = (first + WINDOW_WORDS).min(spans.len()) - 1;
    let start = if first == 0 { 0 } else { spans[first].0 };
    let end = if last + 1 == spans.len() {
        text.len()
    } else {
        spans[last].1
    };
    let mut piece = one_line(cut(&text[start..end], MAX_SNIPPET_BYTES));
    if start > 0 {
        piece.insert(0, '…');
    }
    if end < text.len() {
        piece.push('…');
    }
    piece
}

/// Which term a word matches: equal, or one a prefix of the other when the shorter has at
/// least 3 characters, so "preference" matches a search for "preferences" (the index stems
/// words; this only has to find them again).
fn matching_term(word: &str, terms: &[String]) -> Option<usize> {
    let word = word.to_lowercase();
    terms.iter().position(|term| {
        let (short, long) = if term.len() <= word.len() {
            (term.as_str(), word.as_str())
        } else {
            (word.as_str(), term.as_str())
        };
        short == long || (short.chars().count() >= 3 && long.starts_with(short))
    })
}

/// The first word of the window with the most distinct terms, then the most matches.
fn best_window_start(matched: &[Option<usize>], term_count: usize) -> usize {
    let mut best = (0usize, 0usize, 0usize);
    for first in 0..matched.len() {
        if matched[first].is_none() && first != 0 {
            continue;
        }
        let window = &matched[first..(first + WINDOW_WORDS).min(matched.len())];
        let mut seen = vec![false; term_count];
        let mut hits = 0;
        for term in window.iter().flatten() {
            seen[*term] = true;
            hits += 1;
        }
        let distinct = seen.iter().filter(|s| **s).count();
        if (distinct, hits) > (best.1, best.2) {
            best = (first, distinct, hits);
        }
    }
    // Start a little before the first match, so it reads in context.
    best.0.saturating_sub(3)
}

fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn the_window_with_the_query_words_is_shown() {
        let filler = "lorem ipsum dolor sit amet ".repeat(20);
        let text = format!("{filler}the user prefers\ndark mode in every editor {filler}");
        let piece = snippet(&text, &terms(&["dark", "mode"]));
        assert!(
            piece.contains("prefers dark mode in every editor"),
            "{piece}"
        );
        assert!(piece.starts_with('…') && piece.ends_with('…'), "{piece}");
        assert!(!piece.contains('\n'));
    }

    #[test]
    fn stems_match_their_longer_forms() {
        let text = format!("{} a strong preference for tabs", "x ".repeat(60));
        assert!(snippet(&text, &terms(&["preferences"])).contains("preference for tabs"));
    }

    #[test]
    fn short_texts_are_whole_and_long_words_are_cut_on_a_char_boundary() {
        assert_eq!(snippet("dark mode", &terms(&["dark"])), "dark mode");
        let long = "é".repeat(1000);
        let piece = snippet(&long, &terms(&["x"]));
        assert!(piece.len() <= MAX_SNIPPET_BYTES);
        assert_eq!(snippet("!!!", &terms(&["x"])), "!!!");
    }
}
