//! A swarm of real `baton-node join` processes on loopback, used through `baton` as a person
//! would: generation across three nodes is exact, `--span auto` fills the gaps, and a node that
//! leaves drops out of `baton swarm` within the record lifetime (30 s).

use std::time::{Duration, Instant};

use baton_tests::{baton, cases, demo_model, NodeProcess};

fn model() -> String {
    demo_model().to_str().unwrap().to_string()
}

#[test]
fn three_nodes_generate_what_one_process_does() {
    let m = model();
    let a = NodeProcess::start(&["--model", &m, "--span", "0..10", "--name", "a"]).unwrap();
    let boot = a.bootstrap.clone();
    let _b = NodeProcess::start(&[
        "--model",
        &m,
        "--span",
        "10..20",
        "--name",
        "b",
        "--bootstrap",
        &boot,
    ])
    .unwrap();
    let _c = NodeProcess::start(&[
        "--model",
        &m,
        "--span",
        "20..30",
        "--name",
        "c",
        "--bootstrap",
        &boot,
    ])
    .unwrap();

    let (ok, out, err) = baton(&["route", "--bootstrap", &boot]);
    assert!(ok, "{err}");
    assert!(out.contains("3 hop(s)"), "{out}");

    for case in cases().unwrap() {
        let n = (case.all_ids.len() - case.prompt_ids.len()).to_string();
        let c = &case.json["case"];
        let mut prompt = vec!["--max-tokens", &n];
        let text;
        match (c["text"].as_str(), c["messages"].as_array()) {
            (Some(t), _) => {
                text = t.to_string();
                prompt.extend(["--prompt", &text]);
            }
            (None, Some(msgs)) => {
                text = msgs[0]["content"].as_str().unwrap().to_string();
                prompt.extend(["--chat", "--prompt", &text]);
            }
            _ => unreachable!(),
        }
        // With f32 on the wire, exactly the tokens of the whole model in one process.
        let mut local = vec!["generate", "--model", &m, "--backend", "cpu"];
        local.extend(&prompt);
        let (ok, want, err) = baton(&local);
        assert!(ok, "{err}");
        let mut remote = vec!["generate", "--bootstrap", &boot, "--wire-dtype", "f32"];
        remote.extend(&prompt);
        let (ok, got, err) = baton(&remote);
        assert!(ok, "{}: {err}", case.name);
        assert_eq!(got, want, "{}: f32 wire", case.name);
        // With the default f16, the reference's greedy text.
        let mut remote = vec!["generate", "--bootstrap", &boot];
        remote.extend(&prompt);
        let (ok, got, err) = baton(&remote);
        assert!(ok, "{}: {err}", case.name);
        let reference = case.json["greedy_text"]
            .as_str()
            .unwrap()
            .trim_end_matches("<|im_end|>");
        assert_eq!(
            got.trim_end_matches('\n'),
            reference,
            "{}: f16 wire",
            case.name
        );
    }
}

fn swarm_listing(boot: &str) -> String {
    let (ok, out, err) = baton(&["swarm", "--bootstrap", boot]);
    assert!(ok, "{err}");
    out
}

#[test]
fn auto_spans_cover_the_model_and_leavers_drop_out() {
    let m = model();
    let first = NodeProcess::start(&[
        "--model",
        &m,
        "--span",
        "auto",
        "--max-blocks",
        "15",
        "--name",
        "first",
    ])
    .unwrap();
    let boot = first.bootstrap.clone();
    assert!(first.banner.contains("blocks 0..15"), "{}", first.banner);
    let second = NodeProcess::start(&[
        "--model",
        &m,
        "--span",
        "auto",
        "--max-blocks",
        "15",
        "--name",
        "second",
        "--bootstrap",
        &boot,
    ])
    .unwrap();
    assert!(second.banner.contains("blocks 15..30"), "{}", second.banner);
    let out = swarm_listing(&boot);
    assert!(out.contains("every stage is served"), "{out}");

    // The second node dies; within one record lifetime the swarm no longer shows it.
    drop(second);
    let start = Instant::now();
    loop {
        let out = swarm_listing(&boot);
        if !out.contains("second") {
            assert!(out.contains("UNCOVERED"), "{out}");
            eprintln!("the departed node dropped out after {:?}", start.elapsed());
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(45),
            "still listed: {out}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

#[test]
fn a_node_without_room_is_routed_around() {
    let m = model();
    let full = NodeProcess::start(&[
        "--model",
        &m,
        "--span",
        "0..30",
        "--name",
        "full",
        "--max-kv-tokens",
        "16",
    ])
    .unwrap();
    let _roomy = NodeProcess::start(&[
        "--model",
        &m,
        "--span",
        "0..30",
        "--name",
        "roomy",
        "--bootstrap",
        &full.bootstrap,
    ])
    .unwrap();
    for _ in 0..2 {
        let (ok, out, err) = baton(&[
            "generate",
            "--bootstrap",
            &full.bootstrap,
            "--prompt",
            "The capital of France is",
            "--max-tokens",
            "24",
            "--stats",
        ]);
        assert!(ok, "{err}");
        assert!(out.contains("Paris"), "{out}");
        assert!(err.contains("route: roomy 0..30"), "{err}");
    }
}
