//! Browsers (issue 18): SIP over WebSocket (RFC 7118). Two JsSIP phones
//! (npm `jssip`, bundled for the page) in headless Chromium (Debian
//! `chromium`, driven by npm `playwright-core`) register with `handover up
//! --workers 3` over WSS and call each other: alice calls bob, bob
//! answers, alice hangs up, and each phone reports what it saw
//! (`tests/browser/jssip_call.mjs`). And a WebSocket upgrade without the
//! `sip` subprotocol is refused.

use std::io::{Read as _, Write as _};
use std::process::Command;
use std::time::Duration;

use crate::support::*;

pub(crate) fn require_browser() {
    for (tool, how) in [
        ("node", "Debian package nodejs"),
        ("chromium", "Debian package chromium"),
    ] {
        assert!(
            Command::new(tool).arg("--version").output().is_ok(),
            "{tool} is not installed: run scripts/install-deps.sh ({how})"
        );
    }
    let dir = std::env::var("HANDOVER_BROWSER").unwrap_or_else(|_| {
        format!(
            "{}/.cache/handover/browser",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    for f in ["jssip.js", "node_modules/playwright-core/package.json"] {
        assert!(
            std::path::Path::new(&dir).join(f).exists(),
            "{dir}/{f} is missing: run scripts/install-deps.sh (JsSIP and playwright-core from npm)"
        );
    }
}

#[test]
fn jssip_in_chromium_registers_over_wss_calls_and_hangs_up_through_three_workers() {
    require_browser();
    let _g = serial();
    let ws = free_tcp_port();
    let ws_listen = format!("127.0.0.1:{ws}");
    let c = cluster(&[], &["--workers", "3", "--listen-ws", &ws_listen]);
    wait_members(&c.grpc, 3);
    wait_all_shards_served(&c.grpc, 3);
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser/jssip_call.mjs");
    let out = Command::new("node")
        .arg(&script)
        .arg(format!("wss://127.0.0.1:{}", c.wss))
        .arg("127.0.0.1")
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|_| {
        panic!(
            "the browser reported nothing usable: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(v["ok"], true, "{v}");
    let seen = |who: &str| -> Vec<String> {
        v["seen"][who]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        seen("alice"),
        ["registered", "accepted 200", "confirmed", "ended by local"]
    );
    assert_eq!(
        seen("bob"),
        [
            "registered",
            "incoming from alice",
            "confirmed",
            "ended by remote"
        ]
    );
    // Both phones' SIP went over the edge's WSS listener, nothing else.
    let m = http_get(&format!("http://{}/metrics", c.admin)).1;
    assert_eq!(
        metric(
            &m,
            "handover_edge_connections_opened_total{transport=\"wss\"}"
        ),
        2.0,
        "{m}"
    );
    assert!(metric(&m, "handover_edge_stream_messages_total{transport=\"wss\"}") >= 8.0);
    let (host, port) = c.worker_admin.rsplit_once(':').unwrap();
    let port: u16 = port.parse().unwrap();
    assert_eq!(
        summed(host, port, &[0, 1, 2], "handover_calls_answered_total"),
        1.0
    );

    // An upgrade without the `sip` subprotocol: 400, closed, counted.
    let mut s = std::net::TcpStream::connect(&ws_listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        format!(
            "GET / HTTP/1.1\r\nHost: {ws_listen}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Protocol: chat\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    let refused = wait_for(Duration::from_secs(2), || {
        let m = http_get(&format!("http://{}/metrics", c.admin)).1;
        metric(
            &m,
            "handover_edge_connections_closed_total{transport=\"ws\",reason=\"ws_no_sip\"}",
        ) == 1.0
    });
    assert!(refused, "the upgrade without `sip` was counted");
}
