//! A set of listener ids as a bitmask: which listeners a tenant is served
//! on, or a route attached to. Checked on every request, so it lives inline
//! in its tenant or route record (up to 128 listeners; more spill to the
//! heap) instead of in a `Vec<bool>` of its own: one cache line fewer to
//! fetch per candidate route when each request is for another tenant.

use smallvec::SmallVec;

/// Listener ids `0..len`, each in or out of the set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListenerSet {
    words: SmallVec<[u64; 2]>,
}

impl ListenerSet {
    /// The empty set over `len` listeners.
    pub fn empty(len: usize) -> ListenerSet {
        ListenerSet {
            words: smallvec::smallvec![0; len.div_ceil(64)],
        }
    }

    /// Put listener `i` in the set (ignored beyond the `len` it was made for).
    pub fn insert(&mut self, i: usize) {
        if let Some(word) = self.words.get_mut(i / 64) {
            *word |= 1 << (i % 64);
        }
    }

    /// Is listener `i` in the set? (`false` for any id it was not made for.)
    pub fn contains(&self, i: usize) -> bool {
        self.words
            .get(i / 64)
            .is_some_and(|word| word & (1 << (i % 64)) != 0)
    }

    /// Is the set empty?
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&word| word == 0)
    }

    /// Is every id of this set also in `other`?
    pub fn is_subset(&self, other: &ListenerSet) -> bool {
        self.words.iter().enumerate().all(|(w, &word)| {
            let theirs = other.words.get(w).copied().unwrap_or(0);
            word & !theirs == 0
        })
    }

    /// The ids in the set, ascending.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            (0..64)
                .filter(move |bit| word & (1 << bit) != 0)
                .map(move |bit| w * 64 + bit)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The set of the ids marked `true`.
    fn set_of(marks: &[bool]) -> ListenerSet {
        let mut set = ListenerSet::empty(marks.len());
        for (i, on) in marks.iter().enumerate() {
            if *on {
                set.insert(i);
            }
        }
        set
    }

    proptest! {
        /// The set agrees with the `Vec<bool>` it replaces, at any size.
        #[test]
        fn agrees_with_a_bool_vector(marks in proptest::collection::vec(any::<bool>(), 0..300)) {
            let set = set_of(&marks);
            for i in 0..marks.len() + 70 {
                prop_assert_eq!(set.contains(i), marks.get(i).copied().unwrap_or(false));
            }
            let ids: Vec<usize> = set.iter().collect();
            let expected: Vec<usize> = (0..marks.len()).filter(|&i| marks[i]).collect();
            prop_assert_eq!(ids, expected);
            prop_assert_eq!(set.is_empty(), !marks.contains(&true));
        }

        /// Subsets agree with the element-wise reading.
        #[test]
        fn subsets(a in proptest::collection::vec(any::<bool>(), 0..140), b in proptest::collection::vec(any::<bool>(), 0..140)) {
            let expected = a.iter().enumerate().all(|(i, &on)| !on || b.get(i).copied().unwrap_or(false));
            prop_assert_eq!(set_of(&a).is_subset(&set_of(&b)), expected);
        }
    }

    #[test]
    fn inserts_beyond_its_size_are_ignored() {
        let mut set = ListenerSet::empty(3);
        set.insert(2);
        set.insert(64);
        assert!(set.contains(2));
        assert!(!set.contains(64));
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![2]);
    }
}
