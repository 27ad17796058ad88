//! Expert parallelism, the answering side: a node holding routed experts runs the rows another
//! hop sends it ([`ExpertCall`]) and answers with their outputs. A call needs no session and
//! leaves nothing behind, so any peer holding the same experts can answer it instead.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use baton_protocol::experts::{ExpertCall, ExpertOut, MAX_WIRE_EXPERTS};
use baton_protocol::wire::{ErrorCode, ErrorMsg, Message};
use baton_protocol::{HiddenStates, WireDtype};

use super::{error, error_code, Send, Server};
use crate::moe::Remote;

/// Multiply-adds of a call that runs on the network thread itself (well under a millisecond).
const INLINE_MACS: u64 = 1 << 22;

impl Server {
    /// Where the experts of the node's span that it does not hold run, for this engine and
    /// every engine it moves to.
    pub fn set_remote(&self, remote: Remote) {
        self.engine().set_remote(remote.clone());
        if let Ok(mut r) = self.remote.lock() {
            *r = remote;
        }
    }

    /// What the node's calls to expert peers did so far (zeros without expert peers).
    pub fn dispatch_stats(&self) -> crate::moe::remote::DispatchStats {
        self.remote
            .lock()
            .ok()
            .and_then(|r| r.0.as_ref().map(|d| d.stats()))
            .unwrap_or_default()
    }

    /// Expert calls this node answered, and the rows they carried.
    pub fn experts_served(&self) -> (u64, u64) {
        (
            self.experts_served.0.load(Ordering::Relaxed),
            self.experts_served.1.load(Ordering::Relaxed),
        )
    }

    pub(super) async fn expert_call(&self, c: ExpertCall, send: &Send) -> Result<(), ErrorMsg> {
        let fail = |code, msg: String| error(0, 0, code, msg);
        self.check_model(&c.model_id, 0)?;
        let engine = self.engine();
        let hidden = engine.hidden();
        let mut calls = Vec::with_capacity(c.experts.len());
        for e in &c.experts {
            if e.expert >= MAX_WIRE_EXPERTS || e.decode > e.rows.tokens || e.rows.tokens == 0 {
                return Err(fail(
                    ErrorCode::Malformed,
                    format!(
                        "expert {} with {} rows, {} of them decode",
                        e.expert, e.rows.tokens, e.decode
                    ),
                ));
            }
            if e.rows.hidden as usize != hidden {
                return Err(fail(
                    ErrorCode::Malformed,
                    format!("rows of width {}, not {hidden}", e.rows.hidden),
                ));
            }
            let rows = e
                .rows
                .decode(e.rows.tokens as usize * hidden)
                .map_err(|x| fail(ErrorCode::Malformed, x.to_string()))?;
            calls.push((e.expert as usize, rows, e.decode as usize));
        }
        let rows: u64 = c.experts.iter().map(|e| e.rows.tokens as u64).sum();
        self.experts_served.0.fetch_add(1, Ordering::Relaxed);
        self.experts_served.1.fetch_add(rows, Ordering::Relaxed);
        let block = c.block as usize;
        // A decode step's few rows take microseconds: handing them to another thread would
        // cost more than they do. Longer calls leave the network thread free.
        let outs = if rows.saturating_mul(engine.expert_row_macs() as u64) <= INLINE_MACS {
            engine.run_experts(block, &calls)
        } else {
            let run = Arc::clone(&engine);
            tokio::task::spawn_blocking(move || run.run_experts(block, &calls))
                .await
                .map_err(|e| fail(ErrorCode::Internal, e.to_string()))?
        }
        .map_err(|e| fail(error_code(&e), e.to_string()))?;
        let outputs = outs
            .iter()
            .map(|y| {
                let n = (y.len() / hidden.max(1)) as u32;
                HiddenStates::encode(y, n, hidden as u32, WireDtype::F32)
            })
            .collect();
        Self::reply(send, Message::ExpertOut(ExpertOut { outputs })).await;
        Ok(())
    }
}
