//! Nodes that clients of this machine found computing wrong outputs, kept for a day in
//! `<cache>/banned.tsv` (`$BATON_CACHE`, else `~/.cache/baton`): later clients leave them out of
//! their routes too, and `baton swarm` shows them. A node whose GPU was broken and is fixed
//! comes back after a day.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton_node::net::PeerId;

/// How long a ban lasts across clients.
pub const BAN_FOR: Duration = Duration::from_secs(24 * 3600);
/// The most bans read back (the newest).
const MAX_BANS: usize = 1000;

/// One ban: when, whom, and what it computed wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ban {
    pub at_unix: u64,
    pub peer_id: String,
    pub name: String,
    pub what: String,
}

fn file() -> PathBuf {
    baton_node::system::cache_dir().join("banned.tsv")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Keeps a ban (best effort: a read-only cache only loses the note).
pub fn remember(peer: &PeerId, name: &str, what: &str) {
    let clean = |s: &str| s.replace(['\t', '\n'], " ");
    let line = format!("{}\t{peer}\t{}\t{}\n", now(), clean(name), clean(what));
    let path = file();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        tracing::debug!("cannot note the ban in {}: {e}", path.display());
    }
}

/// The bans of the last [`BAN_FOR`], newest last.
pub fn recent() -> Vec<Ban> {
    parse(&std::fs::read_to_string(file()).unwrap_or_default(), now())
}

fn parse(text: &str, now: u64) -> Vec<Ban> {
    let mut bans: Vec<Ban> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(4, '\t');
            let at_unix: u64 = f.next()?.parse().ok()?;
            let peer_id = f.next()?.to_string();
            peer_id.parse::<PeerId>().ok()?;
            Some(Ban {
                at_unix,
                peer_id,
                name: f.next()?.to_string(),
                what: f.next().unwrap_or("").to_string(),
            })
        })
        .filter(|b| now.saturating_sub(b.at_unix) < BAN_FOR.as_secs())
        .collect();
    let extra = bans.len().saturating_sub(MAX_BANS);
    bans.drain(..extra);
    bans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_bans_are_read_back_and_junk_and_old_ones_skipped() {
        let peer = baton_node::net::generate_identity().public().to_peer_id();
        let text = format!(
            "1000\t{peer}\tliar\tblocks 15..30\n\
             garbage line\n\
             10\t{peer}\told\tblocks 0..15\n\
             1001\tnot-a-peer\tx\ty\n"
        );
        // A day later less a second: the ban at 1000 holds, the one at 10 has lapsed.
        let bans = parse(&text, 1000 + BAN_FOR.as_secs() - 1);
        assert_eq!(
            bans,
            vec![Ban {
                at_unix: 1000,
                peer_id: peer.to_string(),
                name: "liar".into(),
                what: "blocks 15..30".into(),
            }]
        );
        assert!(parse(&text, 1000 + BAN_FOR.as_secs()).is_empty());
        assert_eq!(parse(&text, 1001).len(), 2);
    }
}
