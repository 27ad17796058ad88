//! Prefix reuse: a node keeps the KV cache of sessions' prompts, so that a later session whose
//! prompt begins the same way (a system prompt, the earlier turns of a chat) starts from it
//! instead of computing it again.
//!
//! A prompt is named by the chained hashes of its blocks of [`PREFIX_BLOCK`] tokens: hash `i`
//! covers tokens `0..(i + 1) · PREFIX_BLOCK`. The client sends them when it opens a session;
//! only the first hop sees tokens, so every hop keys what it keeps by the hashes alone, and by
//! the peer that opened the session: a client can only ever reuse what its own sessions left,
//! and a client that sends hashes of other tokens than it feeds spoils only its own reuse.
//!
//! Each kept prompt is a copy of the session's cache over its whole blocks and, on a hop that
//! passes hidden states on, of what it sent for them: a replacement of the next hop is rebuilt
//! from those as from any step's. Kept prompts are dropped least recently used first when their
//! positions would pass the store's budget.

use baton_protocol::wire::PREFIX_BLOCK;
use baton_protocol::{HiddenStates, WireDtype};

use crate::net::PeerId;
use crate::runtime::Cache;

/// One block's hash in a chain.
pub type BlockHash = [u8; 16];

/// A prompt's blocks, as a session names them for reuse: chained hashes, the last of which
/// covers only `tail` tokens when it is shorter than a block (0: it is whole).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    pub hashes: Vec<BlockHash>,
    pub tail: u8,
}

impl Chain {
    /// The tokens the first `n` hashes cover.
    fn covered(&self, n: usize) -> usize {
        if n == self.hashes.len() && n > 0 && self.tail > 0 {
            (n - 1) * PREFIX_BLOCK + self.tail as usize
        } else {
            n * PREFIX_BLOCK
        }
    }

    /// The tokens all of them cover.
    pub fn tokens(&self) -> usize {
        self.covered(self.hashes.len())
    }
}

/// The blocks of `prompt` but its last token (a session must run one token of its own to get
/// logits): every whole block, then the rest as a shorter block. A shorter block is hashed
/// apart from whole ones, so it matches only the same tokens at the end of a prompt: a prompt
/// sent again reuses all but its last token, one that goes on past it only its whole blocks.
pub fn chain(prompt: &[u32]) -> Chain {
    let covered = prompt.len().saturating_sub(1);
    let mut hashes = Vec::with_capacity(covered.div_ceil(PREFIX_BLOCK));
    let mut prev = [0u8; 16];
    for block in prompt[..covered].chunks(PREFIX_BLOCK) {
        let mut h = blake3::Hasher::new();
        h.update(if block.len() == PREFIX_BLOCK {
            b"baton prefix block"
        } else {
            b"baton prefix tail "
        });
        h.update(&prev);
        for t in block {
            h.update(&t.to_le_bytes());
        }
        prev.copy_from_slice(&h.finalize().as_bytes()[..16]);
        hashes.push(prev);
    }
    Chain {
        hashes,
        tail: (covered % PREFIX_BLOCK) as u8,
    }
}

/// A session started from a kept prompt: its cache, what the hop sent downstream for those
/// positions (`None` on the hop that holds `head`), and how many they are.
pub struct Hit {
    pub cache: Cache,
    pub sent: Option<HiddenStates>,
    pub tokens: usize,
}

struct Entry {
    owner: PeerId,
    wire: WireDtype,
    chain: Chain,
    /// Holds `chain.tokens()` positions.
    cache: Cache,
    sent: Option<HiddenStates>,
    /// When it was last stored or reused, by the store's clock.
    used: u64,
}

impl Entry {
    fn tokens(&self) -> usize {
        self.chain.tokens()
    }
}

/// The prompts a node keeps, within a budget of positions (of every layer of its span).
pub struct PrefixStore {
    budget: usize,
    entries: Vec<Entry>,
    clock: u64,
    /// Prompt tokens sessions asked to reuse, and how many of them they got.
    pub queried: u64,
    pub hits: u64,
}

impl PrefixStore {
    pub fn new(budget: usize) -> PrefixStore {
        PrefixStore {
            budget,
            entries: Vec::new(),
            clock: 0,
            queried: 0,
            hits: 0,
        }
    }

    /// Forgets every kept prompt (the node serves another span now).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Positions kept now.
    pub fn tokens(&self) -> usize {
        self.entries.iter().map(Entry::tokens).sum()
    }

    /// Starts a session of `owner` whose prompt's blocks are `chain` from the longest kept
    /// prompt of the same owner, wire type and span (`fresh`'s) that begins with the same
    /// blocks, if any.
    pub fn reuse(
        &mut self,
        owner: PeerId,
        wire: WireDtype,
        chain: &Chain,
        fresh: &Cache,
    ) -> Option<Hit> {
        self.queried += chain.tokens() as u64;
        // Kept prompts of a span the node no longer serves are of no use.
        self.entries.retain(|e| e.cache.same_span(fresh));
        let (best, tokens) = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.owner == owner && e.wire == wire)
            .map(|(i, e)| (i, e.chain.covered(common(&e.chain.hashes, &chain.hashes))))
            .max_by_key(|&(_, n)| n)?;
        if tokens == 0 {
            return None;
        }
        self.clock += 1;
        let e = &mut self.entries[best];
        e.used = self.clock;
        let cache = e.cache.fork(tokens).ok()?;
        let sent = e.sent.as_ref().map(|h| h.first(tokens as u32));
        self.hits += tokens as u64;
        Some(Hit {
            cache,
            sent,
            tokens,
        })
    }

    /// Keeps the blocks `chain` of a session of `owner` whose cache is `cache` and that sent
    /// `sent` downstream for its first positions. Nothing is kept where the cache no longer
    /// holds all of them (a sliding-window layer dropped some), where another kept prompt
    /// already covers them, or beyond the budget.
    pub fn keep(
        &mut self,
        owner: PeerId,
        wire: WireDtype,
        chain: &Chain,
        cache: &Cache,
        sent: Option<&HiddenStates>,
    ) {
        let tokens = chain.tokens();
        if tokens == 0 || tokens > self.budget || cache.pos() < tokens {
            return;
        }
        let n = chain.hashes.len();
        self.clock += 1;
        let clock = self.clock;
        let mine = |e: &Entry| e.owner == owner && e.wire == wire && e.cache.same_span(cache);
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| mine(e) && common(&e.chain.hashes, &chain.hashes) == n)
        {
            e.used = clock;
            return;
        }
        let sent = match sent {
            Some(h) if (h.tokens as usize) < tokens => return,
            s => s.map(|h| h.first(tokens as u32)),
        };
        let Ok(copy) = cache.fork(tokens) else {
            return;
        };
        // A kept prompt this one extends is no longer needed.
        self.entries.retain(|e| {
            !(mine(e) && common(&e.chain.hashes, &chain.hashes) == e.chain.hashes.len())
        });
        while self.tokens() + tokens > self.budget {
            let Some(oldest) = (0..self.entries.len()).min_by_key(|&i| self.entries[i].used) else {
                break;
            };
            self.entries.swap_remove(oldest);
        }
        self.entries.push(Entry {
            owner,
            wire,
            chain: chain.clone(),
            cache: copy,
            sent,
            used: clock,
        });
    }
}

/// How many leading blocks two chains share.
fn common(a: &[BlockHash], b: &[BlockHash]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_names_every_block_and_its_whole_history() {
        let b = PREFIX_BLOCK;
        let p: Vec<u32> = (0..3 * b as u32 + 5).collect();
        let c = chain(&p);
        // Three whole blocks and the rest but the last token.
        assert_eq!((c.hashes.len(), c.tail, c.tokens()), (4, 4, 3 * b + 4));
        // A prompt that goes on shares the whole blocks, never the shorter one.
        let longer = chain(&[&p[..], &[7, 8, 9][..]].concat());
        assert_eq!(common(&c.hashes, &longer.hashes), 3);
        // Whole blocks to the last token: no shorter block.
        let whole = chain(&p[..2 * b + 1]);
        assert_eq!(
            (whole.hashes.len(), whole.tail, whole.tokens()),
            (2, 0, 2 * b)
        );
        assert_eq!(whole.hashes, c.hashes[..2]);
        assert_eq!(chain(&p[..1]), Chain::default());
        // The same tokens after a different history hash differently.
        let mut q = p.clone();
        q[0] = 99;
        assert!(chain(&q).hashes.iter().zip(&c.hashes).all(|(x, y)| x != y));
    }
}
