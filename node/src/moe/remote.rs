//! Experts a span does not hold: the seam through which a mixture-of-experts layer hands rows
//! to peers that hold them (expert parallelism), and which experts a node loads.
//!
//! The layer sends its remote experts' rows before it computes its own, so that peers compute
//! while it does, and takes their outputs back where its own would be: the sum a token gets is
//! the one it would get if every expert ran here.

use std::sync::{mpsc, Arc};

use baton_protocol::experts::{ExpertRows, ExpertShard};

use crate::error::RunError;

/// What a call's outputs arrive through: each expert's rows, in the order of the call.
pub type Pending = mpsc::Receiver<Result<Vec<Vec<f32>>, RunError>>;

/// Runs routed experts elsewhere. Implemented over the network by the node's server; a call
/// must never block the pass thread beyond sending.
pub trait RemoteExperts: Send + Sync {
    /// Starts running `experts` of `block` on peers that hold them.
    fn call(&self, block: u32, experts: Vec<ExpertRows>) -> Pending;

    /// What the calls so far did.
    fn stats(&self) -> DispatchStats;
}

/// Counts of a node's calls to expert peers, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DispatchStats {
    /// Layers whose rows went to peers: one per mixture-of-experts layer and pass.
    pub calls: u64,
    /// Messages sent to peers (a layer's call goes to one or more).
    pub messages: u64,
    /// Messages that failed or timed out, whose experts went to another peer.
    pub failed: u64,
    /// Seconds the layers waited for their peers, all together.
    pub seconds: f64,
}

/// Where a pass's remote experts run, if anywhere.
#[derive(Clone, Default)]
pub struct Remote(pub Option<Arc<dyn RemoteExperts>>);

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Remote(peers)"
        } else {
            "Remote(none)"
        })
    }
}

/// Which routed experts of each layer a node loads: a shard's range, or all `experts`.
pub fn held(shard: Option<ExpertShard>, experts: usize) -> std::ops::Range<usize> {
    match shard {
        Some(s) => (s.start as usize).min(experts)..(s.end as usize).min(experts),
        None => 0..experts,
    }
}

/// Waits for a call's outputs and checks that there is one per expert called.
pub fn wait(pending: Pending, want: usize) -> Result<Vec<Vec<f32>>, RunError> {
    let outs = pending
        .recv()
        .map_err(|_| RunError::Backend("the expert dispatcher is gone".into()))??;
    if outs.len() != want {
        return Err(RunError::Backend(format!(
            "expert peers answered {} outputs for {want} experts",
            outs.len()
        )));
    }
    Ok(outs)
}
