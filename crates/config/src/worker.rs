//! The `[worker]` section checked: routes, limits, trusted peers,
//! replication and registrar, each error naming its key and line.

use super::*;

/// A `ConfigError` at a span, for a key, saying why (`Config::parse`'s).
pub(super) type Err<'a> =
    &'a dyn Fn(Option<Range<usize>>, Option<&'static str>, String) -> ConfigError;
/// An address key checked (`Config::parse`'s): the value or its default.
pub(super) type Addr<'a> =
    &'a dyn Fn(&Option<Spanned<String>>, &'static str, &str) -> Result<String, ConfigError>;

/// The effective `[worker]` of the file's section `w`.
pub(super) fn worker(
    w: &WorkerSection,
    err: Err<'_>,
    addr: Addr<'_>,
) -> Result<Worker, ConfigError> {
    let mut routes = Vec::new();
    let mut check = handover_call::Routes::default();
    for (i, r) in w.routes.iter().enumerate() {
        let key = "worker.routes.targets";
        let m = match (&r.user, &r.prefix, &r.domain) {
            (None, None, None) => "*".to_string(),
            (Some(u), None, None) => u.clone(),
            (None, Some(p), None) => format!("{p}*"),
            (None, None, Some(d)) => format!("@{d}"),
            _ => {
                return Err(err(
                    Some(r.targets.span()),
                    Some("worker.routes"),
                    format!("route {} sets more than one of user, prefix, domain", i + 1),
                ));
            }
        };
        let mut spec = format!("{m}={}", r.targets.get_ref().join(","));
        if let Some(t) = &r.transfer {
            t.get_ref()
                .parse::<handover_call::TransferMode>()
                .map_err(|e| err(Some(t.span()), Some("worker.routes.transfer"), e))?;
            spec += &format!(";transfer={}", t.get_ref());
        }
        if let Some(t) = &r.transport {
            spec += &format!(";transport={}", t.get_ref());
        }
        if let Some(n) = &r.tls_name {
            spec += &format!(";tls_name={}", n.get_ref());
        }
        if let Some(n) = &r.tcp_above {
            spec += &format!(";tcp_above={}", n.get_ref());
        }
        check.add(&spec).map_err(|e| {
            err(
                Some(r.targets.span()),
                Some(key),
                format!("route {}: {e}", i + 1),
            )
        })?;
        routes.push(spec);
    }
    let t1_ms = w.t1_ms.as_ref().map_or(500, |v| *v.get_ref());
    if !(1..=4000).contains(&t1_ms) {
        return Err(err(
            w.t1_ms.as_ref().map(Spanned::span),
            Some("worker.t1_ms"),
            format!("{t1_ms} is out of range: 1..=4000 ms (T2 is 4 s)"),
        ));
    }
    let transfer_mode = match &w.transfer_mode {
        None => handover_call::TransferMode::default(),
        Some(t) => t
            .get_ref()
            .parse()
            .map_err(|e| err(Some(t.span()), Some("worker.transfer_mode"), e))?,
    };
    let ring_timeout_s = w.ring_timeout_s.as_ref().map_or(120, |s| *s.get_ref());
    if !(1..=3600).contains(&ring_timeout_s) {
        return Err(err(
            w.ring_timeout_s.as_ref().map(Spanned::span),
            Some("worker.ring_timeout_s"),
            format!("{ring_timeout_s} is out of range: 1..=3600 seconds"),
        ));
    }
    let bundle_bytes = w.bundle_bytes.as_ref().map_or(8_192, |s| *s.get_ref());
    if bundle_bytes != 0 && !(1_200..=65_507).contains(&bundle_bytes) {
        return Err(err(
            w.bundle_bytes.as_ref().map(Spanned::span),
            Some("worker.bundle_bytes"),
            format!("{bundle_bytes} is out of range: 0 (off) or 1200..=65507 bytes"),
        ));
    }
    let max_calls = w.max_calls.as_ref().map_or(100_000, |v| *v.get_ref());
    if max_calls == 0 {
        return Err(err(
            w.max_calls.as_ref().map(Spanned::span),
            Some("worker.max_calls"),
            "must be at least 1".to_string(),
        ));
    }
    let mut trusted = Vec::new();
    if let Some(t) = &w.trusted {
        for v in t.get_ref() {
            v.parse::<handover_call::trust::Cidr>()
                .map_err(|e| err(Some(t.span()), Some("worker.trusted"), e.to_string()))?;
            trusted.push(v.clone());
        }
    }
    let mut identity_headers = Vec::new();
    if let Some(h) = &w.identity_headers {
        for v in h.get_ref() {
            handover_call::trust::check_header_name(v)
                .map_err(|e| err(Some(h.span()), Some("worker.identity_headers"), e))?;
            identity_headers.push(v.clone());
        }
    }
    let r = &w.replication;
    let mut peers = Vec::new();
    if let Some(p) = &r.peers {
        for v in p.get_ref() {
            handover_worker::peers::parse_peer(v).map_err(|e| {
                err(
                    Some(p.span()),
                    Some("worker.replication.peers"),
                    e.to_string(),
                )
            })?;
            peers.push(v.clone());
        }
    }
    let commit_window_ms = r.commit_window_ms.as_ref().map_or(40, |v| *v.get_ref());
    if commit_window_ms > 1_000 {
        return Err(err(
            r.commit_window_ms.as_ref().map(Spanned::span),
            Some("worker.replication.commit_window_ms"),
            format!(
                "{commit_window_ms} is out of range: 0..=1000 ms (a new call's 2xx waits for it)"
            ),
        ));
    }
    let raft_log_mb = r.raft_log_mb.as_ref().map_or(32, |v| *v.get_ref());
    if !(1..=4096).contains(&raft_log_mb) {
        return Err(err(
            r.raft_log_mb.as_ref().map(Spanned::span),
            Some("worker.replication.raft_log_mb"),
            format!("{raft_log_mb} is out of range: 1..=4096 MiB"),
        ));
    }
    let replication = Replication {
        id: r.id.as_ref().map(|v| *v.get_ref()),
        id_from_hostname: r.id_from_hostname.unwrap_or(false),
        peers,
        grpc_listen: match &r.grpc_listen {
            None => None,
            Some(_) => Some(addr(&r.grpc_listen, "worker.replication.grpc_listen", "")?),
        },
        commit_window_ms,
        join: match &r.join {
            None => None,
            Some(s) => Some(
                handover_worker::peers::host_port(s.get_ref()).ok_or_else(|| {
                    err(
                        Some(s.span()),
                        Some("worker.replication.join"),
                        format!("`{}` is not an IP:PORT or HOST:PORT address", s.get_ref()),
                    )
                })?,
            ),
        },
        peer_template: r.peer_template.clone(),
        founders: r.founders,
        remove_down_after_s: r.remove_down_after_s.unwrap_or(0),
        data: r
            .data
            .clone()
            .unwrap_or_else(|| "handover-data".to_string()),
        tls_dir: r.tls_dir.clone(),
        insecure: r.insecure.unwrap_or(false),
        min_free_mb: r.min_free_mb.unwrap_or(64),
        raft_log_mb,
    };
    if replication.peer_template.is_some()
        && (!replication.peers.is_empty() || replication.founders.unwrap_or(0) == 0)
    {
        return Err(err(
            None,
            Some("worker.replication.peer_template"),
            "peer_template needs founders (1 or more) and no peers".to_string(),
        ));
    }
    if replication.id.is_some() && replication.id_from_hostname {
        return Err(err(
            r.id.as_ref().map(Spanned::span),
            Some("worker.replication.id"),
            "set id or id_from_hostname, not both".to_string(),
        ));
    }
    let g = &w.registrar;
    let rd = handover_call::registrar::Config::default();
    let algorithms = match &g.algorithms {
        // MD5 first: phones that read only the first challenge mostly
        // know only MD5 (SIPp 3.6, libre-based phones refuse a first
        // challenge they cannot answer); fleets that all speak
        // SHA-256 put it first.
        None => vec!["MD5".to_string(), "SHA-256".to_string()],
        Some(a) => {
            for v in a.get_ref() {
                v.parse::<handover_call::registrar::digest::Algorithm>()
                    .map_err(|e| err(Some(a.span()), Some("worker.registrar.algorithms"), e))?;
            }
            if a.get_ref().is_empty() {
                return Err(err(
                    Some(a.span()),
                    Some("worker.registrar.algorithms"),
                    "name at least one of SHA-256, MD5".to_string(),
                ));
            }
            a.get_ref().clone()
        }
    };
    let registrar = Registrar {
        min_expires: g.min_expires.unwrap_or(rd.min_expires),
        max_expires: g.max_expires.unwrap_or(rd.max_expires).max(1),
        default_expires: g.default_expires.unwrap_or(rd.default_expires),
        max_contacts: g.max_contacts.unwrap_or(rd.max_contacts),
        max_aors: g.max_aors.unwrap_or(rd.max_aors),
        max_bindings_per_source: g
            .max_bindings_per_source
            .unwrap_or(rd.max_bindings_per_source),
        domains: g.domains.clone().unwrap_or_default(),
        users: g.users.clone(),
        realm: g.realm.clone().unwrap_or_else(|| "handover".to_string()),
        algorithms,
        nonce_ttl_s: g.nonce_ttl_s.unwrap_or(300),
        max_failures: g.max_failures.unwrap_or(10),
        ban_s: g.ban_s.unwrap_or(60),
        ping_interval_s: g.ping_interval_s.unwrap_or(0),
        upstream: match &g.upstream {
            None => Vec::new(),
            Some(u) => {
                let mut check = handover_call::registrar::Upstreams::default();
                for v in u.get_ref() {
                    check
                        .add(v)
                        .map_err(|e| err(Some(u.span()), Some("worker.registrar.upstream"), e))?;
                }
                u.get_ref().clone()
            }
        },
    };
    let worker = Worker {
        listen: addr(&w.listen, "worker.listen", "127.0.0.1:5080")?,
        edge: match &w.edge {
            // A name (a Kubernetes Service's) is looked up when the
            // worker starts.
            Some(s) => handover_worker::peers::host_port(s.get_ref()).ok_or_else(|| {
                err(
                    Some(s.span()),
                    Some("worker.edge"),
                    format!("`{}` is not an IP:PORT or HOST:PORT address", s.get_ref()),
                )
            })?,
            None => "127.0.0.1:5060".to_string(),
        },
        advertise: match &w.advertise {
            None => None,
            Some(_) => Some(addr(&w.advertise, "worker.advertise", "")?),
        },
        admin: addr(&w.admin, "worker.admin", "127.0.0.1:9101")?,
        max_call_age_s: w.max_call_age_s.unwrap_or(14_400),
        ring_timeout_s,
        bundle_bytes,
        transfer_mode,
        t1_ms,
        max_calls,
        max_calls_per_source: w.max_calls_per_source.unwrap_or(0),
        trusted,
        identity_headers,
        assert_identity: w.assert_identity.unwrap_or(false),
        routes,
        replication,
        registrar,
    };
    Ok(worker)
}
