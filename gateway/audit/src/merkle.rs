//! The append-only Merkle tree over the records, in the style of RFC 9162 (Certificate
//! Transparency v2), section 2.1.
//!
//! ```text
//! leaf i   = SHA-256(0x00 || hash(seq = i + 1))      the record's chain hash is the leaf data
//! node     = SHA-256(0x01 || left || right)
//! MTH(0)   = SHA-256("")
//! MTH(n)   = node(MTH(D[0:k]), MTH(D[k:n])), k = largest power of two < n
//! ```
//!
//! The chain hash commits to the record's canonical encoding *and* its predecessor, so a leaf
//! proves one record and an inclusion proof ties an exported record to a signed checkpoint.
//!
//! The store keeps the hash of every complete, aligned block of [`CHUNK`] leaves (a node at
//! height 8) in its `merkle_chunks` table. Any subtree hash is computed from those and at most
//! `CHUNK - 1` leaves at either edge, so roots and proofs over millions of records cost a few
//! thousand hashes, and pruned records (whose leaves are gone) remain provable.
//!
//! Everything here is pure: [`NodeSource`] abstracts where leaves and chunk hashes come from.

use ring::digest;

/// A SHA-256 node or leaf hash.
pub type Hash = [u8; 32];

/// Leaves per stored chunk (a perfect subtree of height 8).
pub const CHUNK: u64 = 256;

/// `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(&[0x00]);
    ctx.update(data);
    finish(ctx)
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(&[0x01]);
    ctx.update(left);
    ctx.update(right);
    finish(ctx)
}

/// The root of the empty tree, `SHA-256("")`.
pub fn empty_root() -> Hash {
    finish(digest::Context::new(&digest::SHA256))
}

fn finish(ctx: digest::Context) -> Hash {
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Largest power of two strictly less than `n` (`n >= 2`).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// Where leaf and chunk hashes come from (the database, or memory in tests).
pub trait NodeSource {
    /// The error of the backing store.
    type Error;
    /// The hash of leaf `index` (0-based; leaf `i` is the record with seq `i + 1`).
    fn leaf(&mut self, index: u64) -> Result<Hash, Self::Error>;
    /// The stored hash of chunk `k` (leaves `k*CHUNK .. (k+1)*CHUNK`), if there is one.
    fn chunk(&mut self, k: u64) -> Result<Option<Hash>, Self::Error>;
}

/// `MTH(D[start : start + n])`.
pub fn subtree<S: NodeSource>(src: &mut S, start: u64, n: u64) -> Result<Hash, S::Error> {
    if n == 0 {
        return Ok(empty_root());
    }
    if n == CHUNK && start % CHUNK == 0 {
        if let Some(h) = src.chunk(start / CHUNK)? {
            return Ok(h);
        }
    }
    if n == 1 {
        return src.leaf(start);
    }
    let k = split(n);
    let left = subtree(src, start, k)?;
    let right = subtree(src, start + k, n - k)?;
    Ok(node_hash(&left, &right))
}

/// The root of the first `size` leaves.
pub fn root<S: NodeSource>(src: &mut S, size: u64) -> Result<Hash, S::Error> {
    subtree(src, 0, size)
}

/// RFC 9162 2.1.3.1: the inclusion proof (audit path) of leaf `index` in the tree of `size`
/// leaves. `None` if `index >= size`.
pub fn inclusion_proof<S: NodeSource>(
    src: &mut S,
    index: u64,
    size: u64,
) -> Result<Option<Vec<Hash>>, S::Error> {
    if index >= size {
        return Ok(None);
    }
    let mut path = Vec::new();
    path_rec(src, index, 0, size, &mut path)?;
    Ok(Some(path))
}

fn path_rec<S: NodeSource>(
    src: &mut S,
    m: u64,
    start: u64,
    n: u64,
    out: &mut Vec<Hash>,
) -> Result<(), S::Error> {
    if n <= 1 {
        return Ok(());
    }
    let k = split(n);
    if m < k {
        path_rec(src, m, start, k, out)?;
        out.push(subtree(src, start + k, n - k)?);
    } else {
        path_rec(src, m - k, start + k, n - k, out)?;
        out.push(subtree(src, start, k)?);
    }
    Ok(())
}

/// RFC 9162 2.1.4.1: the consistency proof between the trees of `old` and `new` leaves.
/// `None` if `old > new`. Empty when `old == new` or `old == 0`.
pub fn consistency_proof<S: NodeSource>(
    src: &mut S,
    old: u64,
    new: u64,
) -> Result<Option<Vec<Hash>>, S::Error> {
    if old > new {
        return Ok(None);
    }
    let mut out = Vec::new();
    if old > 0 && old < new {
        subproof(src, old, 0, new, true, &mut out)?;
    }
    Ok(Some(out))
}

fn subproof<S: NodeSource>(
    src: &mut S,
    m: u64,
    start: u64,
    n: u64,
    complete: bool,
    out: &mut Vec<Hash>,
) -> Result<(), S::Error> {
    if m == n {
        if !complete {
            out.push(subtree(src, start, n)?);
        }
        return Ok(());
    }
    let k = split(n);
    if m <= k {
        subproof(src, m, start, k, complete, out)?;
        out.push(subtree(src, start + k, n - k)?);
    } else {
        subproof(src, m - k, start + k, n - k, false, out)?;
        out.push(subtree(src, start, k)?);
    }
    Ok(())
}

/// RFC 9162 2.1.3.2: does `proof` show that `leaf` (a leaf hash) is leaf `index` of the tree
/// of `size` leaves with root `root`?
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && r == *root
}

/// RFC 9162 2.1.4.2: does `proof` show that the tree of `new` leaves with root `new_root`
/// extends the tree of `old` leaves with root `old_root`?
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old > new {
        return false;
    }
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    if old == 0 {
        return proof.is_empty() && *old_root == empty_root();
    }
    let mut nodes: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        nodes.push(*old_root);
    }
    nodes.extend_from_slice(proof);
    let Some((first, rest)) = nodes.split_first() else {
        return false;
    };
    let (mut fn_, mut sn) = (old - 1, new - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    fr == *old_root && sr == *new_root && sn == 0
}

/// The roots of the perfect subtrees that make up a tree of `size` leaves (one per set bit of
/// `size`, largest first): appending a leaf costs one hash amortised, the root `log2(size)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactRange {
    size: u64,
    peaks: Vec<Hash>,
}

impl CompactRange {
    /// The empty tree.
    pub fn new() -> CompactRange {
        CompactRange::default()
    }

    /// The compact range of the first `size` leaves of `src`.
    pub fn from_source<S: NodeSource>(src: &mut S, size: u64) -> Result<CompactRange, S::Error> {
        let mut peaks = Vec::new();
        let mut start = 0;
        for bit in (0..64).rev() {
            let n = 1u64 << bit;
            if size & n != 0 {
                peaks.push(subtree(src, start, n)?);
                start += n;
            }
        }
        Ok(CompactRange { size, peaks })
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        self.push_capture(leaf, u32::MAX);
    }

    /// Appends a leaf hash; if this completes an aligned block of `2^level` leaves, returns
    /// that block's subtree hash (used to emit chunk hashes).
    pub fn push_capture(&mut self, leaf: Hash, level: u32) -> Option<Hash> {
        let mut h = leaf;
        let mut merged = 0u32;
        let mut captured = (level == 0).then_some(leaf);
        while merged < 64 && self.size & (1u64 << merged) != 0 {
            match self.peaks.pop() {
                Some(left) => h = node_hash(&left, &h),
                None => break,
            }
            merged += 1;
            if merged == level {
                captured = Some(h);
            }
        }
        self.peaks.push(h);
        self.size += 1;
        captured
    }

    /// `MTH` of the leaves pushed so far.
    pub fn root(&self) -> Hash {
        let mut iter = self.peaks.iter().rev();
        let Some(last) = iter.next() else {
            return empty_root();
        };
        iter.fold(*last, |acc, left| node_hash(left, &acc))
    }
}

/// An in-memory [`NodeSource`] over leaf hashes (and no stored chunks).
#[derive(Debug)]
pub struct Leaves<'a>(pub &'a [Hash]);

impl NodeSource for Leaves<'_> {
    type Error = std::convert::Infallible;
    fn leaf(&mut self, index: u64) -> Result<Hash, Self::Error> {
        Ok(usize::try_from(index)
            .ok()
            .and_then(|i| self.0.get(i))
            .copied()
            .unwrap_or([0; 32]))
    }
    fn chunk(&mut self, _k: u64) -> Result<Option<Hash>, Self::Error> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// RFC 9162's recursive definition, written out naively.
    fn mth(d: &[Hash]) -> Hash {
        match d.len() {
            0 => empty_root(),
            1 => d[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&mth(&d[..k]), &mth(&d[k..]))
            }
        }
    }

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    struct Chunked {
        leaves: Vec<Hash>,
        chunks: Vec<Hash>,
        leaf_reads: u64,
    }

    impl NodeSource for Chunked {
        type Error = ();
        fn leaf(&mut self, index: u64) -> Result<Hash, ()> {
            self.leaf_reads += 1;
            self.leaves.get(index as usize).copied().ok_or(())
        }
        fn chunk(&mut self, k: u64) -> Result<Option<Hash>, ()> {
            Ok(self.chunks.get(k as usize).copied())
        }
    }

    #[test]
    fn roots_match_the_definition() {
        let all = leaves(70);
        let mut cr = CompactRange::new();
        for n in 0..=70u64 {
            let want = mth(&all[..n as usize]);
            assert_eq!(root(&mut Leaves(&all), n).unwrap(), want, "n={n}");
            assert_eq!(cr.root(), want, "compact n={n}");
            assert_eq!(CompactRange::from_source(&mut Leaves(&all), n).unwrap(), cr);
            if n < 70 {
                cr.push(all[n as usize]);
            }
        }
        // Known vector: the empty root is SHA-256 of nothing.
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn chunks_give_the_same_roots_with_few_leaf_reads() {
        let all = leaves(5000);
        let mut cr = CompactRange::new();
        let mut chunks = Vec::new();
        for l in &all {
            if let Some(h) = cr.push_capture(*l, 8) {
                chunks.push(h);
            }
        }
        assert_eq!(chunks.len(), 5000 / 256);
        for (k, c) in chunks.iter().enumerate() {
            assert_eq!(*c, mth(&all[k * 256..(k + 1) * 256]));
        }
        let mut src = Chunked {
            leaves: all.clone(),
            chunks,
            leaf_reads: 0,
        };
        assert_eq!(root(&mut src, 5000).unwrap(), mth(&all));
        assert!(src.leaf_reads < 256, "{}", src.leaf_reads);
    }

    #[test]
    fn inclusion_proofs_verify_and_reject() {
        let all = leaves(37);
        for size in 1..=37u64 {
            let r = mth(&all[..size as usize]);
            for i in 0..size {
                let p = inclusion_proof(&mut Leaves(&all), i, size)
                    .unwrap()
                    .unwrap();
                assert!(verify_inclusion(i, size, &all[i as usize], &p, &r));
                let other = all[((i + 1) % 37) as usize];
                assert!(!verify_inclusion(i, size, &other, &p, &r));
                if size > 1 {
                    assert!(!verify_inclusion(
                        (i + 1) % size,
                        size,
                        &all[i as usize],
                        &p,
                        &r
                    ));
                }
                if let Some(first) = p.first() {
                    let mut bad = p.clone();
                    bad[0] = node_hash(first, first);
                    assert!(!verify_inclusion(i, size, &all[i as usize], &bad, &r));
                }
            }
            assert!(inclusion_proof(&mut Leaves(&all), size, size)
                .unwrap()
                .is_none());
        }
    }

    #[test]
    fn consistency_proofs_verify_and_reject() {
        let all = leaves(40);
        for new in 1..=40u64 {
            let nr = mth(&all[..new as usize]);
            for old in 0..=new {
                let or = mth(&all[..old as usize]);
                let p = consistency_proof(&mut Leaves(&all), old, new)
                    .unwrap()
                    .unwrap();
                assert!(verify_consistency(old, new, &or, &nr, &p), "{old} {new}");
                if old > 0 && old < new {
                    let wrong = mth(&all[1..old as usize + 1]);
                    assert!(!verify_consistency(old, new, &wrong, &nr, &p));
                    assert!(!verify_consistency(old, new, &or, &wrong, &p));
                    let mut bad = p.clone();
                    bad.pop();
                    assert!(!verify_consistency(old, new, &or, &nr, &bad));
                }
            }
        }
    }

    #[test]
    fn chunked_proofs_equal_plain_proofs() {
        let all = leaves(1000);
        let mut cr = CompactRange::new();
        let mut chunks = Vec::new();
        for l in &all {
            if let Some(h) = cr.push_capture(*l, 8) {
                chunks.push(h);
            }
        }
        let mut src = Chunked {
            leaves: all.clone(),
            chunks,
            leaf_reads: 0,
        };
        for (i, size) in [(0, 1000), (513, 1000), (999, 1000), (300, 768)] {
            assert_eq!(
                inclusion_proof(&mut src, i, size).unwrap(),
                inclusion_proof(&mut Leaves(&all), i, size).unwrap()
            );
        }
        for (old, new) in [(1, 1000), (256, 1000), (700, 999), (512, 768)] {
            assert_eq!(
                consistency_proof(&mut src, old, new).unwrap(),
                consistency_proof(&mut Leaves(&all), old, new).unwrap()
            );
        }
    }
}
