//! The cluster as Kubernetes runs it (deploy/k8s): workers started on their
//! own, each finding its Raft id in its host name (a StatefulSet pod's
//! `handover-worker-N`) and its peers and edge by DNS name; an edge given
//! only the workers' gRPC names (no `--backend`: their SIP addresses come
//! with the shard map); and an edge that gets SIGTERM failing /readyz at
//! once while it still forwards calls, then exiting. And the deployment
//! files themselves pass their checks (`deploy/check`).

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

/// The ports of a cluster started by [`by_name`]: worker i's gRPC, SIP
/// and admin ports are the first + i.
#[derive(Clone, Copy)]
struct Ports {
    grpc: u16,
    sip: u16,
    admin: u16,
    edge: u16,
    uas: u16,
}

/// Starts worker `i` (0-based) of three as a StatefulSet pod would be.
/// The cluster's hashing key in these tests (the manifests' ConfigMap
/// sets one; a cluster refuses to start without).
pub(crate) const TEST_KEY: &str = "5b1c0e7f3a9d42c68e0f1a2b3c4d5e6f";

fn pod(i: u16, p: Ports, data: &std::path::Path, extra: &[&str]) -> Proc {
    let Ports {
        grpc,
        sip,
        admin,
        edge,
        uas,
    } = p;
    let peers: Vec<String> = (0..3)
        .map(|k| {
            format!(
                "--peer={}=localhost:{},localhost:{}",
                k + 1,
                grpc + k,
                sip + k
            )
        })
        .collect();
    let child = Command::new(env!("CARGO_BIN_EXE_handover"))
        .env("HOSTNAME", format!("handover-worker-{i}"))
        .args(["worker", "--id-from-hostname", "--hash-key", TEST_KEY])
        .args(&peers)
        .arg(format!("--grpc-listen=127.0.0.1:{}", grpc + i))
        .arg(format!("--listen=127.0.0.1:{}", sip + i))
        .arg(format!("--admin=127.0.0.1:{}", admin + i))
        .arg(format!("--edge=localhost:{edge}"))
        .arg(format!("--route=*=127.0.0.1:{uas}"))
        .arg(format!("--data={}", data.display()))
        .arg(format!(
            "--cluster-tls={}/cluster-tls/member-{{id}}",
            data.display()
        ))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("handover worker starts");
    Proc(child)
}

/// Three workers and an edge started as the Kubernetes manifests start
/// them (see [`pod`]), routing every call to `uas`.
pub(crate) struct ByName {
    pub(crate) _workers: Vec<Proc>,
    pub(crate) edge: Proc,
    pub(crate) edge_sip: std::net::SocketAddr,
    pub(crate) edge_admin: String,
    /// Worker i's gRPC, admin and SIP ports are these + i.
    pub(crate) grpc: u16,
    pub(crate) admin: u16,
    pub(crate) sip: u16,
}

impl Drop for ByName {
    fn drop(&mut self) {
        forget_creds(self.grpc..self.grpc.saturating_add(3));
    }
}

pub(crate) fn by_name(dir: &std::path::Path, uas: u16, worker_extra: &[&str]) -> ByName {
    by_name_with(dir, uas, worker_extra, &[])
}

/// [`by_name`] with more arguments for its edge.
pub(crate) fn by_name_with(
    dir: &std::path::Path,
    uas: u16,
    worker_extra: &[&str],
    edge_extra: &[&str],
) -> ByName {
    let (grpc, admin) = (free_tcp_ports(3), free_tcp_ports(3));
    // Three consecutive UDP ports below the ephemeral range (free as TCP
    // ports a moment ago; the test says which one clashed if one did).
    let sip = free_tcp_ports(3);
    let edge_port = free_udp_port();
    // The cluster port runs mutual TLS as the manifests set it up: a
    // directory per member, chosen by `{id}`, and the edges' own.
    let creds = dir.join("cluster-tls");
    handover_worker::tls::throwaway(&creds, 3).unwrap();
    for i in 0..3u16 {
        register_creds(grpc + i, creds.join(format!("member-{}", i + 1)));
    }
    let workers: Vec<Proc> = (0..3)
        .map(|i| {
            let p = Ports {
                grpc,
                sip,
                admin,
                edge: edge_port,
                uas,
            };
            pod(i, p, dir, worker_extra)
        })
        .collect();
    let edge_listen = format!("127.0.0.1:{edge_port}");
    let (edge, edge_admin) = start_edge(
        dir,
        &by_name_clusters(grpc),
        &["--listen", &edge_listen],
        edge_extra,
    );
    wait_members(&format!("127.0.0.1:{grpc}"), 3);
    assert!(
        wait_for(Duration::from_secs(15), || {
            (0..3).all(|i| http_get(&format!("http://127.0.0.1:{}/readyz", admin + i)).0 == 200)
                && http_get(&format!("{edge_admin}/readyz")).0 == 200
        }),
        "workers and edge ready within 15 s"
    );
    ByName {
        _workers: workers,
        edge,
        edge_sip: edge_listen.parse().unwrap(),
        edge_admin,
        grpc,
        admin,
        sip,
    }
}

/// The `--cluster`s of [`by_name`]'s workers, by name.
pub(crate) fn by_name_clusters(grpc: u16) -> Vec<String> {
    (0..3).map(|k| format!("localhost:{}", grpc + k)).collect()
}

/// An edge in front of the workers at `clusters` (gRPC addresses), with
/// its cluster credentials from `dir`; its admin URL once it printed it.
pub(crate) fn start_edge(
    dir: &std::path::Path,
    clusters: &[String],
    listen: &[&str],
    extra: &[&str],
) -> (Proc, String) {
    let edge_creds = dir
        .join("cluster-tls")
        .join("edge")
        .to_string_lossy()
        .into_owned();
    let mut edge_args = vec![
        "--drain-s",
        "4",
        "--probe-interval-ms",
        "0",
        "--hash-key",
        TEST_KEY,
        "--cluster-tls",
        &edge_creds,
    ];
    for c in clusters {
        edge_args.extend(["--cluster", c.as_str()]);
    }
    let child = Command::new(env!("CARGO_BIN_EXE_handover"))
        .args(["edge", "--admin", "127.0.0.1:0"])
        .args(listen)
        .args(&edge_args)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("handover edge starts");
    let mut edge = Proc(child);
    let edge_admin = {
        use std::io::BufRead;
        let out = edge.0.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(out).lines();
        let url = loop {
            let line = lines.next().expect("edge prints its addresses").unwrap();
            if let Some(rest) = line.strip_prefix("metrics: ") {
                break rest.trim_end_matches("/metrics").to_string();
            }
        };
        // Keep reading: the edge prints more (its drain among them).
        std::thread::spawn(move || lines.for_each(drop));
        url
    };
    (edge, edge_admin)
}

#[test]
fn workers_found_by_name_carry_calls_and_an_edge_drains_on_sigterm() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let uas = free_udp_port();
    let mut callee = sipp_uas(dir.path(), uas);
    let mut c = by_name(dir.path(), uas, &[]);
    let (grpc, admin, sip, admin_url) = (c.grpc, c.admin, c.sip, c.edge_admin.clone());
    let edge = &mut c.edge;
    // Every worker took the id its host name gives and all three are in
    // the map; every worker ready, the edge ready.
    wait_members(&format!("127.0.0.1:{grpc}"), 3);
    for i in 0..3u16 {
        let o = admin_cmd("status", &format!("127.0.0.1:{}", grpc + i), &["--json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("status --json");
        assert_eq!(
            v["id"],
            u64::from(i) + 1,
            "handover-worker-{i} is raft id {}",
            i + 1
        );
    }
    // The edge learned the workers' SIP addresses from the map by name.
    let text = http_get(&format!("{admin_url}/metrics")).1;
    for k in 0..3 {
        let series = format!("address=\"127.0.0.1:{}\"", sip + k);
        assert!(
            text.lines()
                .any(|l| l.starts_with("handover_edge_backend_info") && l.contains(&series)),
            "the edge routes to worker {} at 127.0.0.1:{} (resolved from localhost):\n{}",
            k + 1,
            sip + k,
            text.lines()
                .filter(|l| l.starts_with("handover_edge_backend"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let target = c.edge_sip;
    let (uac, stat) = sipp_uac(dir.path(), target, 20, 40, 200);
    let r = finish_uac(uac, &stat);
    assert_eq!(
        (r.exit, r.successful, r.failed),
        (Some(0), 40, 0),
        "40 calls through workers found by name: {r:?}"
    );
    let per: Vec<f64> = (0..3)
        .map(|i| {
            let t = http_get(&format!("http://127.0.0.1:{}/metrics", admin + i)).1;
            metric(&t, "handover_calls_answered_total")
        })
        .collect();
    assert_eq!(per.iter().sum::<f64>(), 40.0, "answered per worker {per:?}");
    callee.expect_calls(40);
    assert!(
        per.iter().filter(|n| **n > 0.0).count() >= 2,
        "calls spread over the workers by shard: {per:?}"
    );

    // SIGTERM: not ready at once, still forwarding, gone after the drain.
    let t0 = tokio::time::Instant::now();
    signal(edge.0.id(), "TERM");
    assert!(
        wait_for(Duration::from_secs(1), || http_get(&format!(
            "{admin_url}/readyz"
        ))
        .0 == 503),
        "/readyz fails within 1 s of SIGTERM"
    );
    let (uac, stat) = sipp_uac(dir.path(), target, 20, 10, 0);
    let r = finish_uac(uac, &stat);
    assert_eq!(
        (r.exit, r.successful, r.failed),
        (Some(0), 10, 0),
        "calls placed while the edge drains still go through: {r:?}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "those calls ran inside the drain (took {:?}); the test needs a longer --drain-s",
        t0.elapsed()
    );
    assert!(
        wait_for(Duration::from_secs(8), || edge
            .0
            .try_wait()
            .ok()
            .flatten()
            .is_some()),
        "the edge exits after its drain"
    );
    let gone = t0.elapsed();
    assert!(
        gone >= Duration::from_secs(4),
        "the edge kept serving for --drain-s 4 (exited after {gone:?})"
    );
    eprintln!(
        "kube: 3 workers by name (ids from host names), 40/40 calls ({per:?} per worker); edge not ready on SIGTERM, 10/10 calls during drain, exited after {:.1} s",
        gone.as_secs_f64()
    );
}

#[test]
fn deployment_files_pass_their_checks() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let o = Command::new(root.join("deploy/check"))
        .env("HANDOVER", env!("CARGO_BIN_EXE_handover"))
        .current_dir(&root)
        .output()
        .expect("deploy/check runs");
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "deploy/check failed:\n{out}\n{err}");
    for line in [
        "rendered deploy/k8s/overlays/small",
        "kubernetes-validate: deploy/k8s/overlays/small",
        "checkov kubernetes: deploy/k8s/overlays/small",
        "peers: deploy/k8s/overlays/small: 3 workers",
        "check-config: deploy/k8s/overlays/small/handover.toml",
        "hadolint: Dockerfile",
        "checkov dockerfile: Dockerfile",
        "promtool: deploy/prometheus/scrape.yml",
    ] {
        assert!(out.contains(line), "deploy/check says `{line}`:\n{out}");
    }
}
