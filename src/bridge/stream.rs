//! Bridge input of any size, cut into pieces the control socket carries, in bounded memory.
//!
//! Input up to `PIECE_BYTES` that is valid UTF-8 goes whole, so every format `items` reads
//! (one message, an array, a JSON string of either, JSON Lines) keeps working. Anything larger
//! or not UTF-8 must be JSON Lines: it is cut between lines into pieces of at most
//! `PIECE_BYTES`, and a line that is not UTF-8 (or longer than a piece) becomes one unreadable
//! item with its reason instead of failing the whole input.

use std::io::{self, BufRead, Cursor, Read};

/// The most text one piece holds: far above any message (values and skills are at most
/// 1 MiB), well below the control socket's 16 MiB request limit.
pub const PIECE_BYTES: usize = 8 * 1024 * 1024;

/// One piece of the input, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// Text to ingest as one payload.
    Text(String),
    /// A line that cannot be read: one ignored item, with the reason.
    Unreadable(String),
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("cannot read the input: {0}")]
    Read(#[from] io::Error),
    #[error("the input is over {} MiB or not UTF-8, and is not JSON Lines: give one message per line (`jq -c '.[]' FILE` turns an array into that)", PIECE_BYTES / (1024 * 1024))]
    NotJsonLines,
}

/// One line of JSON Lines input.
enum Line {
    Text(String),
    Unreadable(String),
}

/// The input, piece by piece.
pub struct Pieces<R> {
    /// The input when it goes whole.
    whole: Option<String>,
    /// What was read ahead to decide, then the rest of the input.
    lines: io::Chain<Cursor<Vec<u8>>, R>,
    line_number: usize,
    /// A line read but not yet given out: it did not fit the previous piece.
    pending: Option<Line>,
}

impl<R: BufRead> Pieces<R> {
    /// Reads ahead up to one piece to decide between the whole input and JSON Lines.
    pub fn new(mut input: R) -> Result<Pieces<R>, StreamError> {
        let mut head = Vec::new();
        (&mut input)
            .take(PIECE_BYTES as u64 + 1)
            .read_to_end(&mut head)?;
        let whole = match head.len() <= PIECE_BYTES {
            true => String::from_utf8(head.clone()).ok(),
            false => None,
        };
        let first = head.iter().find(|b| !b.is_ascii_whitespace());
        if whole.is_none() && matches!(first, Some(b'[' | b'"')) {
            return Err(StreamError::NotJsonLines);
        }
        let head = if whole.is_some() { Vec::new() } else { head };
        Ok(Pieces {
            whole,
            lines: Cursor::new(head).chain(input),
            line_number: 0,
            pending: None,
        })
    }

    /// The next piece; `None` at the end of the input.
    pub fn next_piece(&mut self) -> Result<Option<Piece>, StreamError> {
        if let Some(whole) = self.whole.take() {
            return Ok(Some(Piece::Text(whole)));
        }
        let mut text = String::new();
        loop {
            let line = match self.pending.take() {
                Some(line) => line,
                None => match self.read_line()? {
                    Some(line) => line,
                    None => break,
                },
            };
            match line {
                Line::Unreadable(reason) if text.is_empty() => {
                    return Ok(Some(Piece::Unreadable(reason)))
                }
                Line::Text(line) if text.len() + line.len() <= PIECE_BYTES => text.push_str(&line),
                other => {
                    self.pending = Some(other);
                    break;
                }
            }
        }
        Ok((!text.is_empty()).then_some(Piece::Text(text)))
    }

    /// One line, never holding more than a piece of it in memory.
    fn read_line(&mut self) -> io::Result<Option<Line>> {
        let mut bytes = Vec::new();
        let limit = PIECE_BYTES as u64 + 1;
        if (&mut self.lines)
            .take(limit)
            .read_until(b'\n', &mut bytes)?
            == 0
        {
            return Ok(None);
        }
        self.line_number += 1;
        if bytes.len() > PIECE_BYTES {
            self.skip_rest_of_line(&bytes)?;
            return Ok(Some(Line::Unreadable(format!(
                "line {} is over {} MiB, larger than any message can be",
                self.line_number,
                PIECE_BYTES / (1024 * 1024)
            ))));
        }
        Ok(Some(match String::from_utf8(bytes) {
            Ok(mut text) => {
                if !text.ends_with('\n') {
                    text.push('\n');
                }
                Line::Text(text)
            }
            Err(e) => Line::Unreadable(format!(
                "line {} is not UTF-8 (invalid byte at column {})",
                self.line_number,
                e.utf8_error().valid_up_to() + 1
            )),
        }))
    }

    fn skip_rest_of_line(&mut self, read: &[u8]) -> io::Result<()> {
        if read.ends_with(b"\n") {
            return Ok(());
        }
        loop {
            let buffer = self.lines.fill_buf()?;
            if buffer.is_empty() {
                return Ok(());
            }
            match buffer.iter().position(|b| *b == b'\n') {
                Some(end) => {
                    self.lines.consume(end + 1);
                    return Ok(());
                }
                None => {
                    let all = buffer.len();
                    self.lines.consume(all);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8]) -> Vec<Piece> {
        let mut pieces = Pieces::new(input).unwrap();
        std::iter::from_fn(|| pieces.next_piece().unwrap()).collect()
    }

    #[test]
    fn small_utf8_input_goes_whole() {
        let input = "[{\"a\":1},\n{\"b\":2}]";
        assert_eq!(all(input.as_bytes()), [Piece::Text(input.into())]);
    }

    #[test]
    fn a_line_that_is_not_utf8_is_one_unreadable_piece_in_its_place() {
        let input = b"{\"a\":1}\n{\"b\":\"\xff\"}\n{\"c\":3}\n";
        assert_eq!(
            all(input),
            [
                Piece::Text("{\"a\":1}\n".into()),
                Piece::Unreadable("line 2 is not UTF-8 (invalid byte at column 7)".into()),
                Piece::Text("{\"c\":3}\n".into()),
            ]
        );
    }

    #[test]
    fn large_json_lines_come_in_pieces_that_keep_every_line_whole() {
        let line = format!("{{\"v\":\"{}\"}}\n", "x".repeat(1000));
        let count = 3 * PIECE_BYTES / line.len();
        let input = line.repeat(count);
        let pieces = all(input.as_bytes());
        assert!(pieces.len() >= 3, "{} pieces", pieces.len());
        let mut lines = 0;
        for piece in &pieces {
            let Piece::Text(text) = piece else {
                panic!("no line is unreadable")
            };
            assert!(text.len() <= PIECE_BYTES);
            assert!(text.lines().all(|l| l == line.trim_end()));
            lines += text.lines().count();
        }
        assert_eq!(lines, count);
    }

    #[test]
    fn an_overlong_line_is_skipped_with_its_reason() {
        let mut input = b"{\"a\":1}\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', PIECE_BYTES + 10));
        input.extend(b"\n{\"c\":3}\n");
        let pieces = all(&input);
        assert_eq!(pieces.len(), 3);
        assert!(matches!(&pieces[1], Piece::Unreadable(r) if r.contains("line 2 is over 8 MiB")));
        assert_eq!(pieces[2], Piece::Text("{\"c\":3}\n".into()));
    }

    #[test]
    fn a_large_array_is_refused_with_the_fix() {
        let mut input = b"[".to_vec();
        input.extend(std::iter::repeat_n(b' ', PIECE_BYTES + 10));
        input.extend(b"]");
        let error = Pieces::new(input.as_slice()).err().unwrap();
        assert!(error.to_string().contains("jq -c"), "{error}");
    }
}
