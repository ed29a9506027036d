//! The `packed` export of `geohost:replicable@0.2.1`, for every type.
//!
//! The host hands `blob-paths` and `in-scope` a batch whose text and binary
//! columns are packed (one list of bytes and the values' ends) when the
//! component exports `packed`, and reads the paths back packed: a batch of
//! 1,000 records crosses the boundary as a few copies instead of thousands
//! of separately allocated strings. A type implements only [`Guest`]; this
//! module answers `packed` from it, so its code and answers are the same
//! either way.

use crate::bindings::exports::geohost::replicable::packed;
use crate::bindings::geohost::replicable::types::{
    PackedBatch, PackedColumn, PackedPaths, PackedText, PackedValues,
};
use crate::{Batch, ColumnData, ColumnValues, Decisions, Guest, SyncSettings};

impl<T: Guest> packed::Guest for T {
    fn blob_paths(records: PackedBatch) -> PackedPaths {
        let answer = T::blob_paths(unpack(records));
        PackedPaths {
            paths: pack(answer.paths.iter().map(String::as_bytes)),
            errors: answer.errors,
        }
    }

    fn in_scope(settings: SyncSettings, records: PackedBatch) -> Decisions {
        T::in_scope(settings, unpack(records))
    }
}

/// The batch as `replicable`'s functions take it.
fn unpack(records: PackedBatch) -> Batch {
    Batch {
        ids: records.ids,
        columns: records.columns.into_iter().map(unpack_column).collect(),
    }
}

fn unpack_column(column: PackedColumn) -> ColumnData {
    let values = match column.values {
        PackedValues::Int(v) => ColumnValues::Int(v),
        PackedValues::Boolean(v) => ColumnValues::Boolean(v),
        PackedValues::Timestamp(v) => ColumnValues::Timestamp(v),
        PackedValues::Text(packed) => {
            // The contract: text is UTF-8, each value ending at a character
            // boundary (the host packs Rust strings). Checked in debug
            // builds; a release build trusts the host, as it trusts every
            // other value the host passes. A bad end still traps below.
            debug_assert!(core::str::from_utf8(&packed.bytes).is_ok());
            // SAFETY: the host passes UTF-8 text (above).
            let text = unsafe { core::str::from_utf8_unchecked(&packed.bytes) };
            ColumnValues::Text(
                slices(&packed.ends)
                    .map(|range| {
                        text.get(range)
                            .expect("packed text ends at value boundaries")
                            .to_string()
                    })
                    .collect(),
            )
        }
        PackedValues::Binary(packed) => ColumnValues::Binary(
            slices(&packed.ends)
                .map(|range| {
                    packed
                        .bytes
                        .get(range)
                        .expect("packed bytes end within the buffer")
                        .to_vec()
                })
                .collect(),
        ),
    };
    ColumnData {
        values,
        nulls: column.nulls,
    }
}

/// Each value's range in the packed bytes.
fn slices(ends: &[u32]) -> impl Iterator<Item = core::ops::Range<usize>> + '_ {
    let mut start = 0usize;
    ends.iter().map(move |&end| {
        let range = start..end as usize;
        start = end as usize;
        range
    })
}

/// `values` end to end. A batch's answer is far below 4 GiB (the host caps
/// a call's memory); past it, the ends would wrap and the host refuses
/// the answer.
fn pack<'a>(values: impl Iterator<Item = &'a [u8]> + Clone) -> PackedText {
    let total: usize = values.clone().map(<[u8]>::len).sum();
    let mut bytes = Vec::with_capacity(total);
    let mut ends = Vec::new();
    for value in values {
        bytes.extend_from_slice(value);
        ends.push(bytes.len() as u32);
    }
    PackedText { bytes, ends }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_round_trips() {
        let values = ["aa/bb/index.yaml", "", "é/ü", "x"];
        let packed = pack(values.iter().map(|v| v.as_bytes()));
        assert_eq!(packed.ends, vec![16, 16, 21, 22]);
        let column = unpack_column(PackedColumn {
            values: PackedValues::Text(packed),
            nulls: vec![1],
        });
        assert_eq!(
            column,
            ColumnData {
                values: ColumnValues::Text(values.iter().map(|v| v.to_string()).collect()),
                nulls: vec![1],
            }
        );
    }
}
