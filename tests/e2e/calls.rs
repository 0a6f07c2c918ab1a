//! `handover calls` and `handover hangup` (issue 20): the calls SIPp holds
//! through three workers, listed from any worker's replica, and ended on
//! both legs by an operator whichever worker owns them.

use crate::support::*;

/// `handover calls --json` through the worker at `grpc` with `extra`
/// filters: the Call-IDs listed.
fn listed(grpc: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["calls", "--grpc", grpc, "--json"];
    args.extend_from_slice(extra);
    let o = handover(&args);
    assert!(o.status.success(), "calls: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    v["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["call_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn calls_lists_what_sipp_holds_and_hangup_ends_a_call_on_both_legs() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let b = free_udp_port();
    let mut uas = sipp_uas_with(dir.path(), "uas.xml", b);
    let c = cluster(&[format!("*=127.0.0.1:{b}")], &["--workers", "3"]);
    wait_members(&c.grpc, 3);
    wait_all_shards_served(&c.grpc, 3);
    let edge: std::net::SocketAddr = format!("127.0.0.1:{}", c.sip).parse().unwrap();
    // Six callers that never hang up: they wait for the network's BYE.
    let (uac, stat) = sipp_uac_with(dir.path(), "uac_wait_bye.xml", "bob", edge, 20, 6, 0);
    let pid = uac.0.id();
    let sipp_ids: std::collections::BTreeSet<String> =
        (1..=6).map(|n| format!("{n}-{pid}@127.0.0.1")).collect();
    let (host, port) = c.grpc.rsplit_once(':').unwrap();
    let port: u16 = port.parse().unwrap();
    // Any worker lists the cluster's calls (each from its own replica).
    for w in 0..3 {
        let grpc = format!("{host}:{}", port + w);
        assert!(
            wait_for(std::time::Duration::from_secs(10), || listed(&grpc, &[])
                .into_iter()
                .collect::<std::collections::BTreeSet<_>>()
                == sipp_ids),
            "worker {} lists SIPp's six calls: {:?}",
            w + 1,
            listed(&grpc, &[])
        );
    }
    let grpc = c.grpc.as_str();
    let per: Vec<usize> = (1..=3)
        .map(|id| listed(grpc, &["--worker", &id.to_string()]).len())
        .collect();
    assert_eq!(per.iter().sum::<usize>(), 6, "owners: {per:?}");
    assert_eq!(listed(grpc, &["--user", "bob@"]).len(), 6);
    assert!(listed(grpc, &["--user", "nobody"]).is_empty());
    assert!(listed(grpc, &["--min-age-s", "3600"]).is_empty());
    let table = stdout(&handover(&["calls", "--grpc", grpc]));
    assert!(table.contains("6 calls"), "{table}");
    assert!(
        table.contains(&format!("sip:bob@127.0.0.1:{b}")),
        "the target: {table}"
    );

    // An unknown call: refused, nothing ends.
    let o = handover(&["hangup", "--grpc", grpc, "no-such-call"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no confirmed call"), "{}", stderr(&o));

    // One call ended: gone from the list, five left.
    let first = format!("1-{pid}@127.0.0.1");
    let o = handover(&["hangup", "--grpc", grpc, &first]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        wait_for(std::time::Duration::from_secs(5), || listed(grpc, &[])
            .len()
            == 5),
        "{:?}",
        listed(grpc, &[])
    );
    assert!(!listed(grpc, &[]).contains(&first));
    // The rest, each asked of another worker than the first.
    for n in 2..=6 {
        let at = format!("{host}:{}", port + (n % 3));
        let o = handover(&["hangup", "--grpc", &at, &format!("{n}-{pid}@127.0.0.1")]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    // Every caller got its BYE (its scenario ends on it), every callee too.
    let r = finish_uac(uac, &stat);
    assert_eq!((r.exit, r.successful, r.failed), (Some(0), 6, 0), "{r:?}");
    uas.expect_calls(6);
    let (ahost, aport) = c.worker_admin.rsplit_once(':').unwrap();
    let aport: u16 = aport.parse().unwrap();
    let ended: f64 = (0..3)
        .map(|i| {
            metric(
                &http_get(&format!("http://{ahost}:{}/metrics", aport + i)).1,
                "handover_calls_ended_total{cause=\"operator\"}",
            )
        })
        .sum();
    assert_eq!(ended, 6.0);
    assert!(wait_for(std::time::Duration::from_secs(5), || listed(
        grpc,
        &[]
    )
    .is_empty()));
}
