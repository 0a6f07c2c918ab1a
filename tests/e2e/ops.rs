//! What operators deploy from `deploy/`: the alert rules pass `promtool`
//! (syntax and unit tests), and the Grafana dashboard and the rules name
//! only metrics the running binaries export; every dashboard query
//! evaluates in a real Prometheus scraping a live cluster.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::prometheus::{require_prometheus, start_prometheus};
use crate::support::*;

fn deploy(p: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(p)
}

#[test]
fn promtool_checks_and_unit_tests_the_alert_rules() {
    require_prometheus();
    let check = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(deploy("prometheus/alerts.yml"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let test = Command::new("promtool")
        .args(["test", "rules", "alerts_test.yml"])
        .current_dir(deploy("prometheus"))
        .output()
        .unwrap();
    assert!(
        test.status.success(),
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
}

/// `handover_…` metric names in a text, histogram suffixes removed.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("handover_") {
        let s = i + at;
        let mut e = s;
        while e < b.len() && (b[e].is_ascii_lowercase() || b[e].is_ascii_digit() || b[e] == b'_') {
            e += 1;
        }
        let mut n = text[s..e].to_string();
        for suffix in ["_bucket", "_count", "_sum"] {
            if let Some(base) = n.strip_suffix(suffix) {
                n = base.to_string();
            }
        }
        out.insert(n);
        i = e;
    }
    out
}

#[test]
fn dashboard_and_rules_use_only_exported_metrics() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let uas_port = free_udp_port();
    let mut uas = sipp_uas_with(dir.path(), "uas.xml", uas_port);
    // Three workers: replicated, so the Raft series exist too; with call
    // records, so theirs do.
    let c = cluster(
        &[format!("b=127.0.0.1:{uas_port}")],
        &["--workers", "3", "--records"],
    );
    wait_members(&c.grpc, 3);
    // Calls placed while shards are still being taken up can lose their
    // callee's answers (a known startup window, not this test's subject).
    wait_all_shards_served(&c.grpc, 3);
    let (sip, _worker, admin, worker_admin) =
        (c.sip, c.worker, c.admin.clone(), c.worker_admin.clone());
    // Traffic, and a drop, so that every series exists.
    let edge: std::net::SocketAddr = format!("127.0.0.1:{sip}").parse().unwrap();
    let (uac, stat) = sipp_uac(dir.path(), edge, 20, 20, 0);
    let _ = std::net::UdpSocket::bind("127.0.0.6:0")
        .unwrap()
        .send_to(b"junk", edge);
    let r = finish_uac(uac, &stat);
    assert_eq!((r.exit, r.successful, r.failed), (Some(0), 20, 0), "{r:?}");
    uas.expect_calls(20);
    std::thread::sleep(Duration::from_millis(300));
    let exported: BTreeSet<String> = [&admin, &worker_admin]
        .iter()
        .flat_map(|a| {
            http_get(&format!("http://{a}/metrics"))
                .1
                .lines()
                .filter_map(|l| {
                    l.strip_prefix("# TYPE ")
                        .and_then(|r| r.split_whitespace().next())
                        .map(str::to_string)
                })
                .collect::<Vec<_>>()
        })
        .collect();

    let dashboard = std::fs::read_to_string(deploy("grafana/handover.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let exprs: Vec<String> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 20, "{} queries", exprs.len());
    let rules = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    let named: BTreeSet<String> = exprs
        .iter()
        .flat_map(|e| metric_names(e))
        .chain(metric_names(&rules))
        .collect();
    let missing: Vec<&String> = named.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "named in deploy/ but not exported: {missing:?}\nexported: {exported:?}"
    );

    // Every dashboard query is valid PromQL and evaluates.
    let (_prom, base) = start_prometheus(
        dir.path(),
        &[
            ("handover-edge", &admin),
            ("handover-worker", &worker_admin),
        ],
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    for e in &exprs {
        let mut r = agent
            .get(&format!("{base}/api/v1/query"))
            .query("query", e)
            .call()
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        assert_eq!(v["status"], "success", "query {e}: {v}");
    }
}
