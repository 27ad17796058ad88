//! The README's commands stay true: every `baton`/`baton-node` command it shows uses a
//! subcommand and flags the binaries have, and its curl and Python examples run against a real
//! `baton serve --local` and answer. (`make chat` and `make test` are run by CI.)

use std::path::PathBuf;
use std::process::Command;

use baton_tests::{binary, demo_model, repo_root, ServeProcess};

fn readme() -> String {
    std::fs::read_to_string(repo_root().join("README.md")).expect("README.md")
}

/// The code blocks of a language (```sh, ```python).
fn blocks(text: &str, lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match &mut current {
            None if line.trim() == format!("```{lang}") => current = Some(String::new()),
            Some(_) if line.trim() == "```" => out.extend(current.take()),
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None => {}
        }
    }
    out
}

/// Every command of ours that the README shows: in shell blocks (after a pipe too) and in the
/// command table. Each is (binary, the words after it).
fn commands(text: &str) -> Vec<(String, Vec<String>)> {
    let mut lines: Vec<String> = blocks(text, "sh")
        .iter()
        .flat_map(|b| b.lines().map(str::to_string).collect::<Vec<_>>())
        .collect();
    for row in text.lines().filter(|l| l.starts_with("| `baton")) {
        if let Some(cmd) = row.split('`').nth(1) {
            lines.push(cmd.replace("\\|", "|"));
        }
    }
    let mut out = Vec::new();
    for line in lines {
        let line = line.split(" # ").next().unwrap_or("").trim();
        for part in line.split(" | ") {
            let words: Vec<String> = part.split_whitespace().map(str::to_string).collect();
            let Some(first) = words.first() else { continue };
            let bin = first.trim_start_matches("./target/release/");
            if bin == "baton" || bin == "baton-node" {
                out.push((bin.to_string(), words[1..].to_vec()));
            }
        }
    }
    out
}

#[test]
fn every_readme_command_has_its_subcommand_and_flags() {
    let cmds = commands(&readme());
    assert!(cmds.len() >= 20, "found only {} commands", cmds.len());
    for subcommand in [
        "chat", "serve", "generate", "swarm", "route", "join", "eval", "bench",
    ] {
        assert!(
            cmds.iter()
                .any(|(_, w)| w.first().map(String::as_str) == Some(subcommand)),
            "the README shows no `{subcommand}`"
        );
    }
    for (bin, words) in cmds {
        let sub = &words[0];
        let out = Command::new(binary(&bin))
            .args([sub.as_str(), "--help"])
            .output()
            .expect("the binary runs");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "`{bin} {sub}` is not a command");
        for w in &words[1..] {
            // Flags, also inside the table's [--a B | --c] groups.
            for flag in w.split(['[', ']', '(', ')', '|']) {
                let flag = flag.split('=').next().unwrap_or("");
                if flag.starts_with("--") && flag.len() > 2 {
                    assert!(
                        help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
                        "`{bin} {sub}` has no {flag}"
                    );
                }
            }
        }
    }
}

/// The Python that has the `openai` package: `$BATON_PYTHON` (`make test` sets it; `make
/// openai` makes it).
fn python() -> PathBuf {
    let p = std::env::var_os("BATON_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"));
    let ok = Command::new(&p)
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} cannot import openai: run `make openai` and set BATON_PYTHON=~/.cache/baton/venv/bin/python (make test does)",
        p.display()
    );
    p
}

#[test]
fn readme_server_examples_answer() {
    let text = readme();
    let python = python();
    let model = demo_model();
    let server = ServeProcess::start(&["--local", "--model", model.to_str().unwrap()]);
    let at = |s: &str| s.replace("http://localhost:8000", &server.url);

    let curls: Vec<String> = blocks(&text, "sh")
        .iter()
        .flat_map(|b| b.lines().map(str::to_string).collect::<Vec<_>>())
        .filter(|l| l.starts_with("curl "))
        .collect();
    assert!(curls.len() >= 3, "{curls:?}");
    for c in &curls {
        let out = Command::new("sh")
            .args(["-c", &at(c)])
            .output()
            .expect("sh runs");
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{c}");
        assert!(!body.contains("\"error\""), "{c}: {body}");
        if c.contains("capital of France") {
            assert!(body.contains("Paris"), "{c}: {body}");
        }
        if c.contains("\"stream\": true") {
            assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
        }
    }

    let py = blocks(&text, "python");
    assert_eq!(py.len(), 1, "one Python example");
    let out = Command::new(python)
        .args(["-c", &at(&py[0])])
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    assert!(
        lines.next().is_some_and(|l| l.contains("Paris")),
        "{stdout}"
    );
    assert!(
        lines.next().is_some_and(|l| !l.trim().is_empty()),
        "{stdout}"
    );
}
