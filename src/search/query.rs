//! A query as people and agents type it ("what theme does the user prefer?") turned into
//! FTS5 syntax. Nothing typed is passed to FTS5 as syntax: every word becomes a quoted
//! string, so `user:alice`, quotes, `-` or `NEAR` are only words and never a syntax error.

/// At most this many words of a query are searched for.
const MAX_TERMS: usize = 32;

/// The words of a query, lowercased, in order, without repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms(Vec<String>);

impl Terms {
    /// Splits like FTS5's unicode61 tokenizer: runs of letters and digits. `None` when the
    /// text holds no word at all.
    pub fn parse(text: &str) -> Option<Terms> {
        let mut terms: Vec<String> = Vec::new();
        for word in words(text) {
            let word = word.to_lowercase();
            if !terms.contains(&word) {
                terms.push(word);
            }
            if terms.len() == MAX_TERMS {
                break;
            }
        }
        (!terms.is_empty()).then_some(Terms(terms))
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// Every word must appear (FTS5's implicit AND).
    pub fn all(&self) -> String {
        self.join(" ")
    }

    /// Any word may appear; BM25 ranks rows holding more of them first.
    pub fn any(&self) -> String {
        self.join(" OR ")
    }

    fn join(&self, separator: &str) -> String {
        self.0
            .iter()
            .map(|term| format!("\"{term}\""))
            .collect::<Vec<_>>()
            .join(separator)
    }
}

/// Runs of alphanumeric characters.
pub fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_become_quoted_strings_and_syntax_stays_words() {
        let terms = Terms::parse("Dark  mode? user:alice \"NEAR\" -x dark").unwrap();
        assert_eq!(
            terms.as_slice(),
            ["dark", "mode", "user", "alice", "near", "x"]
        );
        assert_eq!(
            terms.all(),
            "\"dark\" \"mode\" \"user\" \"alice\" \"near\" \"x\""
        );
        assert_eq!(
            terms.any(),
            "\"dark\" OR \"mode\" OR \"user\" OR \"alice\" OR \"near\" OR \"x\""
        );
    }

    #[test]
    fn a_query_without_words_is_none() {
        assert_eq!(Terms::parse(" ?! -- \"\" "), None);
        assert_eq!(Terms::parse(""), None);
    }

    #[test]
    fn long_queries_are_cut() {
        let text: String = (0..100).map(|i| format!("w{i} ")).collect();
        assert_eq!(Terms::parse(&text).unwrap().as_slice().len(), MAX_TERMS);
    }
}
