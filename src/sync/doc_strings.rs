//! Every string value a document chunk holds, read from its value columns: what a peer's
//! whole document writes, without rebuilding its changes.
//!
//! Vetting a full clone must see every version the document ever wrote (`replica::vet`), and
//! Automerge 0.12 has no public way to list a document's past operations but to rebuild all
//! its changes, which took a fifth of a 100 000-change clone (docs/benchmarks.md, Sync). The
//! document format (<https://alexjg.github.io/automerge-storage-docs/#document-chunks>) keeps
//! every operation, overwritten ones too, in columns; two of them hold the values: a value
//! metadata column (run-length coded LEB128 numbers, each a value's length and type) and the
//! raw bytes of the values one after the other. Only those two are read.
//!
//! This reader runs on bytes Automerge has already loaded, and its caller checks the count of
//! values read against the operations Automerge loaded: anything this reader does not expect
//! (another layout, a count that differs, bytes left over) is `None`, and the caller falls back
//! to rebuilding the changes. A crafted document can make this reader give up, never make it
//! read other values than Automerge did.

use std::borrow::Cow;
use std::io::Read;

use super::whole::leb128;

/// The value columns' id (`VAL_COL_ID`) in the document format's operation columns.
const VALUE_COLUMN_ID: u32 = 5;
const VALUE_METADATA: u32 = 6;
const VALUE_RAW: u32 = 7;
/// A column specification: id << 4 | deflated << 3 | type.
const DEFLATED: u32 = 0b1000;
const TYPE_MASK: u32 = 0b0111;
/// A value's type code in its metadata (the low 4 bits; the rest is its length).
const UTF8_STRING: u64 = 6;

/// Calls `visit` with the bytes of every string value of the document chunk `data` (the
/// chunk's data, after its header), in column order; returns how many values it holds, or
/// `None` when it is not laid out as expected. The work is bounded by the bytes: a run of
/// values without bytes is counted, not walked.
pub fn for_each_string(data: &[u8], visit: impl FnMut(&[u8])) -> Option<u64> {
    let columns = Columns::read(data)?;
    let metadata = columns.inflated(VALUE_METADATA)?;
    let raw = columns.inflated(VALUE_RAW)?;
    walk_values(&metadata, &raw, visit)
}

/// A document chunk's operation columns: each one's specification and bytes.
struct Columns<'a> {
    ops: Vec<(u32, &'a [u8])>,
}

impl<'a> Columns<'a> {
    fn read(data: &'a [u8]) -> Option<Columns<'a>> {
        let mut input = Input(data);
        for _ in 0..input.uleb()? {
            let len = input.len()?;
            input.take(len)?;
        }
        let heads = input.len()?;
        input.take(heads.checked_mul(32)?)?;
        let change_columns = input.column_specs()?;
        let op_columns = input.column_specs()?;
        let change_data = change_columns.iter().map(|(_, len)| len).sum();
        input.take(change_data)?;
        let ops = op_columns
            .into_iter()
            .map(|(spec, len)| Some((spec, input.take(len)?)))
            .collect::<Option<_>>()?;
        Some(Columns { ops })
    }

    /// The bytes of the value column of `kind`, inflated: empty when the chunk has none
    /// (Automerge leaves out empty columns), `None` when it has two.
    fn inflated(&self, kind: u32) -> Option<Cow<'a, [u8]>> {
        let mut found = self
            .ops
            .iter()
            .filter(|(spec, _)| spec >> 4 == VALUE_COLUMN_ID && spec & TYPE_MASK == kind);
        let Some(&(spec, bytes)) = found.next() else {
            return Some(Cow::Borrowed(&[]));
        };
        if found.next().is_some() {
            return None;
        }
        if spec & DEFLATED == 0 {
            return Some(Cow::Borrowed(bytes));
        }
        let mut inflated = Vec::new();
        flate2::read::DeflateDecoder::new(bytes)
            .read_to_end(&mut inflated)
            .ok()?;
        Some(Cow::Owned(inflated))
    }
}

/// Walks the metadata column's runs over the raw bytes; `None` unless they end together.
fn walk_values(metadata: &[u8], raw: &[u8], mut visit: impl FnMut(&[u8])) -> Option<u64> {
    let mut runs = Input(metadata);
    let mut raw = Input(raw);
    let mut values: u64 = 0;
    let mut one = |meta: u64, raw: &mut Input<'_>| -> Option<()> {
        let bytes = raw.take(usize::try_from(meta >> 4).ok()?)?;
        if meta & 0xf == UTF8_STRING {
            visit(bytes);
        }
        Some(())
    };
    while !runs.0.is_empty() {
        let count = runs.sleb()?;
        let run = count.unsigned_abs();
        values = values.checked_add(run)?;
        match count {
            // A repeated value: a value of no bytes is only counted, however long its run.
            1.. => {
                let meta = runs.uleb()?;
                if meta >> 4 != 0 {
                    (0..run).try_for_each(|_| one(meta, &mut raw))?;
                }
            }
            ..0 => (0..run).try_for_each(|_| one(runs.uleb()?, &mut raw))?,
            // A run of nulls: values without metadata, hence without bytes.
            0 => {
                let nulls = runs.uleb()?;
                values = values.checked_add(nulls)?;
            }
        }
    }
    raw.0.is_empty().then_some(values)
}

/// Bytes being read from the front.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        if len > self.0.len() {
            return None;
        }
        let (taken, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(taken)
    }

    fn uleb(&mut self) -> Option<u64> {
        let (value, rest) = leb128(self.0)?;
        self.0 = rest;
        Some(value)
    }

    fn sleb(&mut self) -> Option<i64> {
        let mut value: i64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = *self.take(1)?.first()?;
            value |= i64::from(byte & 0x7f).checked_shl(shift)?;
            if byte & 0x80 == 0 {
                let sign_extend = shift + 7 < 64 && byte & 0x40 != 0;
                return Some(if sign_extend {
                    value | (-1 << (shift + 7))
                } else {
                    value
                });
            }
        }
        None
    }

    fn len(&mut self) -> Option<usize> {
        usize::try_from(self.uleb()?).ok()
    }

    /// A column list: how many, then each one's specification and length.
    fn column_specs(&mut self) -> Option<Vec<(u32, usize)>> {
        let count = self.len()?;
        // Each column takes at least two bytes: a count beyond that is not a column list.
        if count > self.0.len() / 2 {
            return None;
        }
        (0..count)
            .map(|_| Some((u32::try_from(self.uleb()?).ok()?, self.len()?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use automerge::transaction::Transactable;
    use automerge::{Automerge, ObjType, ReadDoc, ROOT};

    use super::*;

    fn data(saved: &[u8]) -> &[u8] {
        crate::sync::whole::one_document_data(saved).expect("save writes one document chunk")
    }

    fn strings(doc: &Automerge) -> (Vec<String>, u64) {
        let mut found = Vec::new();
        let values = for_each_string(data(&doc.save()), |bytes| {
            found.push(String::from_utf8(bytes.to_vec()).unwrap())
        })
        .expect("a saved document reads");
        found.sort();
        (found, values)
    }

    #[test]
    fn every_string_ever_written_is_read_overwritten_and_deleted_ones_too() {
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        tx.put(ROOT, "a", "first").unwrap();
        tx.put(ROOT, "n", 7).unwrap();
        let list = tx.put_object(ROOT, "list", ObjType::List).unwrap();
        tx.insert(&list, 0, "in a list").unwrap();
        tx.commit();
        let mut tx = doc.transaction();
        tx.put(ROOT, "a", "second").unwrap();
        tx.delete(ROOT, "n").unwrap();
        tx.commit();
        // Long and repeated values, so the columns are deflated and runs repeat.
        let long = "x".repeat(300);
        for at in 0..50 {
            let mut tx = doc.transaction();
            tx.put(ROOT, format!("k{at}"), long.as_str()).unwrap();
            tx.commit();
        }
        let saved = doc.save();
        let columns = Columns::read(data(&saved)).unwrap();
        assert!(
            columns.ops.iter().any(|(spec, _)| spec & DEFLATED != 0),
            "some column is deflated, so inflating is tested"
        );
        let (found, values) = strings(&doc);
        let mut expected = vec!["first".to_string(), "second".into(), "in a list".into()];
        expected.extend(std::iter::repeat_n(long, 50));
        expected.sort();
        assert_eq!(found, expected);
        assert_eq!(values, doc.stats().num_ops);
    }

    #[test]
    fn an_empty_document_holds_no_value() {
        assert_eq!(strings(&Automerge::new()), (Vec::new(), 0));
    }

    #[test]
    fn bytes_laid_out_otherwise_are_none_and_never_a_panic() {
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        tx.put(ROOT, "k", "v".repeat(400)).unwrap();
        tx.commit();
        let saved = doc.save();
        let whole = data(&saved);
        assert_eq!(for_each_string(whole, |_| ()), Some(1));
        for cut in 0..whole.len() {
            let _ = for_each_string(&whole[..cut], |_| ());
        }
        for at in 0..whole.len() {
            let mut flipped = whole.to_vec();
            flipped[at] ^= 0xff;
            let _ = for_each_string(&flipped, |_| ());
        }
        // A run of a billion empty values is counted, not walked.
        // 1 000 000 000 as signed LEB128, then the metadata 0 (a null's).
        let runs = [0x80, 0x94, 0xeb, 0xdc, 0x03, 0x00];
        assert_eq!(walk_values(&runs, &[], |_| ()), Some(1_000_000_000));
        // A count past u64 is not a count.
        let overflow = [&runs[..], &[0x00], &[0xff; 9], &[0x01]].concat();
        assert_eq!(walk_values(&overflow, &[], |_| ()), None);
        // One literal value, a string of 2 bytes: read; then with a byte too few or too many.
        let mut seen = Vec::new();
        let one = walk_values(&[0x7f, 0x26], b"ab", |bytes| seen.push(bytes.to_vec()));
        assert_eq!((one, seen), (Some(1), vec![b"ab".to_vec()]));
        assert_eq!(walk_values(&[0x7f, 0x26], b"a", |_| ()), None);
        assert_eq!(walk_values(&[0x7f, 0x26], b"abc", |_| ()), None);
    }
}
