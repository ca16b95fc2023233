//! A Bloom filter of a build side's join keys, for key sets too large to list: every
//! build task fills one of the same size and hashing, the scheduler ORs them, and the
//! probe side drops rows whose keys it surely lacks.

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::common::hash_utils::{RandomState, create_hashes};
use datafusion::error::{DataFusionError, Result};

use crate::proto;

/// Bits of every key Bloom filter: 128 KiB, which holds about 300 K distinct keys
/// before it is [`MAX_FILL`] full (TPC-H SF 1 ships 147 K order keys in Q3, 228 K in
/// Q5).
pub const BLOOM_BITS: usize = 1 << 20;

/// Bits set per key.
const HASHES: u32 = 3;

/// Past this share of bits set a filter is not shipped: it would pass more than
/// `MAX_FILL ^ HASHES` (here 22 %) of the rows it should drop and still cost a hash per
/// probe row. Q5's 228 K order keys fill 48 %: at 11 % false positives the filter still
/// keeps three quarters of `lineitem` out of the shuffle.
pub const MAX_FILL: f64 = 0.6;

/// The hashing every build and probe task uses (a fixed seed: the same in every process).
const SEED: u64 = 0x6261_746f_6e5f_6266;

/// Bits per word.
const WORD: usize = 64;

/// A Bloom filter over the combined values of a join's key columns.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyBloom {
    words: Vec<u64>,
}

impl Default for KeyBloom {
    fn default() -> Self {
        Self {
            words: vec![0; BLOOM_BITS / WORD],
        }
    }
}

impl KeyBloom {
    /// Adds the rows of `keys` (one array per key column) whose keys are all non-null.
    pub fn insert(&mut self, keys: &[ArrayRef]) -> Result<()> {
        let valid = all_valid(keys);
        for (row, hash) in hashes(keys)?.into_iter().enumerate() {
            if valid.as_ref().is_none_or(|v| v.is_valid(row)) {
                for bit in bits(hash) {
                    self.words[bit / WORD] |= 1 << (bit % WORD);
                }
            }
        }
        Ok(())
    }

    /// Per row of `keys`: true when the filter may hold its keys (never for a null key).
    pub fn may_contain(&self, keys: &[ArrayRef]) -> Result<BooleanArray> {
        let valid = all_valid(keys);
        let hashes = hashes(keys)?;
        Ok(hashes
            .into_iter()
            .enumerate()
            .map(|(row, hash)| {
                let present = valid.as_ref().is_none_or(|v| v.is_valid(row))
                    && bits(hash).all(|bit| self.words[bit / WORD] & (1 << (bit % WORD)) != 0);
                Some(present)
            })
            .collect())
    }

    /// Holds `other`'s keys too.
    pub fn merge(&mut self, other: &KeyBloom) {
        for (ours, theirs) in self.words.iter_mut().zip(&other.words) {
            *ours |= theirs;
        }
    }

    /// The share of its bits that are set.
    pub fn fill(&self) -> f64 {
        let set: u32 = self.words.iter().map(|w| w.count_ones()).sum();
        set as f64 / BLOOM_BITS as f64
    }

    /// The wire form: the set bits' positions as deltas while that is shorter than the
    /// bits themselves (a small build task's filter is mostly zeros).
    pub fn to_proto(&self) -> proto::KeyBloom {
        let set: usize = self.words.iter().map(|w| w.count_ones() as usize).sum();
        // A delta takes at most 3 bytes of varint for 2^20 bits.
        if set * 3 < BLOOM_BITS / 8 {
            let mut deltas = Vec::with_capacity(set);
            let mut last = 0;
            for (w, word) in self.words.iter().enumerate() {
                let mut bits = *word;
                while bits != 0 {
                    let bit = (w * WORD + bits.trailing_zeros() as usize) as u32;
                    deltas.push(bit - last);
                    last = bit;
                    bits &= bits - 1;
                }
            }
            return proto::KeyBloom {
                words: Vec::new(),
                set_bit_deltas: deltas,
            };
        }
        proto::KeyBloom {
            words: self.words.iter().flat_map(|w| w.to_le_bytes()).collect(),
            set_bit_deltas: Vec::new(),
        }
    }

    /// Reads the wire form; an error for one of another size or with bits out of range.
    pub fn from_proto(bloom: &proto::KeyBloom) -> Result<Self> {
        let invalid =
            |what: &str| DataFusionError::Internal(format!("join key bloom filter: {what}"));
        let mut filter = Self::default();
        if !bloom.words.is_empty() {
            if bloom.words.len() != BLOOM_BITS / 8 {
                return Err(invalid(&format!(
                    "{} bytes, not {}",
                    bloom.words.len(),
                    BLOOM_BITS / 8
                )));
            }
            for (word, bytes) in filter.words.iter_mut().zip(bloom.words.chunks_exact(8)) {
                *word = u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
            }
            return Ok(filter);
        }
        let mut bit: u64 = 0;
        for delta in &bloom.set_bit_deltas {
            bit += *delta as u64;
            let at = usize::try_from(bit).ok().filter(|b| *b < BLOOM_BITS);
            let at = at.ok_or_else(|| invalid(&format!("bit {bit} out of range")))?;
            filter.words[at / WORD] |= 1 << (at % WORD);
        }
        Ok(filter)
    }
}

/// The rows whose keys are all non-null, as a validity mask; None when all are.
fn all_valid(keys: &[ArrayRef]) -> Option<NullBuffer> {
    keys.iter().fold(None, |acc, k| {
        NullBuffer::union(acc.as_ref(), k.logical_nulls().as_ref())
    })
}

/// One hash per row over all key columns.
fn hashes(keys: &[ArrayRef]) -> Result<Vec<u64>> {
    let rows = keys.first().map_or(0, |k| k.len());
    let mut hashes = vec![0; rows];
    create_hashes(keys, &RandomState::with_seed(SEED), &mut hashes)?;
    Ok(hashes)
}

/// The [`HASHES`] bit positions of one key hash (double hashing over its two halves).
fn bits(hash: u64) -> impl Iterator<Item = usize> {
    let low = hash as u32 as u64;
    let high = (hash >> 32) | 1;
    (0..HASHES as u64)
        .map(move |i| (low.wrapping_add(i.wrapping_mul(high)) % BLOOM_BITS as u64) as usize)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, StringArray};

    use super::*;

    fn ints(values: &[Option<i64>]) -> ArrayRef {
        Arc::new(Int64Array::from(values.to_vec()))
    }

    #[test]
    fn keys_put_in_are_found_null_keys_never_and_most_others_not() {
        let mut bloom = KeyBloom::default();
        let inserted: Vec<Option<i64>> = (0..10_000).map(|i| Some(i * 7)).collect();
        bloom.insert(&[ints(&inserted)]).unwrap();
        let found = bloom.may_contain(&[ints(&inserted)]).unwrap();
        assert_eq!(found.true_count(), 10_000);
        let others: Vec<Option<i64>> = (0..10_000).map(|i| Some(i * 7 + 1)).collect();
        let passed = bloom.may_contain(&[ints(&others)]).unwrap().true_count();
        assert!(passed < 100, "{passed} false positives of 10,000");
        let nulls = bloom.may_contain(&[ints(&[None, Some(0)])]).unwrap();
        assert_eq!(nulls, BooleanArray::from(vec![false, true]));
    }

    #[test]
    fn several_key_columns_are_hashed_together() {
        let mut bloom = KeyBloom::default();
        let names: ArrayRef = Arc::new(StringArray::from(vec!["a", "b"]));
        bloom.insert(&[ints(&[Some(1), Some(2)]), names]).unwrap();
        let probe: ArrayRef = Arc::new(StringArray::from(vec!["a", "a"]));
        let found = bloom
            .may_contain(&[ints(&[Some(1), Some(2)]), probe])
            .unwrap();
        assert_eq!(found, BooleanArray::from(vec![true, false]));
    }

    #[test]
    fn merged_filters_hold_both_and_round_trip_sparse_and_dense() {
        let (mut a, mut b) = (KeyBloom::default(), KeyBloom::default());
        a.insert(&[ints(&[Some(1), Some(2)])]).unwrap();
        b.insert(&[ints(&[Some(3)])]).unwrap();
        a.merge(&b);
        let found = a
            .may_contain(&[ints(&[Some(1), Some(2), Some(3)])])
            .unwrap();
        assert_eq!(found.true_count(), 3);
        let sparse = a.to_proto();
        assert!(sparse.words.is_empty() && sparse.set_bit_deltas.len() <= 9);
        assert_eq!(KeyBloom::from_proto(&sparse).unwrap(), a);
        let many: Vec<Option<i64>> = (0..400_000).map(Some).collect();
        a.insert(&[ints(&many)]).unwrap();
        let dense = a.to_proto();
        assert_eq!(dense.words.len(), BLOOM_BITS / 8);
        assert_eq!(KeyBloom::from_proto(&dense).unwrap(), a);
        assert!(a.fill() > MAX_FILL, "{}", a.fill());
    }

    #[test]
    fn a_bloom_filter_of_another_size_or_with_stray_bits_is_an_error() {
        let short = proto::KeyBloom {
            words: vec![0; 16],
            set_bit_deltas: Vec::new(),
        };
        assert!(KeyBloom::from_proto(&short).is_err());
        let stray = proto::KeyBloom {
            words: Vec::new(),
            set_bit_deltas: vec![BLOOM_BITS as u32],
        };
        assert!(KeyBloom::from_proto(&stray).is_err());
    }
}
