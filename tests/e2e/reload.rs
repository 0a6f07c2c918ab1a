//! Routes changed without a restart (issue 20): `handover reload` and
//! SIGHUP read a worker's `--config` again, check it, and every worker of
//! `up --workers 3` routes new calls by it through the replicated log;
//! calls in progress keep their callee; a broken file changes nothing; a
//! worker that starts again with a changed file brings every worker to it.

use crate::support::*;

/// A `[worker]` section routing every call to `port`.
fn routes_to(port: u16) -> String {
    format!("[[worker.routes]]\ntargets = [\"127.0.0.1:{port}\"]\n")
}

/// `handover_config_generation` of each of the three workers.
fn generations(admin: &str) -> Vec<f64> {
    let (host, port) = admin.rsplit_once(':').unwrap();
    let port: u16 = port.parse().unwrap();
    (0..3)
        .map(|i| summed(host, port, &[i], "handover_config_generation"))
        .collect()
}

/// Waits (5 s at most) until all three workers apply generation `g`.
fn wait_generation(admin: &str, g: f64) {
    assert!(
        wait_for(std::time::Duration::from_secs(5), || generations(admin)
            == [g; 3]),
        "every worker applies generation {g}: {:?}",
        generations(admin)
    );
}

/// `n` SIPp calls (strict caller, user `b`) through `edge`, each of which
/// must succeed; the calls each worker started meanwhile.
fn calls(dir: &std::path::Path, edge: std::net::SocketAddr, admin: &str, n: u32) -> Vec<f64> {
    let before = started(admin);
    let (uac, stat) = sipp_uac_with(dir, "uac_strict.xml", "b", edge, 30, n, 0);
    let r = finish_uac(uac, &stat);
    assert_eq!((r.successful, r.failed), (u64::from(n), 0));
    started(admin)
        .iter()
        .zip(&before)
        .map(|(x, y)| x - y)
        .collect()
}

/// Calls each worker started so far.
fn started(admin: &str) -> Vec<f64> {
    let (host, port) = admin.rsplit_once(':').unwrap();
    let port: u16 = port.parse().unwrap();
    (0..3)
        .map(|i| summed(host, port, &[i], "handover_calls_started_total"))
        .collect()
}

#[test]
fn a_reload_moves_new_calls_on_every_worker_and_a_broken_file_changes_nothing() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (free_udp_port(), free_udp_port());
    let mut uas_a = sipp_uas(dir.path(), a);
    let mut uas_b = sipp_uas(dir.path(), b);
    let file = dir.path().join("handover.toml");
    std::fs::write(&file, routes_to(a)).unwrap();
    let c = cluster(&[], &["--workers", "3", "--config", file.to_str().unwrap()]);
    wait_members(&c.grpc, 3);
    wait_all_shards_served(&c.grpc, 3);
    assert_eq!(generations(&c.worker_admin), [0.0; 3]);
    let edge: std::net::SocketAddr = format!("127.0.0.1:{}", c.sip).parse().unwrap();

    // 15 calls to A, held 6 s: in progress across the reload.
    let (held, held_stat) = sipp_uac_with(dir.path(), "uac_strict.xml", "b", edge, 30, 15, 6_000);
    assert!(
        wait_for(std::time::Duration::from_secs(10), || read_sipp_stats(
            &held_stat
        )
        .2 == 15
            && uas_a.counts() == (0, 0)),
        "15 calls up at A: {:?}",
        read_sipp_stats(&held_stat)
    );

    // Reloaded through worker 1: every worker routes to B.
    std::fs::write(&file, routes_to(b)).unwrap();
    let o = handover(&["reload", "--grpc", &c.grpc]);
    assert!(o.status.success(), "reload: {}", stderr(&o));
    assert!(
        stdout(&o).contains("generation 1: 1 routes"),
        "{}",
        stdout(&o)
    );
    wait_generation(&c.worker_admin, 1.0);
    let per = calls(dir.path(), edge, &c.worker_admin, 60);
    assert!(
        per.iter().all(|&n| n > 0.0) && per.iter().sum::<f64>() == 60.0,
        "the new calls went through every worker: {per:?}"
    );
    // The held calls ended with their callee A, untouched by the reload.
    let r = finish_uac(held, &held_stat);
    assert_eq!((r.successful, r.failed), (15, 0));

    // A broken file: refused with its line, nothing changes.
    std::fs::write(
        &file,
        format!(
            "{}[[worker.routes]]\nuser = \"carol\"\ntargets = [\"nowhere\"]\n",
            routes_to(a)
        ),
    )
    .unwrap();
    let o = handover(&["reload", "--grpc", &c.grpc]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("handover.toml:5:") && err.contains("worker.routes.targets"),
        "the file's line: {err}"
    );
    // SIGHUP to worker 2 with the same file: refused there, counted.
    signal(worker_pid(c.worker + 1), "HUP");
    let (host, port) = c.worker_admin.rsplit_once(':').unwrap();
    let admin_port: u16 = port.parse().unwrap();
    assert!(
        wait_for(std::time::Duration::from_secs(5), || summed(
            host,
            admin_port,
            &[1],
            "handover_config_reloads_total{result=\"refused\"}"
        ) == 1.0),
        "worker 2 refused the file it was signalled to read"
    );
    assert_eq!(generations(&c.worker_admin), [1.0; 3]);
    calls(dir.path(), edge, &c.worker_admin, 20);

    // Fixed, and a SIGHUP to worker 3: every worker routes to A again.
    std::fs::write(&file, routes_to(a)).unwrap();
    signal(worker_pid(c.worker + 2), "HUP");
    wait_generation(&c.worker_admin, 2.0);
    let status = stdout(&handover(&["status", "--grpc", &c.grpc]));
    assert!(status.contains("generation 2"), "{status}");
    calls(dir.path(), edge, &c.worker_admin, 30);

    // Worker 3 stopped (SIGTERM: it drains) and started again as it was,
    // its file now naming B (a changed ConfigMap rolled out): it finds the
    // log's generation 2 differs from its file and proposes the file, so
    // every worker routes alike, by the file last read, to B.
    std::fs::write(&file, routes_to(b)).unwrap();
    let pid = worker_pid(c.worker + 2);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    signal(pid, "TERM");
    assert!(
        wait_for(std::time::Duration::from_secs(30), || exited(pid)),
        "worker 3 stops after its drain"
    );
    let _again = Proc(
        std::process::Command::new(&args[0])
            .args(&args[1..])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let grpc3 = {
        let (h, p) = c.grpc.rsplit_once(':').unwrap();
        format!("{h}:{}", p.parse::<u16>().unwrap() + 2)
    };
    assert!(
        wait_for(std::time::Duration::from_secs(30), || {
            let o = admin_cmd("status", &grpc3, &["--json"]);
            serde_json::from_slice::<serde_json::Value>(&o.stdout)
                .ok()
                .and_then(|v| v["serving_shards"].as_u64())
                .is_some_and(|n| n > 0)
        }),
        "the restarted worker 3 serves shards again"
    );
    wait_all_shards_served(&c.grpc, 3);
    wait_generation(&c.worker_admin, 3.0);
    let per = calls(dir.path(), edge, &c.worker_admin, 60);
    assert!(
        per[2] > 0.0,
        "the restarted worker carried some of the calls: {per:?}"
    );

    // A saw the 15 held calls and the 30 after the SIGHUP; B the 60 after
    // the first reload, the 20 after the refused one and the last 60.
    uas_a.expect_calls(45);
    uas_b.expect_calls(140);
}

#[test]
fn sighup_reloads_a_worker_without_replication() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (free_udp_port(), free_udp_port());
    let mut uas_a = sipp_uas(dir.path(), a);
    let mut uas_b = sipp_uas(dir.path(), b);
    let file = dir.path().join("handover.toml");
    std::fs::write(&file, routes_to(a)).unwrap();
    let c = cluster(&[], &["--config", file.to_str().unwrap()]);
    let edge: std::net::SocketAddr = format!("127.0.0.1:{}", c.sip).parse().unwrap();
    let (host, port) = c.worker_admin.rsplit_once(':').unwrap();
    let admin_port: u16 = port.parse().unwrap();
    let generation = || summed(host, admin_port, &[0], "handover_config_generation");
    let (uac, stat) = sipp_uac_with(dir.path(), "uac_strict.xml", "b", edge, 30, 10, 0);
    assert_eq!(finish_uac(uac, &stat).successful, 10);

    // A file that does not check: refused, still A.
    std::fs::write(&file, "[[worker.routes]]\ntargets = []\n").unwrap();
    signal(worker_pid(c.worker), "HUP");
    assert!(wait_for(std::time::Duration::from_secs(5), || summed(
        host,
        admin_port,
        &[0],
        "handover_config_reloads_total{result=\"refused\"}"
    ) == 1.0));
    assert_eq!(generation(), 0.0);
    let (uac, stat) = sipp_uac_with(dir.path(), "uac_strict.xml", "b", edge, 30, 10, 0);
    assert_eq!(finish_uac(uac, &stat).successful, 10);

    std::fs::write(&file, routes_to(b)).unwrap();
    signal(worker_pid(c.worker), "HUP");
    assert!(
        wait_for(std::time::Duration::from_secs(5), || generation() == 1.0),
        "the worker applies its own generation 1"
    );
    let (uac, stat) = sipp_uac_with(dir.path(), "uac_strict.xml", "b", edge, 30, 10, 0);
    assert_eq!(finish_uac(uac, &stat).successful, 10);
    uas_a.expect_calls(20);
    uas_b.expect_calls(10);
}
