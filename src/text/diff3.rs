//! Three-way diff over merge tokens: which regions each side changed, and where both changed the
//! same base region differently (a conflict). Ranges are byte ranges into each of the three texts.

use std::ops::Range;

use similar::{Algorithm, DiffOp};

use super::diff::bounded_ops;
use super::segment::{self, Granularity};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionKind {
    /// Neither side changed this base text.
    Unchanged,
    /// Only ours changed it.
    Ours,
    /// Only theirs changed it.
    Theirs,
    /// Both made the same change.
    Both,
    /// Both changed it, differently.
    Conflict,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    pub kind: RegionKind,
    pub base: Range<usize>,
    pub ours: Range<usize>,
    pub theirs: Range<usize>,
}

/// Token boundaries as byte offsets: `starts[i]..starts[i + 1]` is token `i`.
fn boundaries(tokens: &[&str]) -> Vec<usize> {
    let mut starts = Vec::with_capacity(tokens.len() + 1);
    let mut at = 0;
    starts.push(0);
    for t in tokens {
        at += t.len();
        starts.push(at);
    }
    starts
}

/// For each base token, the index of the equal token in `other`, if the diff matched it.
fn matches(base: &[&str], other: &[&str]) -> Vec<Option<usize>> {
    let mut map = vec![None; base.len()];
    // Patience anchors on tokens unique to both sides, so common words and spaces do not become
    // spurious anchors that split one edit into several.
    for op in bounded_ops(Algorithm::Patience, base, other) {
        if let DiffOp::Equal { old_index, new_index, len } = op {
            for k in 0..len {
                map[old_index + k] = Some(new_index + k);
            }
        }
    }
    map
}

/// Three-way diff of `ours` and `theirs` against `base`.
pub fn diff3(base: &str, ours: &str, theirs: &str, granularity: Granularity) -> Vec<Region> {
    let b = segment::tokens(base, granularity);
    let o = segment::tokens(ours, granularity);
    let t = segment::tokens(theirs, granularity);
    let (bb, ob, tb) = (boundaries(&b), boundaries(&o), boundaries(&t));
    let (to_ours, to_theirs) = (matches(&b, &o), matches(&b, &t));
    let mut regions: Vec<Region> = Vec::new();
    let (mut ib, mut io, mut it) = (0, 0, 0);
    let mut push = |kind: RegionKind, base: Range<usize>, ours: Range<usize>, theirs: Range<usize>| {
        if base.is_empty() && ours.is_empty() && theirs.is_empty() {
            return;
        }
        if let Some(last) = regions.last_mut() {
            if last.kind == kind && kind == RegionKind::Unchanged {
                last.base.end = base.end;
                last.ours.end = ours.end;
                last.theirs.end = theirs.end;
                return;
            }
        }
        regions.push(Region { kind, base, ours, theirs });
    };
    let sync_points = (0..b.len()).filter_map(|i| Some((i, to_ours[i]?, to_theirs[i]?))).chain(std::iter::once((
        b.len(),
        o.len(),
        t.len(),
    )));
    for (jb, jo, jt) in sync_points {
        if jo < io || jt < it {
            continue;
        }
        let (rb, ro, rt) = (bb[ib]..bb[jb], ob[io]..ob[jo], tb[it]..tb[jt]);
        let (sb, so, st) = (&base[rb.clone()], &ours[ro.clone()], &theirs[rt.clone()]);
        let kind = match (so == sb, st == sb) {
            (true, true) => RegionKind::Unchanged,
            (true, false) => RegionKind::Theirs,
            (false, true) => RegionKind::Ours,
            (false, false) if so == st => RegionKind::Both,
            (false, false) => RegionKind::Conflict,
        };
        push(kind, rb, ro, rt);
        if jb < b.len() {
            push(RegionKind::Unchanged, bb[jb]..bb[jb + 1], ob[jo]..ob[jo + 1], tb[jt]..tb[jt + 1]);
        }
        (ib, io, it) = (jb + 1, jo + 1, jt + 1);
    }
    coalesce_conflicts(regions, base)
}

/// Joins conflicts separated only by a single whitespace token: two conflicts one space apart
/// are one edit to a person, and one suggestion reads better than two.
fn coalesce_conflicts(regions: Vec<Region>, base: &str) -> Vec<Region> {
    let mut out: Vec<Region> = Vec::with_capacity(regions.len());
    let mut iter = regions.into_iter().peekable();
    while let Some(region) = iter.next() {
        let is_gap = region.kind == RegionKind::Unchanged
            && base[region.base.clone()].chars().all(|c| c == ' ')
            && region.base.len() <= 1;
        let joins = is_gap
            && out.last().is_some_and(|r| r.kind == RegionKind::Conflict)
            && iter.peek().is_some_and(|r| r.kind == RegionKind::Conflict);
        if joins {
            let next = iter.next().expect("peeked");
            let last = out.last_mut().expect("checked");
            last.base.end = next.base.end;
            last.ours.end = next.ours.end;
            last.theirs.end = next.theirs.end;
        } else {
            out.push(region);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(regions: &[Region]) -> Vec<RegionKind> {
        regions.iter().map(|r| r.kind).collect()
    }

    #[test]
    fn edits_to_different_words_do_not_conflict() {
        let regions = diff3("the red car is fast", "the blue car is fast", "the red car is slow", Granularity::Word);
        assert!(!kinds(&regions).contains(&RegionKind::Conflict), "{regions:?}");
    }

    #[test]
    fn the_same_word_changed_twice_conflicts() {
        let regions = diff3("the red car", "the blue car", "the green car", Granularity::Word);
        let conflict = regions.iter().find(|r| r.kind == RegionKind::Conflict).expect("a conflict");
        assert_eq!(&"the red car"[conflict.base.clone()], "red");
        assert_eq!(&"the blue car"[conflict.ours.clone()], "blue");
    }

    #[test]
    fn identical_changes_are_not_conflicts() {
        let regions = diff3("a b c", "a x c", "a x c", Granularity::Word);
        assert_eq!(kinds(&regions), vec![RegionKind::Unchanged, RegionKind::Both, RegionKind::Unchanged]);
    }

    #[test]
    fn line_granularity_conflicts_where_word_level_does_not() {
        let (b, o, t) = ("one two three\n", "one 2 three\n", "one two 3\n");
        assert!(kinds(&diff3(b, o, t, Granularity::Line)).contains(&RegionKind::Conflict));
        assert!(!kinds(&diff3(b, o, t, Granularity::Word)).contains(&RegionKind::Conflict));
    }
}
