//! A change's data with its decimal numbers written as differences from the change before's.
//!
//! Every version meshd stores is JSON text stamped with its write time (`updated_at`, a
//! hybrid clock of 18 digits), and agents' values carry counters, dates and ids that grow from
//! one write to the next. In a burst of single writes each change repeats the text of the one
//! before with a few digits changed, and the digits that change are the ones zstd cannot
//! predict: the low digits of a clock reading look random. Written as the difference from
//! its partner in the change before (a burst's clock steps by a few milliseconds), they
//! repeat, and zstd takes them down to a fraction of a byte.
//!
//! A number's partner is the first number of the change before (among its first
//! [`MAX_PARTNERS`]) that follows the same [`CONTEXT`] bytes: `"updated_at":` finds its
//! partner wherever the text around it moved. A number without one (in free text, whose
//! neighbours differ) stays in the text, where zstd finds it if it repeats: written apart
//! against an unrelated number, measured on values of random words and numbers, it cost 5 to
//! 20 % more.
//!
//! Layout (docs/protocol.md, `DocPart.changes`), every number LEB128: `0`, then the length and
//! bytes of the data as it is; or `count + 1`, then per number written apart the length and
//! bytes of the text before it, its width in digits (1 to [`MAX_DIGITS`], leading zeros kept)
//! and, signed, its value minus its partner's (0 when the change before has none), then the
//! length and bytes of the text after the last. A number is a run of ASCII digits, cut into
//! pieces of [`MAX_DIGITS`]; the bytes need not be text (a change's operation columns are
//! binary, and a digit among them is simply a number).

use std::collections::HashMap;

use super::linked::LinkedError;
use super::linked::{read_bytes, read_len, read_signed, write_bytes, write_len, write_signed};

/// The most digits one number holds: any value of as many fits an `i64`, and so does the
/// difference of two.
pub const MAX_DIGITS: usize = 18;

/// How many bytes before a number pair it with a number of the change before.
pub const CONTEXT: usize = 8;

/// How many of a change's first numbers the next change's may pair with: a change of
/// megabytes of digits (a table of figures) keeps a bounded map, and the gain is in bursts of
/// small changes.
pub const MAX_PARTNERS: usize = 1024;

/// The bytes before a number (fewer at the start of the data): how many, and what they are.
type Context = (u8, [u8; CONTEXT]);

/// The first [`MAX_PARTNERS`] numbers of a change's data, each under the bytes before it (the
/// first number after them): what the next change's numbers are written against.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Numbers(HashMap<Context, i64>);

impl Numbers {
    /// The numbers of `data`, as the writer and the reader of a payload both take them.
    pub fn of(data: &[u8]) -> Numbers {
        let mut numbers = HashMap::new();
        for piece in pieces(data).take(MAX_PARTNERS) {
            (numbers.entry(context(data, piece.start))).or_insert(piece.value);
        }
        Numbers(numbers)
    }

    fn partner(&self, context: Context) -> Option<i64> {
        self.0.get(&context).copied()
    }
}

/// Writes `data` with each number that has a partner in `before` (the numbers of the change
/// before) as the difference from it; returns `data`'s numbers, for the next change.
pub fn write(data: &[u8], before: &Numbers, out: &mut Vec<u8>) -> Numbers {
    let mut body = Vec::with_capacity(data.len());
    let mut count = 0u64;
    let mut end = 0;
    for piece in pieces(data) {
        let Some(partner) = before.partner(context(data, piece.start)) else {
            continue;
        };
        write_bytes(&mut body, &data[end..piece.start]);
        write_len(&mut body, u64::from(piece.width));
        write_signed(&mut body, piece.value - partner);
        end = piece.start + usize::from(piece.width);
        count += 1;
    }
    write_bytes(&mut body, &data[end..]);
    write_len(out, count + 1);
    out.extend_from_slice(&body);
    Numbers::of(data)
}

/// Writes `data` as it is: cheaper for the first change of a payload, which has no change
/// before it to differ from.
pub fn write_verbatim(data: &[u8], out: &mut Vec<u8>) -> Numbers {
    write_len(out, 0);
    write_bytes(out, data);
    Numbers::of(data)
}

/// Reads what `write` or `write_verbatim` wrote, rebuilding at most `limit` bytes: the data,
/// and its numbers for the next change.
pub fn read(
    payload: &mut &[u8],
    before: &Numbers,
    limit: usize,
) -> Result<(Vec<u8>, Numbers), LinkedError> {
    let count = read_len(payload)?;
    if count == 0 {
        let data = read_bytes(payload)?;
        return Ok((data.to_vec(), Numbers::of(data)));
    }
    // Each number takes at least three bytes: a count beyond the bytes left is a lie.
    if count - 1 > payload.len() as u64 {
        return Err(LinkedError::Truncated);
    }
    let mut data = Vec::new();
    for _ in 0..count - 1 {
        data.extend_from_slice(read_bytes(payload)?);
        let partner = before.partner(context(&data, data.len())).unwrap_or(0);
        push_digits(&mut data, read_number(payload, partner)?);
        if data.len() > limit {
            return Err(LinkedError::TooLarge(limit));
        }
    }
    data.extend_from_slice(read_bytes(payload)?);
    if data.len() > limit {
        return Err(LinkedError::TooLarge(limit));
    }
    let numbers = Numbers::of(&data);
    Ok((data, numbers))
}

/// One number of a change's data: where it starts, and its digits as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    start: usize,
    width: u8,
    value: i64,
}

/// The bytes before `at` that pair a number there with one of the change before.
fn context(data: &[u8], at: usize) -> Context {
    let before = &data[at.saturating_sub(CONTEXT)..at];
    let mut bytes = [0; CONTEXT];
    bytes[..before.len()].copy_from_slice(before);
    (before.len() as u8, bytes)
}

/// Reads a number's width and difference: its width and value.
fn read_number(payload: &mut &[u8], partner: i64) -> Result<(u8, i64), LinkedError> {
    let width = read_len(payload)?;
    let difference = read_signed(payload)?;
    let value = partner.checked_add(difference);
    match (u8::try_from(width), value) {
        (Ok(width @ 1..), Some(value))
            if usize::from(width) <= MAX_DIGITS
                && (0..10i64.pow(u32::from(width))).contains(&value) =>
        {
            Ok((width, value))
        }
        _ => Err(LinkedError::Number { width, difference }),
    }
}

/// A number's digits, zero-padded to its width.
fn push_digits(out: &mut Vec<u8>, (width, value): (u8, i64)) {
    let digits = format!("{value:0width$}", width = usize::from(width));
    out.extend_from_slice(digits.as_bytes());
}

/// The numbers of `data`, in order.
fn pieces(data: &[u8]) -> impl Iterator<Item = Piece> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        let start = at + data[at..].iter().position(u8::is_ascii_digit)?;
        let run = data[start..]
            .iter()
            .take(MAX_DIGITS)
            .take_while(|b| b.is_ascii_digit());
        let width = run.clone().count();
        let value = run.fold(0i64, |value, digit| value * 10 + i64::from(digit - b'0'));
        at = start + width;
        Some(Piece {
            start,
            width: width as u8,
            value,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(changes: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut before = Numbers::default();
        for data in changes {
            before = write(data, &before, &mut out);
        }
        let mut payload = out.as_slice();
        let mut before = Numbers::default();
        for data in changes {
            let (read, numbers) = read(&mut payload, &before, usize::MAX).unwrap();
            assert_eq!(read, *data);
            before = numbers;
        }
        assert!(payload.is_empty());
        out
    }

    #[test]
    fn numbers_keep_their_leading_zeros_and_long_runs_come_back_whole() {
        round_trip(&[
            b"entry 000500 at 117730843085570048, id 12345678901234567890123456789",
            b"entry 000501 at 117730843085701120, id 12345678901234567890123456790",
            b"no numbers here",
            b"0",
            b"",
            b"9999999999999999990000000000000000001",
            b"9999999999999999990000000000000000002",
        ]);
    }

    #[test]
    fn a_number_after_the_same_bytes_is_written_as_its_difference() {
        let before = Numbers::of(b"{\"updated_at\":41,\"n\":7}");
        let mut out = Vec::new();
        write(b"{\"extra\":1,\"updated_at\":42}", &before, &mut out);
        // One number written apart, after 24 bytes of text: 2 digits, one more than before.
        assert_eq!(out[..2], [2, 24]);
        assert_eq!(out[2..26], *b"{\"extra\":1,\"updated_at\":");
        assert_eq!(out[26..], [2, 1, 1, b'}']);
    }

    #[test]
    fn a_number_without_a_partner_stays_in_the_text() {
        let before = Numbers::of(b"alpha 1");
        let mut out = Vec::new();
        write(b"gamma 2", &before, &mut out);
        assert_eq!(out, [1, 7, b'g', b'a', b'm', b'm', b'a', b' ', b'2']);
    }

    #[test]
    fn verbatim_data_reads_back_and_gives_its_numbers() {
        let mut out = Vec::new();
        let written = write_verbatim(b"a1b22", &mut out);
        let (data, read_back) = read(&mut out.as_slice(), &Numbers::default(), 100).unwrap();
        assert_eq!(data, b"a1b22");
        assert_eq!(read_back, written);
        assert_eq!(written, Numbers::of(b"a1b22"));
    }

    #[test]
    fn numbers_that_do_not_fit_their_digits_are_refused() {
        let before = Numbers::of(b"5");
        for (width, difference) in [(0u64, 0i64), (19, 0), (2, 100), (2, -6), (1, i64::MAX)] {
            let mut payload = vec![2, 0];
            write_len(&mut payload, width);
            write_signed(&mut payload, difference);
            payload.push(0);
            assert!(
                matches!(
                    read(&mut payload.as_slice(), &before, 100),
                    Err(LinkedError::Number { .. })
                ),
                "width {width}, difference {difference}"
            );
        }
    }

    #[test]
    fn rebuilding_more_than_the_limit_is_refused() {
        let before = Numbers::of(b"123456789012345678 and more text");
        let mut out = Vec::new();
        write(b"123456789012345679 and more text", &before, &mut out);
        assert_eq!(
            read(&mut out.as_slice(), &before, 20),
            Err(LinkedError::TooLarge(20))
        );
    }

    #[test]
    fn only_the_first_numbers_of_a_change_are_partners() {
        let many: String = (0..MAX_PARTNERS + 10).map(|i| format!("{i:05},")).collect();
        let numbers = Numbers::of(many.as_bytes());
        assert_eq!(numbers.0.len(), MAX_PARTNERS);
        let next: String = (0..MAX_PARTNERS + 10)
            .map(|i| format!("{:05},", i + 1))
            .collect();
        round_trip(&[many.as_bytes(), next.as_bytes()]);
    }

    proptest! {
        #[test]
        fn any_bytes_come_back(changes in proptest::collection::vec(
            proptest::collection::vec(prop_oneof![3 => b'0'..=b'9', 1 => b'a'..=b'b', 1 => any::<u8>()], 0..64), 0..8)) {
            let changes: Vec<&[u8]> = changes.iter().map(Vec::as_slice).collect();
            round_trip(&changes);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let before = Numbers::of(b"17 2026 117730843085570048");
            let _ = read(&mut bytes.as_slice(), &before, 4096);
        }
    }
}
