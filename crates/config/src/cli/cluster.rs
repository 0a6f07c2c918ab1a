//! Replication flags of `handover worker` and their check; the replica
//! itself is `handover_worker::replica`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use handover_worker::peers::{Peer, hostname, id_from_hostname, parse_peer};

/// Replication flags of `handover worker`.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// This worker's id in the cluster (1, 2, …). With --peer, turns
    /// replication on.
    #[arg(long, conflicts_with = "id_from_hostname")]
    pub id: Option<u64>,
    /// Take the id from the host name's trailing `-N` plus one (a
    /// Kubernetes StatefulSet's pod `handover-worker-0` is id 1).
    #[arg(long)]
    pub id_from_hostname: bool,
    /// Every worker of the cluster, this one included, the same list on
    /// each: `ID=GRPC_ADDR,SIP_ADDR` (repeat). Addresses are `IP:PORT` or
    /// `HOST:PORT`; host names are looked up at each connection (gRPC) and
    /// by the edges at each map and every few seconds (SIP), so a pod that
    /// comes back with a new IP is found again.
    #[arg(
        long = "peer",
        value_name = "ID=GRPC,SIP",
        conflicts_with = "peer_template"
    )]
    pub peers: Vec<String>,
    /// The peers by pattern instead of a list, for a StatefulSet whose
    /// pods have the same flags: `GRPC,SIP` with `{ordinal}` (the pod's
    /// ordinal, id - 1) or `{id}`, e.g.
    /// `w-{ordinal}.w:7001,w-{ordinal}.w:5080`. A founder (id 1 to
    /// --founders) names the founders, the cluster's first voters; a
    /// worker beyond them names itself and joins (with --join). Replaces
    /// `[worker.replication] peer_template`.
    #[arg(long, value_name = "GRPC,SIP", requires = "founders")]
    pub peer_template: Option<String>,
    /// With --peer-template: how many workers started the cluster (its
    /// first voters, ids 1 to N). Fixed for the cluster's life: scaling
    /// changes the replica count, not this. Replaces
    /// `[worker.replication] founders`.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub founders: Option<u64>,
    /// The leader removes a voter that has been out of the shard map
    /// (dead or drained) this many seconds from Raft, keeping at least
    /// three voters: a Kubernetes scale-down stops its highest pods for
    /// good and tells no one, and a voter gone for good weighs on the
    /// quorum. A removed worker that comes back joins again (with
    /// --join). 0: only `handover leave` removes (overrides
    /// `[worker.replication] remove_down_after_s`) [default: 0].
    #[arg(long, value_name = "SECONDS")]
    pub remove_down_after_s: Option<u64>,
    /// Address to bind gRPC on [default: this worker's --peer gRPC
    /// address]; `0.0.0.0:PORT` where that address is a name.
    #[arg(long)]
    pub grpc_listen: Option<SocketAddr>,
    /// Join a running cluster through any member's gRPC address (a new
    /// worker: its --peer need name only itself; the cluster's leader adds
    /// it as a learner, then a voter, and the shard map gives it its
    /// share). Without it a worker with no Raft log starts the cluster
    /// with its --peer list as voters. Replaces `[worker.replication] join`.
    #[arg(long, value_name = "GRPC_ADDR", value_parser = join_addr)]
    pub join: Option<String>,
    /// Group commit: call records are proposed in windows of this length,
    /// aligned on the wall clock (multiples of it since the Unix epoch), so
    /// every worker's batch of a window goes in one Raft round; each round
    /// costs every replica a disk sync and wakes three processes. A new
    /// call's 2xx waits for its window (half of it on average) plus the
    /// round. 0 proposes a new call's record at once when no round is in
    /// flight (lowest latency, more CPU: docs/benchmarks.md) [default: 40].
    #[arg(long)]
    pub commit_window_ms: Option<u64>,
    /// Directory for this worker's Raft log [default: ./handover-data].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Mutual TLS on the cluster port: a directory with the cluster CA
    /// (`ca.crt`) and this worker's certificate and key (`tls.crt`,
    /// `tls.key`, naming `member-ID.handover` and `worker.handover`), as
    /// a cert-manager Secret holds them; `{id}` in it is replaced by this
    /// worker's id (overrides `[worker.replication] tls_dir`).
    #[arg(long, value_name = "DIR")]
    pub cluster_tls: Option<PathBuf>,
    /// Below this many MiB free on the Raft log's file system, new calls
    /// and REGISTERs get 503 (room again at twice that), so a filling disk
    /// never stops a replica; 0: never (overrides `[worker.replication]
    /// min_free_mb`) [default: 64].
    #[arg(long, value_name = "MIB")]
    pub min_free_mb: Option<u64>,
    /// The Raft log's entries are kept in memory (for followers that lag)
    /// until they hold this many MiB, or 10,000 entries; then the log is
    /// compacted into a snapshot of the table. Bounds the log's memory
    /// under any load; smaller means more snapshots, each the size of the
    /// whole table (overrides `[worker.replication] raft_log_mb`)
    /// [default: 32].
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub raft_log_mb: Option<u64>,
    /// Serve the cluster port without TLS on an address that is not
    /// loopback (anyone who reaches it can then act as a member).
    #[arg(long)]
    pub cluster_insecure: bool,
}

impl ClusterArgs {
    /// The flags over the file's `[worker.replication]`: a flag given
    /// replaces the key (`--peer`s replace the file's list).
    pub fn over(mut self, f: &crate::Replication) -> Self {
        if self.id.is_none() && !self.id_from_hostname {
            self.id = f.id;
            self.id_from_hostname = f.id_from_hostname;
        }
        if self.peers.is_empty() && self.peer_template.is_none() {
            self.peers = f.peers.clone();
            self.peer_template = f.peer_template.clone();
            self.founders = f.founders;
        }
        self.remove_down_after_s
            .get_or_insert(f.remove_down_after_s);
        if self.join.is_none() {
            self.join = f.join.clone();
        }
        if self.grpc_listen.is_none() {
            self.grpc_listen = f
                .grpc_listen
                .as_deref()
                .map(|a| a.parse().expect("validated by config"));
        }
        self.commit_window_ms.get_or_insert(f.commit_window_ms);
        if self.data.is_none() {
            self.data = Some(PathBuf::from(&f.data));
        }
        if self.cluster_tls.is_none() {
            self.cluster_tls = f.tls_dir.as_ref().map(PathBuf::from);
        }
        self.cluster_insecure |= f.insecure;
        self.min_free_mb.get_or_insert(f.min_free_mb);
        self.raft_log_mb.get_or_insert(f.raft_log_mb);
        self
    }
}

fn join_addr(s: &str) -> Result<String, String> {
    handover_worker::peers::host_port(s)
        .ok_or_else(|| format!("`{s}` is not an IP:PORT or HOST:PORT address"))
}

/// The cluster port's TLS for worker `id` listening on `bind`: required
/// unless `bind` is loopback or `insecure` says otherwise.
pub fn cluster_tls(
    a: &ClusterArgs,
    id: u64,
    bind: Option<std::net::IpAddr>,
) -> anyhow::Result<Option<handover_worker::tls::TlsDir>> {
    match &a.cluster_tls {
        Some(d) => Ok(Some(handover_worker::tls::TlsDir::for_member(d, id))),
        None if a.cluster_insecure || bind.is_some_and(|ip| ip.is_loopback()) => Ok(None),
        None => anyhow::bail!(
            "the cluster port {} is not loopback: give --cluster-tls DIR (the cluster CA and this \
             worker's certificate; `handover up` makes throw-away ones) or, on a network only \
             workers reach, --cluster-insecure",
            bind.map_or_else(|| "(from --peer)".to_string(), |ip| ip.to_string())
        ),
    }
}

/// Validates the flags: `None` when replication is off.
pub fn configured(a: &ClusterArgs) -> anyhow::Result<Option<(u64, Vec<Peer>)>> {
    let id = if a.id_from_hostname {
        Some(id_from_hostname(&hostname()?)?)
    } else {
        a.id
    };
    let from_template;
    let peers = match (&a.peer_template, id) {
        (Some(t), Some(id)) => {
            from_template = template_peers(t, a.founders.unwrap_or(0), id)?;
            &from_template
        }
        (Some(_), None) => anyhow::bail!("--peer-template needs --id or --id-from-hostname"),
        (None, _) => &a.peers,
    };
    match (id, peers.is_empty()) {
        (None, true) => Ok(None),
        (None, false) => anyhow::bail!("--peer needs --id: which of the peers is this worker?"),
        (Some(_), true) => anyhow::bail!(
            "--id needs the cluster's members: give --peer ID=GRPC,SIP for each, this one included"
        ),
        (Some(id), false) => {
            let peers = peers
                .iter()
                .map(|p| parse_peer(p))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut ids: Vec<u64> = peers.iter().map(|p| p.id).collect();
            ids.sort_unstable();
            if ids.windows(2).any(|w| w[0] == w[1]) {
                anyhow::bail!("--peer: an id is given twice");
            }
            if !ids.contains(&id) {
                anyhow::bail!("--id {id} is not among the --peer ids {ids:?}");
            }
            Ok(Some((id, peers)))
        }
    }
}

/// `--peer-template`: worker `id`'s `--peer`s (see the flag).
fn template_peers(template: &str, founders: u64, id: u64) -> anyhow::Result<Vec<String>> {
    if founders == 0 {
        anyhow::bail!("--peer-template needs --founders N (the cluster's first voters)");
    }
    if !template.contains("{ordinal}") && !template.contains("{id}") {
        anyhow::bail!("--peer-template `{template}` names no `{{ordinal}}` or `{{id}}`");
    }
    // A worker beyond the founders names only itself, as a joiner does:
    // the answer to its join names the others.
    let ids: Vec<u64> = if id > founders {
        vec![id]
    } else {
        (1..=founders).collect()
    };
    Ok(ids
        .into_iter()
        .map(|i| {
            let addrs = template
                .replace("{ordinal}", &(i - 1).to_string())
                .replace("{id}", &i.to_string());
            format!("{i}={addrs}")
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(src: &str) -> crate::Replication {
        crate::Config::parse(std::path::Path::new("t.toml"), src)
            .unwrap()
            .worker
            .replication
    }

    fn none() -> ClusterArgs {
        ClusterArgs {
            id: None,
            id_from_hostname: false,
            peers: Vec::new(),
            peer_template: None,
            founders: None,
            remove_down_after_s: None,
            grpc_listen: None,
            join: None,
            commit_window_ms: None,
            data: None,
            cluster_tls: None,
            cluster_insecure: false,
            min_free_mb: None,
            raft_log_mb: None,
        }
    }

    #[test]
    fn the_file_replicates_and_flags_replace_its_keys() {
        let f = file(
            "[worker.replication]\nid = 1\npeers = [\"1=127.0.0.1:7001,127.0.0.1:5081\", \"2=127.0.0.1:7002,127.0.0.1:5082\"]\ncommit_window_ms = 10\n",
        );
        let a = none().over(&f);
        let (id, peers) = configured(&a)
            .unwrap()
            .expect("replicating from the file alone");
        assert_eq!((id, peers.len()), (1, 2));
        assert_eq!(a.commit_window_ms, Some(10));
        assert_eq!(
            a.data.as_deref(),
            Some(std::path::Path::new("handover-data"))
        );
        let a = ClusterArgs {
            id: Some(2),
            commit_window_ms: Some(0),
            ..none()
        }
        .over(&f);
        assert_eq!((a.id, a.commit_window_ms), (Some(2), Some(0)));
        // Without id and peers anywhere: no replication.
        assert!(configured(&none().over(&file(""))).unwrap().is_none());
    }

    #[test]
    fn the_cluster_port_needs_tls_unless_it_is_loopback_or_said_insecure() {
        let lo = Some(std::net::IpAddr::from([127, 0, 0, 1]));
        let any = Some(std::net::IpAddr::from([0, 0, 0, 0]));
        assert_eq!(cluster_tls(&none(), 1, lo).unwrap(), None);
        let e = cluster_tls(&none(), 1, any).unwrap_err().to_string();
        assert!(e.contains("--cluster-tls DIR"), "{e}");
        assert!(
            cluster_tls(&none(), 1, None).is_err(),
            "an unresolved name is not loopback"
        );
        let insecure = ClusterArgs {
            cluster_insecure: true,
            ..none()
        };
        assert_eq!(cluster_tls(&insecure, 1, any).unwrap(), None);
        // The file's keys, `{id}` replaced.
        let f = file("[worker.replication]\ntls_dir = \"/etc/handover-cluster/member-{id}\"\n");
        let d = cluster_tls(&none().over(&f), 2, any).unwrap().unwrap();
        assert_eq!(d.0, std::path::Path::new("/etc/handover-cluster/member-2"));
        let f = file("[worker.replication]\ninsecure = true\n");
        assert_eq!(cluster_tls(&none().over(&f), 1, any).unwrap(), None);
    }

    #[test]
    fn a_template_names_the_founders_and_this_worker() {
        let t = "w-{ordinal}.w:7001,w-{ordinal}.w:5080";
        let a = ClusterArgs {
            id: Some(5),
            peer_template: Some(t.into()),
            founders: Some(3),
            ..none()
        };
        let (id, peers) = configured(&a).unwrap().expect("replicating");
        assert_eq!(id, 5);
        let got: Vec<(u64, &str, &str)> = peers
            .iter()
            .map(|p| (p.id, p.grpc.as_str(), p.sip.as_str()))
            .collect();
        assert_eq!(got, [(5, "w-4.w:7001", "w-4.w:5080")], "a joiner: itself");
        // A founder names the founders.
        let a = ClusterArgs { id: Some(2), ..a };
        let (_, peers) = configured(&a).unwrap().unwrap();
        let got: Vec<(u64, &str)> = peers.iter().map(|p| (p.id, p.sip.as_str())).collect();
        assert_eq!(
            got,
            [(1, "w-0.w:5080"), (2, "w-1.w:5080"), (3, "w-2.w:5080")]
        );
        let e = configured(&ClusterArgs {
            founders: Some(0),
            ..a.clone()
        })
        .unwrap_err();
        assert!(e.to_string().contains("--founders"), "{e}");
        let e = configured(&ClusterArgs {
            peer_template: Some("w:1,w:2".into()),
            ..a
        })
        .unwrap_err();
        assert!(e.to_string().contains("names no"), "{e}");
        let f = file(
            "[worker.replication]\nid = 4\npeer_template = \"w-{ordinal}:7001,w-{ordinal}:5080\"\nfounders = 3\nremove_down_after_s = 300\n",
        );
        let a = none().over(&f);
        assert_eq!(a.remove_down_after_s, Some(300));
        assert_eq!(configured(&a).unwrap().unwrap().1.len(), 1);
    }
}
