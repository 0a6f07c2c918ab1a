//! Scale at run time (issue 21): a worker joins a running `up --workers 3`
//! through `handover worker --join` while calls are held, takes about a
//! quarter of the shards and carries new calls, then leaves again by
//! `handover leave`; no call fails on the way. Two more join, one leaves,
//! one is killed and removed, then comes back. And workers started with
//! the Kubernetes manifests' flags (no peer list) scale up and down as
//! `kubectl scale` would.

use crate::support::*;

/// `handover status --json` of the worker at `grpc`.
fn status(grpc: &str) -> serde_json::Value {
    serde_json::from_slice(&admin_cmd("status", grpc, &["--json"]).stdout).unwrap_or_default()
}

fn ids(v: &serde_json::Value) -> Vec<u64> {
    v.as_array()
        .map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect())
        .unwrap_or_default()
}

/// The gRPC address `k` ports after `grpc` (worker k + 1's).
fn nth(grpc: &str, k: u16) -> String {
    let (h, p) = grpc.rsplit_once(':').unwrap();
    format!("{h}:{}", p.parse::<u16>().unwrap() + k)
}

/// A joining worker's command line, from worker 3's (`args`): id `id`,
/// its own SIP, admin and gRPC ports, data and credentials, only itself as
/// `--peer`, and `--join` through `via`.
fn joiner(args: &[String], id: u16, (sip, admin, grpc): (u16, u16, u16), via: &str) -> Vec<String> {
    let sip = format!("127.0.0.1:{sip}");
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut next = || it.next().unwrap().clone();
        match a.as_str() {
            "--listen" => {
                next();
                out.extend([a.clone(), sip.clone()]);
            }
            "--admin" => {
                next();
                out.extend([a.clone(), format!("127.0.0.1:{admin}")]);
            }
            "--id" => {
                next();
                out.extend([a.clone(), id.to_string()]);
            }
            "--peer" => {
                next();
            }
            "--data" => {
                let d = next().replace("worker-3", &format!("worker-{id}"));
                out.extend([a.clone(), d]);
            }
            "--cluster-tls" => {
                let d = next().replace("member-3", &format!("member-{id}"));
                out.extend([a.clone(), d]);
            }
            _ => out.push(a.clone()),
        }
    }
    out.extend([
        "--peer".into(),
        format!("{id}=127.0.0.1:{grpc},{sip}"),
        "--join".into(),
        via.to_string(),
    ]);
    out
}

/// Worker 3's command line and the cluster's data directory.
fn worker3_args(c: &Cluster) -> (Vec<String>, std::path::PathBuf) {
    worker_args(c, 3)
}

/// Worker `id`'s command line (of the three `up` starts) and the
/// cluster's data directory.
fn worker_args(c: &Cluster, id: u16) -> (Vec<String>, std::path::PathBuf) {
    let pid = worker_pid(c.worker + id - 1);
    let args: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let data =
        std::path::PathBuf::from(&args[args.iter().position(|a| a == "--data").unwrap() + 1]);
    let data = data.parent().unwrap().to_path_buf();
    (args, data)
}

/// Starts a joining worker; `handover status` on it uses the cluster's
/// admin credentials.
fn start_joiner(
    args: &[String],
    data: &std::path::Path,
    id: u16,
    ports: (u16, u16, u16),
    via: &str,
) -> Proc {
    register_creds(ports.2, data.join("cluster-tls").join("admin"));
    Proc(
        std::process::Command::new(&args[0])
            .args(&joiner(args, id, ports, via)[1..])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn a_worker_joins_a_loaded_cluster_takes_its_share_and_leaves_again() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let callee = free_udp_port();
    let mut uas = sipp_uas(dir.path(), callee);
    let file = dir.path().join("handover.toml");
    std::fs::write(
        &file,
        format!("[[worker.routes]]\ntargets = [\"127.0.0.1:{callee}\"]\n"),
    )
    .unwrap();
    let c = cluster(&[], &["--workers", "3", "--config", file.to_str().unwrap()]);
    wait_members(&c.grpc, 3);
    wait_all_shards_served(&c.grpc, 3);
    let edge: std::net::SocketAddr = format!("127.0.0.1:{}", c.sip).parse().unwrap();
    let owned = |n: u16| -> Vec<u64> {
        (0..n)
            .map(|k| {
                status(&nth(&c.grpc, k))["owned_shards"]
                    .as_u64()
                    .unwrap_or(0)
            })
            .collect()
    };
    let before = owned(3);
    assert_eq!(before.iter().sum::<u64>(), 4096, "{before:?}");

    // 20 calls held 8 s: up across the join.
    let (held, held_stat) = sipp_uac_with(dir.path(), "uac_strict.xml", "b", edge, 20, 20, 8_000);
    assert!(
        wait_for(std::time::Duration::from_secs(10), || read_sipp_stats(
            &held_stat
        )
        .2 == 20),
        "20 calls up: {:?}",
        read_sipp_stats(&held_stat)
    );

    // Worker 4 starts with --join (worker 3's command line otherwise).
    let (args, data) = worker3_args(&c);
    let (ah, ap) = c.worker_admin.rsplit_once(':').unwrap();
    let admin4 = ap.parse::<u16>().unwrap() + 3;
    let g4: u16 = nth(&c.grpc, 3).rsplit_once(':').unwrap().1.parse().unwrap();
    let t0 = tokio::time::Instant::now();
    let w4 = start_joiner(&args, &data, 4, (c.worker + 3, admin4, g4), &c.grpc);
    let mut last = serde_json::Value::Null;
    assert!(
        wait_for(std::time::Duration::from_secs(30), || {
            last = status(&c.grpc);
            ids(&last["voters"]) == [1, 2, 3, 4] && ids(&last["members_up"]).len() == 4
        }),
        "worker 4 a voter and in the map within 30 s: {last}"
    );
    wait_all_shards_served(&c.grpc, 4);
    eprintln!(
        "join: worker 4 started, joined and serves its shards {:.1} s after its start",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(ids(&status(&nth(&c.grpc, 3))["voters"]), [1, 2, 3, 4]);
    let after = owned(4);
    eprintln!(
        "join: worker 4 took {} of 4096 shards; owned before {before:?}, after {after:?}",
        after[3]
    );
    assert_eq!(after.iter().sum::<u64>(), 4096, "{after:?}");
    assert!(
        (900..=1150).contains(&after[3]),
        "about a quarter: {after:?}"
    );
    for k in 0..3 {
        assert!(
            after[k] < before[k] && after[k] + after[3] >= before[k],
            "only shards for the new worker moved, some from each: {before:?} -> {after:?}"
        );
    }

    // New calls: every one answered, some through worker 4.
    let (uac, stat) = sipp_uac_with(dir.path(), "uac_strict.xml", "b", edge, 30, 80, 0);
    let r = finish_uac(uac, &stat);
    assert_eq!((r.successful, r.failed), (80, 0), "{r:?}");
    let by4 = summed(ah, admin4, &[0], "handover_calls_started_total");
    assert!(by4 > 0.0, "worker 4 carried some of the new calls");
    let r = finish_uac(held, &held_stat);
    assert_eq!(
        (r.successful, r.failed),
        (20, 0),
        "the held calls ended normally: {r:?}"
    );

    // Worker 4 leaves: drained, removed, stopped; calls go on.
    let o = admin_cmd("leave", &c.grpc, &["4"]);
    assert!(o.status.success(), "leave: {}", stderr(&o));
    assert!(
        stdout(&o).contains("voters now [1, 2, 3]"),
        "{}",
        stdout(&o)
    );
    let pid4 = w4.0.id();
    assert!(
        wait_for(std::time::Duration::from_secs(30), || exited(pid4)),
        "worker 4 stops once drained"
    );
    wait_all_shards_served(&c.grpc, 3);
    let s = status(&c.grpc);
    assert_eq!(ids(&s["voters"]), [1, 2, 3], "{s}");
    assert_eq!(ids(&s["members_up"]), [1, 2, 3], "{s}");
    assert_eq!(owned(3).iter().sum::<u64>(), 4096);
    let (uac, stat) = sipp_uac_with(dir.path(), "uac_strict.xml", "b", edge, 30, 60, 0);
    let r = finish_uac(uac, &stat);
    assert_eq!((r.successful, r.failed), (60, 0), "{r:?}");
    uas.expect_calls(160);
}

/// Shards each worker (by gRPC address) owns, as it says itself.
fn owned_by(addrs: &[String]) -> Vec<u64> {
    addrs
        .iter()
        .map(|a| status(a)["owned_shards"].as_u64().unwrap_or(0))
        .collect()
}

/// The run: three workers carrying calls that re-INVITE (hold,
/// resume) and hang up after the changes; a fourth and a fifth join, one
/// of the original three leaves, another is SIGKILLed. Every call
/// completes on both sides, each join moves about 1/N of the shards, and
/// every live member ends with the same configuration and map. The
/// killed worker, out of the map for `remove_down_after_s`, is removed
/// from Raft by the leader, as a Kubernetes scale-down's pod would be;
/// started again from its disk with `--join`, as a StatefulSet pod comes
/// back, it joins again and takes its share.
#[test]
fn two_join_one_leaves_one_is_killed_and_no_call_fails() {
    const HELD: u32 = 40;
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (held_port, plain_port) = (free_udp_port(), free_udp_port());
    let mut uas_held = sipp_uas_with(dir.path(), "uas_held.xml", held_port);
    let mut uas = sipp_uas(dir.path(), plain_port);
    let conf = dir.path().join("handover.toml");
    std::fs::write(&conf, "[worker.replication]\nremove_down_after_s = 4\n").unwrap();
    let c = cluster(
        &[
            format!("held=127.0.0.1:{held_port}"),
            format!("b=127.0.0.1:{plain_port}"),
        ],
        &["--workers", "3", "--config", conf.to_str().unwrap()],
    );
    wait_members(&c.grpc, 3);
    wait_all_shards_served(&c.grpc, 3);
    let edge: std::net::SocketAddr = format!("127.0.0.1:{}", c.sip).parse().unwrap();
    // Held 12 s after the answer, then hold, resume and BYE: through the
    // owners the calls' shards have by then.
    let (held, held_stat) = sipp_uac_with(
        dir.path(),
        "uac_hold_later.xml",
        "held",
        edge,
        40,
        HELD,
        12_000,
    );
    assert!(
        wait_for(std::time::Duration::from_secs(10), || read_sipp_stats(
            &held_stat
        )
        .2 == u64::from(HELD)),
        "{HELD} calls up: {:?}",
        read_sipp_stats(&held_stat)
    );
    let (args, data) = worker3_args(&c);
    let mut addrs: Vec<String> = (0..3).map(|k| nth(&c.grpc, k)).collect();
    let mut moves = Vec::new();
    let mut joiners = Vec::new();
    for id in [4u16, 5] {
        // Worker 4 on the cluster's spare ports, worker 5 on fresh ones.
        let ports = if id == 4 {
            let (_, ap) = c.worker_admin.rsplit_once(':').unwrap();
            let g: u16 = nth(&c.grpc, 3).rsplit_once(':').unwrap().1.parse().unwrap();
            (c.worker + 3, ap.parse::<u16>().unwrap() + 3, g)
        } else {
            (free_udp_port(), free_tcp_port(), free_tcp_port())
        };
        let before = owned_by(&addrs);
        joiners.push(start_joiner(&args, &data, id, ports, &c.grpc));
        addrs.push(format!("127.0.0.1:{}", ports.2));
        let mut last = serde_json::Value::Null;
        assert!(
            wait_for(std::time::Duration::from_secs(30), || {
                last = status(&c.grpc);
                ids(&last["members_up"]).len() == addrs.len()
                    && owned_by(&addrs).iter().sum::<u64>() == 4096
                    && addrs.iter().all(|a| {
                        status(a)["serving_shards"].as_u64() == status(a)["owned_shards"].as_u64()
                    })
            }),
            "worker {id} in the map and every shard served: {last}"
        );
        let after = owned_by(&addrs);
        let moved: u64 = before
            .iter()
            .zip(&after)
            .map(|(b, a)| b.saturating_sub(*a))
            .sum();
        eprintln!(
            "join of worker {id}: {moved} of 4096 shards moved ({:.3} of them; 1/N = {:.3}); owned {before:?} -> {after:?}",
            moved as f64 / 4096.0,
            1.0 / addrs.len() as f64
        );
        assert_eq!(moved, *after.last().unwrap(), "only to the new worker");
        moves.push(moved);
    }
    assert_eq!(ids(&status(&c.grpc)["voters"]), [1, 2, 3, 4, 5]);
    // Worker 3 leaves; worker 2 is SIGKILLed.
    let pid3 = worker_pid(c.worker + 2);
    let o = admin_cmd("leave", &c.grpc, &["3"]);
    assert!(o.status.success(), "leave: {}", stderr(&o));
    assert!(
        wait_for(std::time::Duration::from_secs(30), || exited(pid3)),
        "worker 3 stops once drained"
    );
    addrs.retain(|a| *a != nth(&c.grpc, 2));
    let (args2, _) = worker_args(&c, 2);
    assert!(sigkill_worker(c.worker + 1), "worker 2 killed");
    addrs.retain(|a| *a != nth(&c.grpc, 1));
    let mut last = serde_json::Value::Null;
    assert!(
        wait_for(std::time::Duration::from_secs(30), || {
            last = status(&c.grpc);
            ids(&last["members_up"]) == [1, 4, 5] && owned_by(&addrs).iter().sum::<u64>() == 4096
        }),
        "the dead worker's shards spread over 1, 4 and 5: {last}"
    );
    // Out of the map for 4 s: the leader removes it from Raft.
    assert!(
        wait_for(std::time::Duration::from_secs(30), || {
            addrs.iter().all(|a| {
                last = status(a);
                ids(&last["voters"]) == [1, 4, 5]
            })
        }),
        "worker 2 removed from Raft on every member: {last}"
    );
    // Back from its disk (its log still names it a voter), with --join:
    // it asks again and takes its share.
    let back = Proc(
        std::process::Command::new(&args2[0])
            .args(&args2[1..])
            .args(["--join", &c.grpc])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    addrs.insert(1, nth(&c.grpc, 1));
    assert!(
        wait_for(std::time::Duration::from_secs(40), || {
            last = status(&c.grpc);
            ids(&last["members_up"]) == [1, 2, 4, 5]
                && owned_by(&addrs).iter().sum::<u64>() == 4096
                && addrs.iter().all(|a| {
                    status(a)["serving_shards"].as_u64() == status(a)["owned_shards"].as_u64()
                })
        }),
        "worker 2 joined again and serves its share: {last}"
    );
    // One configuration and one map on every live member.
    let views: Vec<serde_json::Value> = addrs.iter().map(|a| status(a)).collect();
    for v in &views {
        assert_eq!(ids(&v["voters"]), [1, 2, 4, 5], "{v}");
        assert_eq!(v["epoch"], views[0]["epoch"], "{v}");
        assert_eq!(ids(&v["members_up"]), [1, 2, 4, 5], "{v}");
    }
    // Every held call re-INVITEd twice and hung up cleanly, both sides.
    let r = finish_uac(held, &held_stat);
    assert_eq!((r.successful, r.failed), (u64::from(HELD), 0), "{r:?}");
    uas_held.expect_calls(u64::from(HELD));
    let (uac, stat) = sipp_uac_with(dir.path(), "uac_strict.xml", "b", edge, 30, 60, 0);
    let r = finish_uac(uac, &stat);
    assert_eq!((r.successful, r.failed), (60, 0), "{r:?}");
    uas.expect_calls(60);
    eprintln!("shard moves per join: {moves:?}");
    drop(joiners);
    drop(back);
}

/// Ports of a StatefulSet's pods: each on its own loopback address
/// (pod `i` on 127.0.0.(i+1)), all on the same ports, as pods are.
#[derive(Clone, Copy)]
struct PodPorts {
    grpc: u16,
    sip: u16,
    admin: u16,
    edge: u16,
    uas: u16,
}

/// Worker pod `i` (`handover-worker-i`, Raft id i+1) with
/// deploy/k8s/base/worker.yaml's flags: no peer list (`--founders 3`,
/// `--peer-template`), `--join` through the others (pod 0's address here:
/// the headless Service's name lists every pod), and a voter out of the
/// map for 3 s removed (the manifests say 300).
fn sts_pod(i: u16, p: PodPorts, data: &std::path::Path) -> Proc {
    let ip = format!("127.0.0.{}", i + 1);
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_handover"))
        .env("HOSTNAME", format!("handover-worker-{i}"))
        .args([
            "worker",
            "--id-from-hostname",
            "--hash-key",
            crate::kube::TEST_KEY,
        ])
        .arg("--founders=3")
        .arg(format!(
            "--peer-template=127.0.0.{{id}}:{},127.0.0.{{id}}:{}",
            p.grpc, p.sip
        ))
        .arg(format!("--join=127.0.0.1:{}", p.grpc))
        .arg("--remove-down-after-s=3")
        .arg(format!("--grpc-listen={ip}:{}", p.grpc))
        .arg(format!("--listen={ip}:{}", p.sip))
        .arg(format!("--admin={ip}:{}", p.admin))
        .arg(format!("--edge=127.0.0.1:{}", p.edge))
        .arg(format!("--route=*=127.0.0.1:{}", p.uas))
        .arg(format!("--data={}", data.display()))
        .arg(format!(
            "--cluster-tls={}/cluster-tls/member-{{id}}",
            data.display()
        ))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("handover worker starts");
    Proc(child)
}

/// Waits until every pod of `pods` (ordinals) says `voters` and the map
/// has them all up, every shard owned and served.
fn settled(grpc: u16, pods: &[u16], voters: &[u64], why: &str) {
    let addrs: Vec<String> = pods
        .iter()
        .map(|i| format!("127.0.0.{}:{grpc}", i + 1))
        .collect();
    let up: Vec<u64> = pods.iter().map(|&i| u64::from(i) + 1).collect();
    let mut last = serde_json::Value::Null;
    assert!(
        wait_for(std::time::Duration::from_secs(40), || {
            addrs.iter().all(|a| {
                last = status(a);
                ids(&last["voters"]) == voters
                    && ids(&last["members_up"]) == up
                    && last["serving_shards"].as_u64() == last["owned_shards"].as_u64()
            }) && owned_by(&addrs).iter().sum::<u64>() == 4096
        }),
        "{why}: voters {voters:?}, members up {up:?}, every shard served: {last}"
    );
}

/// `kubectl scale` without Kubernetes: three pods with the manifests'
/// flags (no peer list) carry calls; a fourth pod joins and takes its
/// share; scaled down (SIGTERM), it drains, exits and the leader removes
/// it from Raft; scaled up again from its retained volume, it joins
/// again. Every call on the way completes.
#[test]
fn a_statefulset_scales_up_and_down_with_the_manifests_flags() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let uas = free_udp_port();
    let mut callee = sipp_uas(dir.path(), uas);
    let p = PodPorts {
        grpc: free_tcp_port(),
        sip: free_udp_port(),
        admin: free_tcp_port(),
        edge: free_udp_port(),
        uas,
    };
    let creds = dir.path().join("cluster-tls");
    handover_worker::tls::throwaway(&creds, 4).unwrap();
    register_creds(p.grpc, creds.join("admin"));
    let mut pods: Vec<Proc> = (0..3).map(|i| sts_pod(i, p, dir.path())).collect();
    let edge_listen = format!("127.0.0.1:{}", p.edge);
    let (_edge, _) = crate::kube::start_edge(
        dir.path(),
        &[format!("127.0.0.1:{}", p.grpc)],
        &["--listen", &edge_listen],
        &[],
    );
    let edge: std::net::SocketAddr = edge_listen.parse().unwrap();
    settled(p.grpc, &[0, 1, 2], &[1, 2, 3], "three founders");
    let calls = |n: u64| {
        let (uac, stat) = sipp_uac(dir.path(), edge, 20, n as u32, 200);
        let r = finish_uac(uac, &stat);
        assert_eq!((r.successful, r.failed), (n, 0), "{r:?}");
    };
    calls(30);
    // Scale to 4: pod 3 joins.
    let t0 = tokio::time::Instant::now();
    pods.push(sts_pod(3, p, dir.path()));
    let pod3 = format!("127.0.0.4:{}", p.grpc);
    assert!(
        wait_for(std::time::Duration::from_secs(40), || {
            status(&pod3)["serving_shards"]
                .as_u64()
                .is_some_and(|n| n > 0)
        }),
        "pod 3 serves shards"
    );
    let took = t0.elapsed();
    settled(p.grpc, &[0, 1, 2, 3], &[1, 2, 3, 4], "scaled to 4");
    let share = status(&pod3)["owned_shards"].as_u64().unwrap();
    eprintln!(
        "scale to 4: start to first served shard {:.1} s; pod 3 owns {share} of 4096 shards",
        took.as_secs_f64()
    );
    assert!((900..=1150).contains(&share), "about a quarter: {share}");
    let answered = |i: u16| {
        let t = http_get(&format!("http://127.0.0.{}:{}/metrics", i + 1, p.admin)).1;
        metric(&t, "handover_calls_answered_total")
    };
    calls(40);
    assert!(answered(3) > 0.0, "pod 3 carries calls");
    // Scale to 3: SIGTERM drains pod 3, which exits; the leader removes it.
    let pid = pods[3].0.id();
    signal(pid, "TERM");
    assert!(
        wait_for(std::time::Duration::from_secs(30), || exited(pid)),
        "pod 3 exits after its drain"
    );
    settled(
        p.grpc,
        &[0, 1, 2],
        &[1, 2, 3],
        "scaled back to 3, pod 3 removed",
    );
    calls(30);
    // Scale to 4 again: pod 3 from its retained volume joins again.
    pods[3] = sts_pod(3, p, dir.path());
    settled(p.grpc, &[0, 1, 2, 3], &[1, 2, 3, 4], "scaled to 4 again");
    calls(30);
    callee.expect_calls(130);
    forget_creds(p.grpc..p.grpc + 1);
}

/// `handover scale --grpc ADDR --workers N` on the `handover up` whose
/// first worker has gRPC at `grpc`.
fn scale_up_to(grpc: &str, n: u16) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_handover"))
        .args(["scale", "--grpc", grpc, "--workers", &n.to_string()])
        .output()
        .expect("handover scale runs")
}

/// `handover scale` on a running `up`: a fourth worker starts, joins and
/// carries calls; scaled back to three it leaves (drained, removed from
/// Raft); beyond the spare credentials it is refused with the limit.
#[test]
fn handover_scale_adds_and_removes_workers_of_up() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let uas_port = free_udp_port();
    let mut uas = sipp_uas(dir.path(), uas_port);
    let c = cluster(&[format!("*=127.0.0.1:{uas_port}")], &["--workers", "3"]);
    wait_members(&c.grpc, 3);
    wait_all_shards_served(&c.grpc, 3);
    let edge: std::net::SocketAddr = format!("127.0.0.1:{}", c.sip).parse().unwrap();
    let o = scale_up_to(&c.grpc, 4);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "scale to 4: {out}{}", stderr(&o));
    assert!(out.contains("worker 4 starts and joins"), "{out}");
    let addrs: Vec<String> = (0..4).map(|k| nth(&c.grpc, k)).collect();
    let mut last = serde_json::Value::Null;
    assert!(
        wait_for(std::time::Duration::from_secs(40), || {
            last = status(&c.grpc);
            ids(&last["voters"]) == [1, 2, 3, 4]
                && ids(&last["members_up"]) == [1, 2, 3, 4]
                && owned_by(&addrs).iter().sum::<u64>() == 4096
        }),
        "worker 4 joined and owns its share: {last}"
    );
    let (uac, stat) = sipp_uac(dir.path(), edge, 20, 40, 200);
    let r = finish_uac(uac, &stat);
    assert_eq!((r.successful, r.failed), (40, 0), "{r:?}");
    let o = scale_up_to(&c.grpc, 9);
    assert!(!o.status.success(), "nine is beyond the spare credentials");
    assert!(stderr(&o).contains("--workers 7 at most"), "{}", stderr(&o));
    let o = scale_up_to(&c.grpc, 3);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "scale to 3: {out}{}", stderr(&o));
    assert!(out.contains("worker 4 leaves"), "{out}");
    assert!(
        wait_for(std::time::Duration::from_secs(40), || {
            last = status(&c.grpc);
            ids(&last["voters"]) == [1, 2, 3] && ids(&last["members_up"]) == [1, 2, 3]
        }),
        "worker 4 removed: {last}"
    );
    let (uac, stat) = sipp_uac(dir.path(), edge, 20, 30, 200);
    let r = finish_uac(uac, &stat);
    assert_eq!((r.successful, r.failed), (30, 0), "{r:?}");
    uas.expect_calls(70);
}

/// Blind and attended transfers (and held calls with re-INVITEs) placed
/// by `handover load` while a fourth and a fifth worker join (`handover
/// scale`) and an original worker leaves (`handover leave 3`), transfers carried out
/// by the B2BUA: every call succeeds at both ends, the workers hand the
/// transfers in progress between them (docs/architecture.md, "Membership
/// at run time").
#[test]
fn local_transfers_go_on_while_workers_join_and_leave() {
    transfers_through_two_joins_and_a_leave("local");
}

/// The same, transfers relayed between the phones (REFER and NOTIFY).
#[test]
fn relayed_transfers_go_on_while_workers_join_and_leave() {
    transfers_through_two_joins_and_a_leave("passthrough");
}

fn transfers_through_two_joins_and_a_leave(mode: &str) {
    let _g = serial();
    let lp = free_udp_port();
    let c = cluster(
        &[format!("*=127.0.0.1:{lp}")],
        &["--workers", "3", "--transfer-mode", mode],
    );
    wait_members(&c.grpc, 3);
    wait_all_shards_served(&c.grpc, 3);
    let (target, listen) = (format!("127.0.0.1:{}", c.sip), format!("127.0.0.1:{lp}"));
    // About 25 s of calls: 20/s, each held 2 s.
    let load = std::thread::spawn(move || {
        crate::load::load(&[
            "--target",
            &target,
            "--listen",
            &listen,
            "--rate",
            "20",
            "--calls",
            "500",
            "--hold-ms",
            "2000",
            "--mix",
            "blind=2,attended=2,hold=1",
        ])
    });
    std::thread::sleep(std::time::Duration::from_secs(4));
    for n in [4u16, 5] {
        let o = scale_up_to(&c.grpc, n);
        assert!(o.status.success(), "scale to {n}: {}", stderr(&o));
        let addrs: Vec<String> = (0..n).map(|k| nth(&c.grpc, k)).collect();
        let mut last = serde_json::Value::Null;
        assert!(
            wait_for(std::time::Duration::from_secs(30), || {
                last = status(&c.grpc);
                ids(&last["members_up"]) == (1..=u64::from(n)).collect::<Vec<u64>>()
                    && owned_by(&addrs).iter().sum::<u64>() == 4096
            }),
            "worker {n} joined under load: {last}"
        );
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
    let o = admin_cmd("leave", &c.grpc, &["3"]);
    assert!(o.status.success(), "leave 3: {}", stderr(&o));
    let (code, r) = load.join().unwrap();
    let count = |k: &str| r["counts"][k].as_u64().unwrap_or(u64::MAX);
    eprintln!(
        "{mode} transfers across two joins and a leave: {} succeeded, {} failed, {} callee legs failed, {} retransmissions, set-up p50 {} ms, p99 {} ms, max {} ms",
        count("succeeded"),
        count("failed"),
        count("callee_legs_failed"),
        count("retransmissions"),
        r["setup_latency"]["p50_ms"],
        r["setup_latency"]["p99_ms"],
        r["setup_latency"]["max_ms"]
    );
    assert_eq!(code, Some(0), "{r:#}");
    assert_eq!(
        (
            count("succeeded"),
            count("failed"),
            count("callee_legs_failed")
        ),
        (500, 0, 0),
        "{r:#}"
    );
    assert_eq!(ids(&status(&c.grpc)["voters"]), [1, 2, 4, 5]);
}
