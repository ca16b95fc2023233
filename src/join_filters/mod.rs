//! Join filters across stages: a hash join's build side, finished in one stage, filters
//! the scans of its probe side, which may run in another stage (another process).
//!
//! DataFusion filters selective joins with dynamic filters: the build side, once known,
//! updates a filter that the probe-side scan is already holding. Baton cuts such a join
//! at its exchanges, so the scan and the build side are in different plan instances;
//! instead the scheduler carries the filter from one stage to the next:
//!
//! 1. Planning ([`rule`]): for a hash join whose type drops unmatched probe rows, a
//!    [`KeySummaryExec`] goes on top of the build side below its exchange (it passes the
//!    rows on and summarises the join keys) and a [`ProbeFilterExec`] on top of the
//!    probe side: below its hash exchange when there is one (the filter then runs in the
//!    probe's producer stage, before the shuffle), else right under the join. A probe
//!    filter in another stage than the join makes that stage wait for the build stage,
//!    so it is kept only where the cost estimates say waiting pays.
//! 2. The build stage's tasks report their [`KeySummary`] (min, max and, when few, the
//!    distinct values of each key; a Bloom filter of the keys) with their status; the
//!    scheduler merges them, keeping the Bloom filter only where the values are too
//!    many to list and it is sparse enough to pay.
//! 3. The probe stage's tasks are pushed with the merged summary; the executor turns it
//!    into a predicate ([`ProbeFilterExec::with_keys`]) that filters rows and prunes the
//!    parquet row groups and pages of the scans beneath it.

mod bloom;
mod probe;
pub mod rule;
mod summary;

pub use probe::{FilterEffect, ProbeFilterExec, apply_filters};
pub use summary::{KeyColumn, KeySummary, KeySummaryExec, MAX_FILTER_VALUES, summaries_of};
