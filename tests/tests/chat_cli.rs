//! `baton chat --local` driven through a pipe, as a script would: one message per line in, one
//! answer per line out, with the conversation kept across turns, the commands, and Ctrl-C.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use baton_tests::{baton, binary, demo_model};

struct ChatProcess {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    /// Output as it comes, in pieces.
    output: mpsc::Receiver<String>,
    pending: String,
}

impl ChatProcess {
    fn start(args: &[&str]) -> ChatProcess {
        let model = demo_model();
        let mut child = Command::new(binary("baton"))
            .args(["chat", "--local", "--model"])
            .arg(&model)
            .args(args)
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("baton chat starts");
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().expect("stdout");
        let (tx, output) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = stdout.read(&mut buf) {
                let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });
        ChatProcess {
            child,
            stdin,
            output,
            pending: String::new(),
        }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to chat");
        stdin.flush().expect("flush");
    }

    fn more(&mut self) {
        let piece = self
            .output
            .recv_timeout(Duration::from_secs(120))
            .expect("more output");
        self.pending.push_str(&piece);
    }

    /// Waits until some of an answer has been printed.
    fn wait_for_output(&mut self) {
        while self.pending.is_empty() {
            self.more();
        }
    }

    /// The next line printed.
    fn answer(&mut self) -> String {
        loop {
            if let Some(i) = self.pending.find('\n') {
                let line = self.pending[..i].to_string();
                self.pending.drain(..=i);
                return line;
            }
            self.more();
        }
    }

    fn close(mut self) -> std::process::ExitStatus {
        drop(self.stdin.take());
        self.child.wait().expect("chat exits")
    }
}

#[test]
fn local_chat_answers_keeps_the_conversation_and_obeys_commands() {
    let mut chat = ChatProcess::start(&["--temperature", "0", "--max-tokens", "64"]);
    chat.send("What is the capital of France?");
    let a = chat.answer();
    assert!(a.contains("Paris"), "{a}");
    // The follow-up only makes sense with the first turn in the context.
    chat.send("And of Germany?");
    let b = chat.answer();
    assert!(b.contains("Berlin"), "{b}");
    chat.send("/route");
    let r = chat.answer();
    for hop in [
        "local-1 blocks 0..10",
        "local-2 blocks 10..20",
        "local-3 blocks 20..30",
    ] {
        assert!(r.contains(hop), "{r}");
    }
    chat.send("/stats");
    let s = chat.answer();
    assert!(
        s.contains("tokens/s") && s.contains("local-3 20..30"),
        "{s}"
    );
    chat.send("/reset");
    assert!(chat.answer().contains("forgotten"));
    chat.send("/quit");
    assert!(chat.close().success());
}

#[test]
fn ctrl_c_stops_an_answer_and_the_chat_goes_on() {
    let mut chat = ChatProcess::start(&["--nodes", "2", "--temperature", "0"]);
    chat.send("Write a very long story about a dragon who learns to cook.");
    // Wait until the answer streams, then interrupt it; the partial line ends it.
    chat.wait_for_output();
    let ok = Command::new("kill")
        .args(["-INT", &chat.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
    let partial = chat.answer();
    assert!(!partial.is_empty());
    chat.send("What is the capital of France?");
    let a = chat.answer();
    assert!(a.contains("Paris"), "{a}");
    assert!(chat.close().success());
}

#[test]
fn local_chat_without_the_demo_model_says_how_to_get_it() {
    let (ok, _, err) = {
        let out = Command::new(binary("baton"))
            .args(["chat", "--local"])
            .env("BATON_CACHE", "/nonexistent/baton-cache")
            .env_remove("BATON_MODEL")
            .stdin(Stdio::null())
            .output()
            .expect("baton runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert!(!ok);
    assert!(
        err.contains("/nonexistent/baton-cache") && err.contains("make model"),
        "{err}"
    );
    let (ok, _, err) = baton(&["chat", "--local", "--nodes", "0"]);
    assert!(!ok && err.contains("--nodes"), "{err}");
}
