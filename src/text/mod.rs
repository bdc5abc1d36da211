//! Text utilities shared by the tasks: segmentation into merge tokens, three-way diffs, and
//! offsets in the unit the caller counts in.

pub mod diff3;
pub mod offsets;
pub mod segment;
