//! A span holding only some of its routed experts, with the others on expert-only spans
//! reached through the `RemoteExperts` seam in memory (the network's part is the end-to-end
//! test's), computes exactly the logits of the whole span on the CPU: for every MoE fixture
//! (other expert counts, group-limited routing, dense layers, a shared expert, FP8), with
//! uneven shards, alone and batched with a prompt long enough for the experts' GEMM path.
//! A wgpu span whose remote experts run on the CPU stays within the wgpu tolerance.

use std::sync::{mpsc, Arc, Mutex};

use baton_node::moe::remote::{DispatchStats, Pending};
use baton_node::moe::{Remote, RemoteExperts};
use baton_node::{
    BackendChoice, Cache, Engine, EngineOptions, KvDtype, Logits, ModelFile, SpanInput,
};
use baton_protocol::experts::{ExpertRows, ExpertShard};
use baton_protocol::Span;
use baton_tests::{fixtures_dir, max_abs_diff};

/// Expert-only engines in this process, each answering for the experts its shard holds.
struct InProcess {
    peers: Vec<Arc<Engine>>,
    calls: Mutex<u64>,
}

impl RemoteExperts for InProcess {
    fn call(&self, block: u32, experts: Vec<ExpertRows>) -> Pending {
        let (tx, rx) = mpsc::channel();
        let run = || {
            let mut outs = Vec::new();
            for e in &experts {
                let peer = self
                    .peers
                    .iter()
                    .find(|p| p.shard().is_some_and(|s| s.holds(e.expert)))
                    .expect("some peer holds the expert");
                let rows = e.rows.decode(usize::MAX).unwrap();
                let call = [(e.expert as usize, rows, e.decode as usize)];
                outs.extend(peer.run_experts(block as usize, &call)?);
            }
            Ok(outs)
        };
        *self.calls.lock().unwrap() += 1;
        let _ = tx.send(run());
        rx
    }

    fn stats(&self) -> DispatchStats {
        DispatchStats {
            calls: *self.calls.lock().unwrap(),
            ..Default::default()
        }
    }
}

fn load(m: &ModelFile, backend: BackendChoice, shard: Option<ExpertShard>) -> Engine {
    let options = EngineOptions {
        backend,
        kv_dtype: KvDtype::F32,
        experts: shard,
    };
    let span = Span::full(m.config.layers as u32);
    Engine::load(m, span, options, &mut |_, _| {}).unwrap()
}

/// The engine holding experts `hop`, and expert-only engines holding each of `peers`.
fn split(
    m: &ModelFile,
    backend: BackendChoice,
    hop: (u32, u32),
    peers: &[(u32, u32)],
) -> (Engine, Arc<InProcess>) {
    let n = m.config.moe.as_ref().unwrap().experts as u32;
    let shard = |(start, end), only| ExpertShard {
        start,
        end,
        of: n,
        only,
    };
    let engine = load(m, backend, Some(shard(hop, false)));
    let peers = peers
        .iter()
        .map(|&p| Arc::new(load(m, BackendChoice::Cpu, Some(shard(p, true)))))
        .collect();
    let remote = Arc::new(InProcess {
        peers,
        calls: Mutex::new(0),
    });
    engine.set_remote(Remote(Some(remote.clone())));
    (engine, remote)
}

/// Three sessions' logits: each runs its prompt (one of 40 tokens, past the GEMM threshold),
/// then four greedy steps, all sessions in one pass per step.
fn run(engine: &Engine, vocab: u32) -> Vec<Vec<f32>> {
    let prompts: Vec<Vec<u32>> = [40u32, 3, 1]
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            (0..len)
                .map(|t| (t * 31 + i as u32 * 7 + 5) % vocab)
                .collect()
        })
        .collect();
    let mut caches: Vec<Cache> = (0..3).map(|_| engine.new_cache().unwrap()).collect();
    let mut inputs = prompts;
    let mut out = Vec::new();
    for _ in 0..5 {
        let mut refs: Vec<&mut Cache> = caches.iter_mut().collect();
        let steps: Vec<SpanInput> = inputs.iter().map(|i| SpanInput::Tokens(i)).collect();
        let logits = Cache::forward_pass(&mut refs, &steps, Logits::Last).unwrap();
        inputs = logits
            .iter()
            .map(|l| vec![baton_node::sampling::top_k(l, 1)[0].0])
            .collect();
        out.extend(logits);
    }
    out
}

const MODELS: [&str; 6] = [
    "moe/mixtral",
    "moe/gguf/mixtral.gguf",
    "moe/gguf/qwen3_moe.gguf",
    "moe/gguf/deepseek_v2.gguf",
    "moe/deepseek_v3",
    "moe/deepseek_v3_fp8",
];

#[test]
fn a_span_with_remote_experts_computes_what_the_whole_span_does() {
    for name in MODELS {
        let m = ModelFile::open(&fixtures_dir().join(name)).unwrap();
        let n = m.config.moe.as_ref().unwrap().experts as u32;
        let vocab = m.config.vocab as u32;
        let whole = run(&load(&m, BackendChoice::Cpu, None), vocab);
        // Half here and half on one peer; then the last expert here and the rest over two
        // peers.
        let splits = [
            ((0, n / 2), vec![(n / 2, n)]),
            ((n - 1, n), vec![(0, 1), (1, n - 1)]),
        ];
        for (mine, peers) in splits {
            let (hop, remote) = split(&m, BackendChoice::Cpu, mine, &peers);
            let got = run(&hop, vocab);
            assert!(
                got == whole,
                "{name}: experts {mine:?} here, {peers:?} elsewhere"
            );
            assert!(remote.stats().calls > 0, "{name}: no expert went elsewhere");
        }
    }
}

#[test]
fn a_wgpu_span_with_remote_experts_stays_within_tolerance() {
    for name in ["moe/gguf/mixtral.gguf", "moe/deepseek_v3"] {
        let m = ModelFile::open(&fixtures_dir().join(name)).unwrap();
        let n = m.config.moe.as_ref().unwrap().experts as u32;
        let vocab = m.config.vocab as u32;
        let whole = run(&load(&m, BackendChoice::Cpu, None), vocab);
        let (hop, _) = split(&m, BackendChoice::Wgpu, (0, n / 2), &[(n / 2, n)]);
        let got = run(&hop, vocab);
        // Greedy choices may part on a near-tie; the first step's logits may not.
        let d = max_abs_diff(&got[0], &whole[0]);
        assert!(d < 1e-2, "{name}: wgpu with remote experts is off by {d}");
    }
}

#[test]
fn shards_that_do_not_fit_the_model_are_refused() {
    let m = ModelFile::open(&fixtures_dir().join("moe/gguf/mixtral.gguf")).unwrap();
    for (start, end, of) in [(0, 4, 16), (4, 4, 8), (0, 9, 8)] {
        let shard = ExpertShard {
            start,
            end,
            of,
            only: false,
        };
        let options = EngineOptions {
            backend: BackendChoice::Cpu,
            experts: Some(shard),
            ..Default::default()
        };
        let e = Engine::load(&m, Span::full(4), options, &mut |_, _| {});
        assert!(e.is_err(), "{shard} loaded");
    }
    // A span holding some experts, with no peers, says which experts it lacks.
    let hop = load(
        &m,
        BackendChoice::Cpu,
        Some(ExpertShard {
            start: 0,
            end: 1,
            of: 8,
            only: false,
        }),
    );
    let mut cache = hop.new_cache().unwrap();
    let e = cache
        .run_step(SpanInput::Tokens(&[1, 2, 3]), Logits::Last)
        .unwrap_err();
    assert!(e.to_string().contains("no expert peers"), "{e}");
    let dense = ModelFile::open(&baton_tests::demo_model()).unwrap();
    let options = EngineOptions {
        backend: BackendChoice::Cpu,
        experts: Some(ExpertShard::all(8)),
        ..Default::default()
    };
    assert!(Engine::load(&dense, Span::full(30), options, &mut |_, _| {}).is_err());
}
