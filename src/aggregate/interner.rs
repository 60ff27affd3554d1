//! The distinct values of one label, each stored once and given a small id the first time it
//! is seen, with the label's limit (values past it fold into `__overflow__`).
//!
//! Owns: the value ↔ id maps and the limit. Must not: know series or records.

use std::collections::HashMap;

use rustc_hash::FxBuildHasher;

use super::{label_value, OVERFLOW};

/// Distinct values of one label, with its limit.
pub(super) struct Interner {
    pub(super) ids: HashMap<Box<str>, u32, FxBuildHasher>,
    pub(super) values: Vec<Box<str>>,
    pub(super) limit: usize,
}

impl Interner {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            ids: HashMap::default(),
            values: Vec::new(),
            limit,
        }
    }

    /// The id of `v`, and whether it was folded into `__overflow__`.
    #[inline]
    pub(super) fn intern(&mut self, v: &str) -> (u32, bool) {
        if let Some(&id) = self.ids.get(v) {
            return (id, false);
        }
        let clean = label_value(v);
        if let Some(&id) = self.ids.get(clean.as_ref()) {
            return (id, false);
        }
        if self.values.len() >= self.limit && clean != OVERFLOW {
            return (self.force(OVERFLOW), true);
        }
        (self.force(&clean), false)
    }

    /// Interns without checking the limit (the overflow value itself, restored state).
    pub(super) fn force(&mut self, v: &str) -> u32 {
        if let Some(&id) = self.ids.get(v) {
            return id;
        }
        let id = self.values.len() as u32;
        self.values.push(v.into());
        self.ids.insert(v.into(), id);
        id
    }

    pub(super) fn get(&self, id: u32) -> &str {
        &self.values[id as usize]
    }

    /// Each id's position in the sorted order of the values.
    pub(super) fn ranks(&self) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.values.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| self.values[a as usize].cmp(&self.values[b as usize]));
        let mut rank = vec![0u32; order.len()];
        for (r, id) in order.into_iter().enumerate() {
            rank[id as usize] = r as u32;
        }
        rank
    }
}
