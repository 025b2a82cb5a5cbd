//! What the parsers' property tests share (test builds only): the run's size, and input made
//! by mutating real captures. Each parser's own module (`*_fuzz.rs` beside it) says what it
//! holds that parser to; docs/LIFECYCLE.md describes the engines.
//!
//! `cargo test --lib fuzz` runs them all, a few thousand cases per target in well under a
//! minute; `PROPTEST_CASES=N` sets the cases per target for longer hunts
//! (`scripts/fuzz-long.sh`).

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;

/// The run's configuration: `PROPTEST_CASES` when set, else `default_cases` (chosen per
/// target so that the whole set stays well under a minute in a debug build).
pub fn config(default_cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(default_cases);
    Config {
        cases,
        // Shrinking a failure down is worth a while; a hunt is not a CI run.
        max_shrink_iters: 4096,
        ..Config::default()
    }
}

/// A file of `tests/corpus/`, read at test time.
pub fn corpus(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// One edit of a byte string. Positions are [`Index`]es, so an edit fits any length.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Flip one bit.
    Flip(Index, u8),
    /// Overwrite a byte, often with a value that length fields get wrong.
    Set(Index, u8),
    Insert(Index, Vec<u8>),
    Remove(Index, usize),
    /// Copy a run of the input to another place (repeated fields, doubled records).
    Duplicate(Index, Index, usize),
    Truncate(Index),
}

fn interesting_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => any::<u8>(),
        1 => prop::sample::select(vec![0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff, b'\r', b'\n', b' ']),
    ]
}

/// One mutation, any kind.
pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip(at, bit)),
        4 => (any::<Index>(), interesting_byte()).prop_map(|(at, b)| Mutation::Set(at, b)),
        2 => (any::<Index>(), prop::collection::vec(interesting_byte(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        2 => (any::<Index>(), 1usize..32).prop_map(|(at, n)| Mutation::Remove(at, n)),
        1 => (any::<Index>(), any::<Index>(), 1usize..64)
            .prop_map(|(from, to, n)| Mutation::Duplicate(from, to, n)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
    ]
}

/// Applies `mutations` to `bytes` in order.
pub fn apply(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for mutation in mutations {
        let len = bytes.len();
        match mutation {
            Mutation::Insert(at, extra) => {
                let at = at.index(len + 1);
                bytes.splice(at..at, extra.iter().copied());
            }
            _ if len == 0 => {}
            Mutation::Flip(at, bit) => bytes[at.index(len)] ^= 1 << bit,
            Mutation::Set(at, byte) => bytes[at.index(len)] = *byte,
            Mutation::Remove(at, n) => {
                let at = at.index(len);
                bytes.drain(at..(at + n).min(len));
            }
            Mutation::Duplicate(from, to, n) => {
                let from = from.index(len);
                let run = bytes[from..(from + n).min(len)].to_vec();
                let to = to.index(len + 1);
                bytes.splice(to..to, run);
            }
            Mutation::Truncate(at) => bytes.truncate(at.index(len)),
        }
    }
    bytes
}

/// A few mutations, to be applied later (to bytes a test makes itself).
pub fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..8)
}

/// One of `seeds`, with one to eight mutations applied.
pub fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (prop::sample::select(seeds), mutations()).prop_map(|(seed, mutations)| apply(seed, &mutations))
}

/// Cuts `bytes` into pieces at the given points (as [`Index`]es, sorted and deduplicated), so
/// a parser fed piece by piece sees every kind of split.
pub fn split(bytes: &[u8], cuts: &[Index]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points.dedup();
    points
        .windows(2)
        .map(|w| bytes[w[0]..w[1]].to_vec())
        .collect()
}

/// Split points for [`split`]: none to many.
pub fn cuts() -> impl Strategy<Value = Vec<Index>> {
    prop::collection::vec(any::<Index>(), 0..24)
}
