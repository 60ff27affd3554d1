//! Wanted keys in a small open-addressed table: the one lookup per member of a scanned line.
//!
//! Owns: matching a key's bytes against the keys some format reads. Must not know what a key
//! means: callers get back the index they registered the key under.

/// Wanted keys in a small open-addressed table indexed by a hash of the key's length and first
/// 8 bytes. Most keys of a line are not wanted and stop at one empty bucket; a candidate is
/// confirmed by comparing two integers (the first and last 8 bytes), and the whole key only
/// when it is longer than 16 bytes.
pub struct KeyTable {
    /// Entry index + 1 per bucket; 0 is empty. Linear probing, never deleted from.
    buckets: [u8; KEY_BUCKETS],
    entries: Vec<KeyEntry>,
}

const KEY_BUCKETS: usize = 1024;
/// Keys past this many are not wanted (a bucket holds an entry index + 1 in a byte).
const MAX_KEYS: usize = 255;

struct KeyEntry {
    len: usize,
    head: u64,
    tail: u64,
    full: Box<[u8]>,
    slot: usize,
}

/// The first and last 8 bytes of `k` as integers (zero-padded when shorter).
#[inline(always)]
fn head_tail(k: &[u8]) -> (u64, u64) {
    if let (Some(head), Some(tail)) = (k.first_chunk::<8>(), k.last_chunk::<8>()) {
        (u64::from_le_bytes(*head), u64::from_le_bytes(*tail))
    } else {
        let mut pad = [0u8; 8];
        pad[..k.len()].copy_from_slice(k);
        let v = u64::from_le_bytes(pad);
        (v, v)
    }
}

#[inline(always)]
fn bucket(len: usize, head: u64) -> usize {
    (head
        .wrapping_add(len as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        >> 54) as usize
}

impl KeyTable {
    pub fn new(keys: &[(String, usize)]) -> Self {
        let mut table = KeyTable {
            buckets: [0; KEY_BUCKETS],
            entries: Vec::new(),
        };
        // Every format's keys and the extra token keys, far below half the buckets: the table
        // never fills (keys past half of it are not wanted, see `Parser::new`).
        for (k, slot) in keys.iter().take(MAX_KEYS) {
            let (head, tail) = head_tail(k.as_bytes());
            table.entries.push(KeyEntry {
                len: k.len(),
                head,
                tail,
                full: k.as_bytes().into(),
                slot: *slot,
            });
            let mut h = bucket(k.len(), head);
            while table.buckets[h] != 0 {
                h = (h + 1) % KEY_BUCKETS;
            }
            table.buckets[h] = table.entries.len() as u8;
        }
        table
    }

    /// Calls `hit` with the slot of every wanted key equal to `key`. Returns the key's first
    /// 8 bytes as a little-endian integer (zero-padded), for a caller that looks at them too.
    #[inline(always)]
    pub fn lookup(&self, key: &[u8], mut hit: impl FnMut(usize)) -> u64 {
        let (head, tail) = head_tail(key);
        let mut h = bucket(key.len(), head);
        loop {
            let i = self.buckets[h] as usize;
            let Some(e) = i.checked_sub(1).and_then(|i| self.entries.get(i)) else {
                return head;
            };
            if e.head == head
                && e.tail == tail
                && e.len == key.len()
                && (key.len() <= 16 || *e.full == *key)
            {
                hit(e.slot);
            }
            h = (h + 1) % KEY_BUCKETS;
        }
    }
}
