//! Text utilities shared by the tasks: segmentation into merge tokens, diffs bounded by input
//! size, three-way diffs, and offsets in the unit the caller counts in.

pub mod diff;
pub mod diff3;
pub mod offsets;
pub mod segment;
