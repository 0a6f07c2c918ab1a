//! Call detail records (issue 20, docs/records.md): SIPp's answered, busy
//! and cancelled calls and the generator's blind transfers through three
//! workers, each written exactly once, by one worker, with what SIPp saw;
//! and again with the worker that owns a third of the calls killed
//! mid-run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::load::load;
use crate::support::*;

/// Every record the workers of `data` wrote (`worker-N/records.jsonl*`).
fn records(data: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for w in 1..=3 {
        let dir = data.join(format!("worker-{w}"));
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.filter_map(Result::ok) {
            if !e.file_name().to_string_lossy().starts_with("records.jsonl") {
                continue;
            }
            for l in std::fs::read_to_string(e.path()).unwrap().lines() {
                out.push(serde_json::from_str(l).expect("a record is one JSON line"));
            }
        }
    }
    out
}

fn s<'a>(r: &'a serde_json::Value, k: &str) -> &'a str {
    r[k].as_str().unwrap_or_default()
}

/// The calls `records` hold by leg A's Call-ID, each checked to have one
/// record (one per id: a record written again by a new owner after its
/// writer died between writing it and committing that it had, flagged
/// `retry`, is the one duplicate the format allows, and only with
/// `retry_allowed`); the number of such second copies.
fn by_call(
    records: &[serde_json::Value],
    retry_allowed: bool,
) -> (BTreeMap<String, serde_json::Value>, usize) {
    let mut ids: BTreeMap<&str, Vec<&serde_json::Value>> = BTreeMap::new();
    for r in records {
        ids.entry(s(r, "id")).or_default().push(r);
    }
    let mut again = 0;
    for copies in ids.values().filter(|v| v.len() > 1) {
        let retried = copies.iter().filter(|r| r["retry"] == true).count();
        let writers: BTreeSet<u64> = copies.iter().filter_map(|r| r["writer"].as_u64()).collect();
        assert!(
            retry_allowed && copies.len() == 2 && retried == 1 && writers.len() == 2,
            "a record id written twice, not as a new owner's flagged retry: {copies:#?}"
        );
        let mut a = copies[0].clone();
        let mut b = copies[1].clone();
        for k in ["retry", "writer"] {
            a[k] = serde_json::Value::Null;
            b[k] = serde_json::Value::Null;
        }
        assert_eq!(a, b, "a retried record says what the first said");
        again += 1;
    }
    let mut by = BTreeMap::new();
    for (_, copies) in ids {
        let r = copies[0];
        let prev = by.insert(s(r, "a_call_id").to_string(), r.clone());
        assert!(prev.is_none(), "one record per call: {r}");
    }
    (by, again)
}

struct Run {
    dir: tempfile::TempDir,
    data: tempfile::TempDir,
    c: Cluster,
    /// SIPp callers: (scenario, user, calls, pause ms).
    flows: Vec<(&'static str, &'static str, u32, u32)>,
    lp: u16,
}

fn start(flows: Vec<(&'static str, &'static str, u32, u32)>) -> (Run, Vec<Uas>) {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let (talk, busy, ring, lp) = (
        free_udp_port(),
        free_udp_port(),
        free_udp_port(),
        free_udp_port(),
    );
    let uas = vec![
        sipp_uas_with(dir.path(), "uas.xml", talk),
        sipp_uas_with(dir.path(), "uas_busy.xml", busy),
        sipp_uas_with(dir.path(), "uas_ring.xml", ring),
    ];
    let data_s = data.path().to_str().unwrap().to_string();
    let c = cluster(
        &[
            format!("talk=127.0.0.1:{talk}"),
            format!("busy=127.0.0.1:{busy}"),
            format!("ring=127.0.0.1:{ring}"),
            // The generator answers as every transfer's callee.
            format!("*=127.0.0.1:{lp}"),
        ],
        &["--workers", "3", "--records", "--data", &data_s],
    );
    wait_members(&c.grpc, 3);
    wait_all_shards_served(&c.grpc, 3);
    (
        Run {
            dir,
            data,
            c,
            flows,
            lp,
        },
        uas,
    )
}

/// The workers' summed counter `name`.
fn summed(c: &Cluster, name: &str) -> f64 {
    let (host, port) = c.worker_admin.rsplit_once(':').unwrap();
    let port: u16 = port.parse().unwrap();
    (0..3)
        .map(|i| {
            http_try(&format!("http://{host}:{}/metrics", port + i))
                .map_or(0.0, |(_, text)| metric(&text, name))
        })
        .sum()
}

#[test]
fn every_call_answered_busy_cancelled_or_transferred_has_one_record_as_sipp_saw_it() {
    let _g = serial();
    let flows = vec![
        ("uac_strict.xml", "talk", 300, 1000),
        ("uac_busy.xml", "busy", 200, 0),
        ("uac_cancel.xml", "ring", 200, 0),
    ];
    let (run, mut uas) = start(flows);
    let edge: std::net::SocketAddr = format!("127.0.0.1:{}", run.c.sip).parse().unwrap();
    let uacs: Vec<_> = run
        .flows
        .iter()
        .map(|&(f, user, calls, pause)| {
            let (p, stat) = sipp_uac_with(run.dir.path(), f, user, edge, 25, calls, pause);
            let pid = p.0.id();
            (f, user, calls, pid, p, stat)
        })
        .collect();
    // 300 blind transfers from the generator beside them: each is a call
    // from the transferor and a call from the transferee to the target.
    let (target, listen) = (
        format!("127.0.0.1:{}", run.c.sip),
        format!("127.0.0.1:{}", run.lp),
    );
    let (code, r) = load(&[
        "--target",
        &target,
        "--listen",
        &listen,
        "--rate",
        "20",
        "--calls",
        "150",
        "--hold-ms",
        "500",
        "--mix",
        "blind=1",
    ]);
    assert_eq!(code, Some(0), "{r:#}");
    let mut pids = BTreeMap::new();
    for (f, user, calls, pid, p, stat) in uacs {
        let r = finish_uac(p, &stat);
        assert_eq!(
            (r.exit, r.successful, r.failed),
            (Some(0), u64::from(calls), 0),
            "{f}: {r:?}"
        );
        pids.insert(user, (pid, calls));
    }
    for (u, n) in uas.iter_mut().zip([300, 200, 200]) {
        u.expect_calls(n);
    }
    let started = summed(&run.c, "handover_calls_started_total");
    assert!(
        wait_for(
            std::time::Duration::from_secs(10),
            || records(run.data.path()).len() as f64 >= started
        ),
        "every started call's record is written: {} of {started}",
        records(run.data.path()).len()
    );
    let all = records(run.data.path());
    assert_eq!(
        all.len() as f64,
        started,
        "one record per call the workers started"
    );
    println!("{} records", all.len());
    let (by, _) = by_call(&all, false);
    let mut writers = BTreeSet::new();
    let mut durations = Vec::new();
    for (user, (pid, calls)) in &pids {
        for n in 1..=*calls {
            let id = format!("{n}-{pid}@127.0.0.1");
            let r = by
                .get(&id)
                .unwrap_or_else(|| panic!("{user}: no record of {id}"));
            writers.insert(r["writer"].as_u64().unwrap());
            assert_eq!(s(r, "transport"), "UDP");
            assert!(s(r, "from").starts_with("sip:uac@127.0.0.1"), "{r}");
            assert!(s(r, "to").starts_with(&format!("sip:{user}@")), "{r}");
            assert!(!s(r, "b_call_id").is_empty() && s(r, "b_call_id") != id);
            assert!(r["started_ms"].as_u64().unwrap() > 1_700_000_000_000);
            assert!(!r["retry"].as_bool().unwrap());
            match *user {
                "talk" => {
                    assert_eq!(
                        (s(r, "cause"), r["status"].as_u64()),
                        ("caller", Some(200)),
                        "{r}"
                    );
                    durations.push(r["duration_ms"].as_u64().unwrap());
                }
                "busy" => {
                    assert_eq!(
                        (s(r, "cause"), r["status"].as_u64()),
                        ("rejected", Some(486)),
                        "{r}"
                    );
                    assert!(
                        r["answered_ms"].is_null() && r["duration_ms"].is_null(),
                        "{r}"
                    );
                }
                _ => {
                    assert_eq!(
                        (s(r, "cause"), r["status"].as_u64()),
                        ("cancelled", Some(487)),
                        "{r}"
                    );
                    assert!(r["ringing_ms"].as_u64().is_some(), "it rang: {r}");
                }
            }
        }
    }
    // SIPp paused 1,000 ms between its ACK and its BYE. A call is
    // answered when B's 2xx reaches its worker, and A has the 2xx once the
    // record is committed (the group-commit window, 40 ms, and the round,
    // up to a p99 of ~50 ms on this machine): the duration counts that
    // wait, so the bound above is a few windows, not a clock's precision.
    durations.sort_unstable();
    let (lo, hi) = (durations[0], durations[durations.len() - 1]);
    println!("durations of 1,000 ms calls: {lo}..{hi} ms");
    assert!(
        lo >= 1000 - 50 && hi <= 1000 + 200,
        "durations {lo}..{hi} ms"
    );
    let transferred = all
        .iter()
        .filter(|r| {
            r["transfers"].as_array().is_some_and(|t| {
                t.iter()
                    .any(|t| t["kind"] == "blind" && t["result"] == "succeeded")
            })
        })
        .count();
    assert_eq!(
        transferred, 150,
        "each transferor's call lists its transfer"
    );
    assert_eq!(
        writers.len(),
        3,
        "every worker wrote the records of its shards"
    );
    assert_eq!(
        summed(&run.c, "handover_records_written_total{retry=\"true\"}"),
        0.0
    );
}

#[test]
fn a_killed_worker_loses_no_record_and_none_is_written_twice() {
    let _g = serial();
    let flows = vec![
        ("uac_strict.xml", "talk", 400, 2000),
        ("uac_busy.xml", "busy", 200, 0),
    ];
    let (run, mut uas) = start(flows);
    let edge: std::net::SocketAddr = format!("127.0.0.1:{}", run.c.sip).parse().unwrap();
    // A call the dead worker was still setting up is lost with it (calls
    // are replicated once answered): its caller gives up after 20 s.
    let uacs: Vec<_> = run
        .flows
        .iter()
        .map(|&(f, user, calls, pause)| {
            let (p, stat) = sipp_uac_on(
                run.dir.path(),
                "127.0.0.1",
                f,
                user,
                edge,
                (40, calls, pause),
                &["-recv_timeout", "20000"],
            );
            (user, calls, p.0.id(), p, stat)
        })
        .collect();
    // Mid-run, worker 2 (a third of the shards) dies.
    std::thread::sleep(std::time::Duration::from_secs(5));
    let before = records(run.data.path()).len();
    let victim = worker_pid(run.c.worker + 1);
    signal(victim, "KILL");
    assert!(wait_for(std::time::Duration::from_secs(5), || exited(
        victim
    )));
    let mut flows = Vec::new();
    for (user, calls, pid, p, stat) in uacs {
        let r = finish_uac_unchecked(p, &stat);
        println!("{user}: {r:?}");
        assert_eq!(r.successful + r.failed, u64::from(calls), "{user}: {r:?}");
        let ids: BTreeSet<String> = (1..=calls)
            .map(|n| format!("{n}-{pid}@127.0.0.1"))
            .collect();
        flows.push((user, ids, r));
    }
    for u in &mut uas {
        u.checked_by_test("a worker is killed under them: the records say what each call did");
    }
    // What the callers that failed saw.
    for e in std::fs::read_dir(run.dir.path())
        .unwrap()
        .filter_map(Result::ok)
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("uac-") && name.ends_with(".err") {
            for l in error_lines(&e.path()) {
                println!("{name}: {l}");
            }
        }
    }
    assert!(before > 0, "records were written before the kill");
    // Every call SIPp completed has its record, the calls that ended just
    // before the kill and those the dead worker held included.
    let missing = |all: &[serde_json::Value]| -> Vec<(&str, usize, u64)> {
        let have: BTreeSet<&str> = all.iter().map(|r| s(r, "a_call_id")).collect();
        flows
            .iter()
            .map(|(user, ids, r)| {
                let m = ids.iter().filter(|id| !have.contains(id.as_str())).count();
                (*user, m, r.failed)
            })
            .collect()
    };
    let complete = || {
        missing(&records(run.data.path()))
            .iter()
            .all(|&(_, m, failed)| m as u64 <= failed)
    };
    assert!(
        wait_for(std::time::Duration::from_secs(20), complete),
        "a record of every call SIPp completed: (flow, records missing, calls SIPp failed) {:?}; missing {:?}",
        missing(&records(run.data.path())),
        {
            let all = records(run.data.path());
            let have: BTreeSet<&str> = all.iter().map(|r| s(r, "a_call_id")).collect();
            flows
                .iter()
                .flat_map(|(_, ids, _)| {
                    ids.iter()
                        .filter(|id| !have.contains(id.as_str()))
                        .cloned()
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        }
    );
    let all = records(run.data.path());
    let (_, again) = by_call(&all, true);
    let from_victim = all
        .iter()
        .filter(|r| {
            r["workers"]
                .as_array()
                .is_some_and(|w| w.contains(&2.into()))
        })
        .count();
    let retried = all.iter().filter(|r| r["retry"] == true).count();
    println!(
        "{} records, {before} before the kill, {from_victim} of calls worker 2 held, {retried} written by a new owner, {again} of them written by worker 2 too",
        all.len()
    );
    assert!(from_victim > 0);
}

/// The call log (issue 20, item 4): with `RUST_LOG=…,handover_worker::call=debug`
/// and `--log-format json`, every call SIPp made through three workers
/// has one "call ended" line whose fields carry its Call-ID, as SIPp
/// knows it, with the cause and status SIPp saw; records are off (the
/// log needs none), and every line of the cluster's log is JSON.
#[test]
fn the_call_log_has_one_json_line_per_call_with_its_call_id() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (talk, busy) = (free_udp_port(), free_udp_port());
    let mut uas_talk = sipp_uas(dir.path(), talk);
    let mut uas_busy = sipp_uas_with(dir.path(), "uas_busy.xml", busy);
    let log = dir.path().join("cluster.log");
    let c = cluster_logged(
        &[
            format!("talk=127.0.0.1:{talk}"),
            format!("busy=127.0.0.1:{busy}"),
        ],
        &["--workers", "3", "--log-format", "json"],
        Some(("info,handover_worker::call=debug", &log)),
    );
    wait_members(&c.grpc, 3);
    wait_all_shards_served(&c.grpc, 3);
    let edge: std::net::SocketAddr = format!("127.0.0.1:{}", c.sip).parse().unwrap();
    let mut expected = BTreeMap::new();
    for (scenario, user, n, cause, status) in [
        ("uac_strict.xml", "talk", 20, "caller", 200),
        ("uac_busy.xml", "busy", 10, "rejected", 486),
    ] {
        let (uac, stat) = sipp_uac_with(dir.path(), scenario, user, edge, 20, n, 200);
        let pid = uac.0.id();
        let r = finish_uac(uac, &stat);
        assert_eq!(r.successful, u64::from(n), "{scenario}");
        for i in 1..=n {
            expected.insert(format!("{i}-{pid}@127.0.0.1"), (cause, status));
        }
    }
    uas_talk.expect_calls(20);
    uas_busy.expect_calls(10);
    let mut seen: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    assert!(
        wait_for(std::time::Duration::from_secs(5), || {
            seen.clear();
            for l in std::fs::read_to_string(&log).unwrap().lines() {
                // `up`'s own lines to its terminal are not JSON; every
                // process's log line is.
                if l.starts_with("handover up:") || !l.starts_with('{') {
                    continue;
                }
                let v: serde_json::Value = serde_json::from_str(l).expect("a JSON log line");
                if v["target"] == "handover_worker::call" {
                    let id = v["fields"]["call_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    seen.entry(id).or_default().push(v);
                }
            }
            seen.len() >= expected.len()
        }),
        "a call-ended line for each of SIPp's {} calls: {} seen",
        expected.len(),
        seen.len()
    );
    assert_eq!(
        seen.keys().collect::<BTreeSet<_>>(),
        expected.keys().collect::<BTreeSet<_>>(),
        "the call log names exactly SIPp's Call-IDs"
    );
    for (id, (cause, status)) in &expected {
        let lines = &seen[id];
        assert_eq!(lines.len(), 1, "one line for {id}: {lines:#?}");
        let f = &lines[0]["fields"];
        assert_eq!(f["message"], "call ended", "{f}");
        assert_eq!(f["cause"], *cause, "{id}: {f}");
        assert_eq!(f["status"], *status, "{id}: {f}");
        assert!(
            f["b_call_id"]
                .as_str()
                .is_some_and(|b| !b.is_empty() && b != id),
            "leg B's own Call-ID: {f}"
        );
        if *status == 200 {
            assert!(f["duration_ms"].as_u64().unwrap() >= 200, "{f}");
        }
    }
}
