//! The cluster's members and their addresses: `ID=GRPC,SIP` peers, host
//! names looked up where they are used (a pod that comes back with a new
//! IP is found again), and ids from a StatefulSet's host names.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;

/// A member of the cluster. Addresses are kept as given (`HOST:PORT` or
/// `IP:PORT`) and looked up where they are used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: u64,
    pub grpc: String,
    pub sip: String,
}

/// Checks `HOST:PORT` or `IP:PORT` (IPv6 in brackets) without looking the
/// host up: a name may not resolve yet when a pod starts.
pub fn host_port(s: &str) -> Option<String> {
    let s = s.trim();
    if s.parse::<SocketAddr>().is_ok() {
        return Some(s.to_owned());
    }
    let (host, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok().filter(|&p| p != 0)?;
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    name_ok.then(|| s.to_owned())
}

/// The first address `HOST:PORT` resolves to (blocking; IPv4 first).
pub fn resolve_now(s: &str) -> std::io::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    let all: Vec<SocketAddr> = s.to_socket_addrs()?.collect();
    all.iter()
        .find(|a| a.is_ipv4())
        .or(all.first())
        .copied()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))
}

/// Like [`resolve_now`], retried for up to `wait` (a Kubernetes Service's
/// or pod's DNS record can lag its start).
pub fn resolve_waiting(s: &str, wait: Duration) -> anyhow::Result<SocketAddr> {
    let step = Duration::from_millis(500);
    let tries = (wait.as_millis() / step.as_millis()).max(1);
    let mut tried = 0;
    loop {
        tried += 1;
        match resolve_now(s) {
            Ok(a) => return Ok(a),
            Err(e) if tried >= tries => {
                anyhow::bail!("cannot resolve {s} (waited {} s): {e}", wait.as_secs())
            }
            Err(_) => std::thread::sleep(step),
        }
    }
}

/// The id of a StatefulSet pod: `NAME-N` is `N + 1` (raft ids start at 1).
pub fn id_from_hostname(host: &str) -> anyhow::Result<u64> {
    let n = host
        .trim()
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse::<u64>().ok())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--id-from-hostname: host name {host:?} does not end in -N (a StatefulSet pod's does)"
            )
        })?;
    Ok(n + 1)
}

pub fn hostname() -> anyhow::Result<String> {
    if let Ok(h) = std::env::var("HOSTNAME")
        && !h.is_empty()
    {
        return Ok(h);
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .context("--id-from-hostname: cannot read the host name")
}

/// Parses `ID=GRPC_ADDR,SIP_ADDR`.
pub fn parse_peer(s: &str) -> anyhow::Result<Peer> {
    let bad = || {
        anyhow::anyhow!(
            "--peer {s:?}: expected ID=GRPC_ADDR,SIP_ADDR (IP:PORT or HOST:PORT), e.g. 1=127.0.0.1:7001,127.0.0.1:5081"
        )
    };
    let (id, rest) = s.split_once('=').ok_or_else(bad)?;
    let (grpc, sip) = rest.split_once(',').ok_or_else(bad)?;
    let id: u64 = id.trim().parse().map_err(|_| bad())?;
    if id == 0 {
        anyhow::bail!("--peer {s:?}: ids start at 1");
    }
    Ok(Peer {
        id,
        grpc: host_port(grpc).ok_or_else(bad)?,
        sip: host_port(sip).ok_or_else(bad)?,
    })
}

/// The SIP address of every other member, looked up now, every 5 s (a
/// pod's name resolves once the pod exists; its address may change when
/// it is replaced) and whenever the members change (a worker joined or
/// left). A name that does not resolve keeps its last address.
pub(crate) fn member_addresses(
    me: u64,
    mut members: tokio::sync::watch::Receiver<Vec<crate::peers::Peer>>,
) -> tokio::sync::watch::Receiver<HashMap<u64, SocketAddr>> {
    let (tx, rx) = tokio::sync::watch::channel(HashMap::new());
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = every.tick() => {}
                changed = members.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
            let peers = members.borrow_and_update().clone();
            let mut found = tx.borrow().clone();
            found.retain(|id, _| peers.iter().any(|p| p.id == *id));
            for p in peers.iter().filter(|p| p.id != me) {
                if let Ok(Ok(addrs)) = tokio::time::timeout(
                    Duration::from_secs(2),
                    tokio::net::lookup_host(p.sip.as_str()),
                )
                .await
                {
                    // IPv4 first, as the edge's look-ups do.
                    let all: Vec<SocketAddr> = addrs.collect();
                    if let Some(a) = all.iter().find(|a| a.is_ipv4()).or(all.first()) {
                        found.insert(p.id, *a);
                    }
                }
            }
            tx.send_if_modified(|m| std::mem::replace(m, found.clone()) != found);
            if tx.is_closed() {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_ip_port_or_host_port() {
        for ok in [
            "127.0.0.1:7001",
            "[::1]:7001",
            "localhost:7001",
            "handover-worker-0.handover-worker:7001",
            "handover-worker-0.handover-worker.voice.svc.cluster.local:5080",
        ] {
            assert_eq!(host_port(ok).as_deref(), Some(ok), "{ok}");
        }
        for bad in [
            "",
            "7001",
            "localhost",
            "localhost:0",
            "localhost:70000",
            ":7001",
            "-bad.example:7001",
            "a..b:7001",
            "under_score:7001",
            "::1:7001",
        ] {
            assert_eq!(host_port(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn statefulset_ordinals_are_ids_from_one() {
        assert_eq!(id_from_hostname("handover-worker-0").unwrap(), 1);
        assert_eq!(id_from_hostname("handover-worker-12\n").unwrap(), 13);
        let e = id_from_hostname("worker").unwrap_err().to_string();
        assert!(e.contains("does not end in -N"), "{e}");
        assert!(id_from_hostname("handover-worker-x").is_err());
    }

    #[test]
    fn peers_take_names_and_say_what_is_wrong() {
        let p = parse_peer(
            "2=handover-worker-1.handover-worker:7001,handover-worker-1.handover-worker:5080",
        )
        .unwrap();
        assert_eq!(p.id, 2);
        assert_eq!(p.grpc, "handover-worker-1.handover-worker:7001");
        assert_eq!(p.sip, "handover-worker-1.handover-worker:5080");
        let e = parse_peer("1=localhost:7001").unwrap_err().to_string();
        assert!(e.contains("expected ID=GRPC_ADDR,SIP_ADDR"), "{e}");
        let e = parse_peer("0=localhost:7001,localhost:5080")
            .unwrap_err()
            .to_string();
        assert!(e.contains("ids start at 1"), "{e}");
        assert!(parse_peer("1=localhost:7001,local host:5080").is_err());
    }

    #[test]
    fn names_resolve_ipv4_first() {
        let a = resolve_now("localhost:5080").unwrap();
        assert_eq!(a, "127.0.0.1:5080".parse::<SocketAddr>().unwrap());
        let e = resolve_waiting("no-such-host.invalid:5080", Duration::from_millis(600))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot resolve no-such-host.invalid:5080"),
            "{e}"
        );
    }
}
