//! Offsets in the unit the caller counts in. Rust strings index bytes (UTF-8); browser editors
//! count UTF-16 code units; Python counts code points. The API says which one it uses.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OffsetUnit {
    /// UTF-16 code units, as JavaScript's `String.length` counts (the API default).
    #[default]
    Utf16,
    /// UTF-8 bytes.
    Utf8,
    /// Unicode scalar values (code points), as Python's `len(str)` counts.
    Char,
}

/// Converts a byte offset into `text` (on a char boundary) into `unit`.
pub fn from_byte(text: &str, byte: usize, unit: OffsetUnit) -> usize {
    let prefix = &text[..byte.min(text.len())];
    match unit {
        OffsetUnit::Utf8 => prefix.len(),
        OffsetUnit::Char => prefix.chars().count(),
        OffsetUnit::Utf16 => prefix.encode_utf16().count(),
    }
}

/// Converts an offset in `unit` into a byte offset, or `None` if it is past the end or inside a
/// character (a split surrogate pair, the middle of a UTF-8 sequence).
pub fn to_byte(text: &str, offset: usize, unit: OffsetUnit) -> Option<usize> {
    match unit {
        OffsetUnit::Utf8 => text.is_char_boundary(offset).then_some(offset),
        OffsetUnit::Char => {
            if offset == 0 {
                return Some(0);
            }
            text.char_indices().map(|(i, c)| i + c.len_utf8()).nth(offset - 1)
        }
        OffsetUnit::Utf16 => {
            let mut units = 0;
            for (i, c) in text.char_indices() {
                if units == offset {
                    return Some(i);
                }
                units += c.len_utf16();
                if units > offset {
                    return None;
                }
            }
            (units == offset).then_some(text.len())
        }
    }
}

/// A half-open range converted from bytes into `unit`.
pub fn range_from_bytes(text: &str, range: std::ops::Range<usize>, unit: OffsetUnit) -> [usize; 2] {
    [from_byte(text, range.start, unit), from_byte(text, range.end, unit)]
}

/// Byte offsets of one text converted into `unit` from a table built in one pass, for callers
/// with many offsets into a long text (a document's edits), where [`from_byte`] would rescan the
/// text for each.
pub struct OffsetIndex {
    /// At each char boundary, the offset in the unit; unused inside characters.
    units: Vec<u32>,
}

impl OffsetIndex {
    pub fn new(text: &str, unit: OffsetUnit) -> Self {
        let mut units = vec![0u32; text.len() + 1];
        let mut count = 0u32;
        for (i, c) in text.char_indices() {
            units[i] = count;
            count += match unit {
                OffsetUnit::Utf8 => c.len_utf8(),
                OffsetUnit::Char => 1,
                OffsetUnit::Utf16 => c.len_utf16(),
            } as u32;
        }
        units[text.len()] = count;
        Self { units }
    }

    /// A half-open byte range (on char boundaries) converted into the unit.
    pub fn range(&self, range: std::ops::Range<usize>) -> [usize; 2] {
        let at = |byte: usize| self.units[byte.min(self.units.len() - 1)] as usize;
        [at(range.start), at(range.end)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "a😀b漢e\u{301}!";

    #[test]
    fn round_trips_in_every_unit() {
        for (byte, _) in TEXT.char_indices().chain([(TEXT.len(), ' ')]) {
            for unit in [OffsetUnit::Utf8, OffsetUnit::Char, OffsetUnit::Utf16] {
                let converted = from_byte(TEXT, byte, unit);
                assert_eq!(to_byte(TEXT, converted, unit), Some(byte), "{unit:?} at byte {byte}");
            }
        }
    }

    #[test]
    fn the_index_agrees_with_from_byte() {
        for unit in [OffsetUnit::Utf8, OffsetUnit::Char, OffsetUnit::Utf16] {
            let index = OffsetIndex::new(TEXT, unit);
            let boundaries: Vec<usize> = TEXT.char_indices().map(|(i, _)| i).chain([TEXT.len()]).collect();
            for &start in &boundaries {
                for &end in boundaries.iter().filter(|&&end| end >= start) {
                    assert_eq!(index.range(start..end), range_from_bytes(TEXT, start..end, unit), "{unit:?}");
                }
            }
        }
    }

    #[test]
    fn counts_differ_as_expected() {
        // 😀 is 4 bytes, 1 char, 2 UTF-16 units; 漢 is 3 bytes, 1 unit; the combining accent 2 bytes, 1 unit.
        let end = TEXT.len();
        assert_eq!(from_byte(TEXT, end, OffsetUnit::Utf8), 13);
        assert_eq!(from_byte(TEXT, end, OffsetUnit::Char), 7);
        assert_eq!(from_byte(TEXT, end, OffsetUnit::Utf16), 8);
    }

    #[test]
    fn offsets_inside_a_character_are_rejected() {
        assert_eq!(to_byte(TEXT, 2, OffsetUnit::Utf16), None, "between surrogates");
        assert_eq!(to_byte(TEXT, 2, OffsetUnit::Utf8), None, "inside a UTF-8 sequence");
        assert_eq!(to_byte(TEXT, 99, OffsetUnit::Char), None, "past the end");
    }
}
