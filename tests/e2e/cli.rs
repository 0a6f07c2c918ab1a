//! The command line: help, version, `check-config`.

use crate::support::{handover, stderr, stdout, write};
use std::io::BufRead as _;

#[test]
fn version_and_help() {
    let v = handover(&["--version"]);
    assert!(v.status.success());
    assert_eq!(
        stdout(&v).trim(),
        format!("handover {}", env!("CARGO_PKG_VERSION"))
    );
    let h = handover(&["--help"]);
    assert!(h.status.success());
    assert!(stdout(&h).contains("check-config"), "{}", stdout(&h));
}

#[test]
fn unknown_subcommand_is_a_usage_error() {
    let o = handover(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unrecognized subcommand 'frobnicate'"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn check_config_accepts_a_valid_file_and_prints_effective_settings() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "ok.toml",
        "# a comment\n[sip]\nmax_uri_bytes = 1024\n\n[cluster]\nhash_key = \"00112233445566778899aabbccddeeff\"\n",
    );
    let o = handover(&["check-config", &f]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("max_uri_bytes = 1024"), "{out}");
    assert!(
        out.contains("max_message_bytes = 65535"),
        "defaults are shown: {out}"
    );
    assert!(out.contains("hash_key = \"set\""), "{out}");
    assert!(
        !out.contains("00112233"),
        "the secret is not printed: {out}"
    );
}

#[test]
fn check_config_names_key_and_line_of_an_unknown_key() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "typo.toml",
        "[sip]\nmax_message_bytes = 2000\nmax_uri_byts = 100\n",
    );
    let o = handover(&["check-config", &f]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("typo.toml:3:1: unknown field `max_uri_byts`"),
        "{e}"
    );
    assert!(
        e.contains("max_uri_bytes"),
        "the valid keys are listed: {e}"
    );
    assert!(
        e.contains("3 | max_uri_byts = 100"),
        "the line is shown: {e}"
    );
}

#[test]
fn check_config_names_key_and_line_of_a_bad_value() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "range.toml",
        "[sip]\n\nmax_message_bytes = 100\n",
    );
    let o = handover(&["check-config", &f]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("range.toml:3:21: key `sip.max_message_bytes`: 100 is out of range"),
        "{e}"
    );

    let f = write(dir.path(), "key.toml", "[cluster]\nhash_key = \"short\"\n");
    let e = stderr(&handover(&["check-config", &f]));
    assert!(
        e.contains("key.toml:2:12: key `cluster.hash_key`: must be exactly 32 hex digits"),
        "{e}"
    );

    let f = write(dir.path(), "type.toml", "[sip]\nmax_uri_bytes = \"long\"\n");
    let e = stderr(&handover(&["check-config", &f]));
    assert!(e.contains("type.toml:2:17:"), "{e}");
}

#[test]
fn check_config_reports_syntax_errors_and_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "syntax.toml", "[sip]\nmax_uri_bytes = = 3\n");
    let o = handover(&["check-config", &f]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("syntax.toml:2:"), "{}", stderr(&o));

    let missing = dir.path().join("nope.toml");
    let o = handover(&["check-config", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("nope.toml: cannot read the file"),
        "{}",
        stderr(&o)
    );

    let o = handover(&["check-config"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "a missing argument is a usage error"
    );
}

#[test]
fn check_config_reads_worker_routes() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "w.toml",
        "[worker]\nmax_call_age_s = 600\n\n[[worker.routes]]\nprefix = \"+4420\"\ntargets = [\"127.0.0.1:5071*3\", \"127.0.0.1:5072\"]\n\n[[worker.routes]]\ntargets = [\"127.0.0.1:5079\"]\n",
    );
    let o = handover(&["check-config", &f]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("\"+4420*=127.0.0.1:5071*3,127.0.0.1:5072\""),
        "{out}"
    );
    assert!(out.contains("\"*=127.0.0.1:5079\""), "{out}");
    let bad = write(
        dir.path(),
        "b.toml",
        "[[worker.routes]]\ntargets = [\"127.0.0.1:5071*0\"]\n",
    );
    let e = stderr(&handover(&["check-config", &bad]));
    assert!(e.contains("b.toml:2:11: key `worker.routes.targets`: route 1: a target's weight must be at least 1"), "{e}");
}

/// SIGINT stops a worker at once even while it is busy: the signal must
/// not be lost between two turns of its loop (it was, when the loop made
/// a new `ctrl_c()` each turn, and a busy worker then never stopped).
#[test]
fn a_busy_worker_stops_on_sigint() {
    use std::process::{Command, Stdio};
    use std::time::Duration;
    for round in 0..3 {
        let port = crate::support::free_udp_port();
        let mut w = crate::support::Proc(
            Command::new(env!("CARGO_BIN_EXE_handover"))
                .args(["worker", "--listen", &format!("127.0.0.1:{port}")])
                .args(["--admin", "127.0.0.1:0", "--route", "*=127.0.0.1:9"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("handover worker starts"),
        );
        // Keep it busy: OPTIONS as fast as one socket sends them.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flood = {
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                let me = s.local_addr().unwrap();
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let m = format!(
                        "OPTIONS sip:w@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{n}\r\n\
                         Max-Forwards: 70\r\nFrom: <sip:t@{me}>;tag=1\r\nTo: <sip:w@127.0.0.1>\r\n\
                         Call-ID: busy-{n}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
                    );
                    let _ = s.send_to(m.as_bytes(), ("127.0.0.1", port));
                }
            })
        };
        std::thread::sleep(Duration::from_millis(700));
        crate::support::signal(w.0.id(), "INT");
        let stopped = crate::support::wait_for(Duration::from_secs(3), || {
            w.0.try_wait().ok().flatten().is_some()
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        flood.join().unwrap();
        assert!(
            stopped,
            "round {round}: the busy worker did not stop within 3 s of SIGINT"
        );
    }
}

/// Log lines for machines: `--log-format json` writes one JSON object a
/// line (level, message, fields), and text written to a pipe carries no
/// colour codes.
#[test]
fn logs_are_json_lines_on_request_and_plain_text_off_a_terminal() {
    for format in ["json", "text"] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_handover"))
            .args(["--log-format", format, "edge", "--listen", "127.0.0.1:0"])
            .args(["--admin", "127.0.0.1:0", "--backend", "127.0.0.1:9"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        let mut lines = std::io::BufReader::new(err).lines();
        let first = lines.next().expect("a log line").unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            !first.contains('\u{1b}'),
            "{format}: no escape codes: {first:?}"
        );
        if format == "json" {
            let v: serde_json::Value = serde_json::from_str(&first).expect("a JSON object");
            assert_eq!(v["level"], "INFO", "{v}");
            assert!(v["fields"]["message"].is_string(), "{v}");
        } else {
            assert!(first.contains(" INFO "), "{first}");
        }
    }
}

/// The built-in hashing key is public: a node of a cluster refuses to
/// start on it and says how to set one; `up` makes its own.
#[test]
fn a_cluster_node_refuses_the_public_default_hashing_key() {
    for args in [
        &["worker", "--id", "1", "--peer", "1=127.0.0.1:1,127.0.0.1:2"][..],
        &["edge", "--cluster", "127.0.0.1:1"][..],
    ] {
        let o = handover(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("a cluster needs a hashing key of its own"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    let o = handover(&["edge", "--hash-key", "xyz", "--backend", "127.0.0.1:9"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("must be exactly 32 hex digits"),
        "{}",
        stderr(&o)
    );
}
