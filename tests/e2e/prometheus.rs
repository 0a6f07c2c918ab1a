//! A real Prometheus (Debian's `prometheus`) scrapes a running `handover up`
//! cluster carrying SIPp calls; PromQL through its HTTP API must return the
//! active calls while they are up, a non-zero call rate, and exact totals.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

pub(crate) fn require_prometheus() {
    let ok = Command::new("prometheus").arg("--version").output().is_ok();
    assert!(
        ok,
        "prometheus is not installed: run scripts/install-deps.sh (Debian package prometheus)"
    );
}

pub(crate) fn start_prometheus(dir: &Path, targets: &[(&str, &str)]) -> (Proc, String) {
    require_prometheus();
    let port = free_tcp_port();
    let mut cfg = String::from(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
    );
    for (job, t) in targets {
        cfg += &format!("  - job_name: {job}\n    static_configs:\n      - targets: [\"{t}\"]\n");
    }
    let file = dir.join("prometheus.yml");
    std::fs::write(&file, cfg).unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", file.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus starts");
    let base = format!("http://127.0.0.1:{port}");
    assert!(
        wait_for(Duration::from_secs(20), || http_get_ok(&format!(
            "{base}/-/ready"
        ))),
        "prometheus became ready"
    );
    (Proc(child), base)
}

fn http_get_ok(url: &str) -> bool {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    agent
        .get(url)
        .call()
        .is_ok_and(|r| r.status().as_u16() == 200)
}

/// The value of a PromQL query with one result (None if empty).
fn query(base: &str, q: &str) -> Option<f64> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent
        .get(&format!("{base}/api/v1/query"))
        .query("query", q)
        .call()
        .ok()?;
    let v: serde_json::Value = serde_json::from_str(&r.body_mut().read_to_string().ok()?).ok()?;
    let res = v["data"]["result"].as_array()?;
    res.first()?["value"][1].as_str()?.parse().ok()
}

#[test]
fn prometheus_scrapes_edge_and_worker_during_calls() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let uas_port = free_udp_port();
    let mut uas = sipp_uas_with(dir.path(), "uas.xml", uas_port);
    let c = cluster(&[format!("b=127.0.0.1:{uas_port}")], &[]);
    let (sip, _worker, admin, worker_admin) =
        (c.sip, c.worker, c.admin.clone(), c.worker_admin.clone());
    let (_prom, base) =
        start_prometheus(dir.path(), &[("edge", &admin), ("worker", &worker_admin)]);
    assert!(
        wait_for(Duration::from_secs(10), || query(&base, "sum(up)")
            == Some(2.0)),
        "both targets scraped"
    );

    // 50 calls held 10 s each: all up at once for a while.
    let edge: std::net::SocketAddr = format!("127.0.0.1:{sip}").parse().unwrap();
    let (uac, stat) = sipp_uac(dir.path(), edge, 25, 50, 10_000);
    assert!(
        wait_for(Duration::from_secs(15), || query(
            &base,
            "handover_calls_active{job=\"worker\"}"
        ) == Some(50.0)),
        "Prometheus sees the 50 active calls: {:?}",
        query(&base, "handover_calls_active")
    );
    let rate = query(&base, "rate(handover_calls_started_total[10s])").unwrap_or(0.0);
    assert!(rate > 0.0, "a non-zero call rate: {rate}");
    let r = finish_uac(uac, &stat);
    assert_eq!((r.exit, r.successful, r.failed), (Some(0), 50, 0), "{r:?}");
    uas.expect_calls(50);
    // Totals once the last scrapes of both processes have seen the end
    // (they are scraped at different moments, so wait for all at once).
    // The edge forwarded each call's INVITE, ACK and BYE to the worker.
    assert!(
        wait_for(Duration::from_secs(10), || {
            query(&base, "handover_calls_ended_total{cause=\"hangup\"}") == Some(50.0)
                && query(&base, "handover_calls_active") == Some(0.0)
                && query(&base, "sum(handover_edge_backend_forwards_total)") == Some(150.0)
        }),
        "ended calls {:?}, forwards {:?}",
        query(&base, "handover_calls_ended_total{cause=\"hangup\"}"),
        query(&base, "sum(handover_edge_backend_forwards_total)")
    );
    assert_eq!(
        query(&base, "handover_invite_answer_seconds_count"),
        Some(50.0)
    );
    assert_eq!(
        query(&base, "handover_edge_backend_up{backend=\"0\"}"),
        Some(1.0)
    );
    // The worker sent its edge what A's INVITE, B's 2xx and A's BYE each
    // made (two messages apiece) as one datagram.
    let bundles = query(&base, "handover_edge_bundles_received_total").unwrap_or(0.0);
    assert!(bundles >= 100.0, "at least two bundles per call: {bundles}");
}
