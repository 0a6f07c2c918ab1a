//! handover's configuration: the TOML file ([`Config`], checked with the
//! line of every error) and, in [`cli`], each process's command-line flags
//! over it, resolved to the settings the edge and the worker run with.
//!
//! In the file, unknown keys are errors (`deny_unknown_fields`): a
//! misspelt timer key that is silently ignored is a production incident.
//! Values with rules beyond their type are read with their position, so an
//! error names the key and the line.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use handover_sip::Limits;
use serde::Serialize;
use toml::Spanned;

pub mod cli;
mod file;
mod worker;
use file::*;

/// The effective configuration, after defaults and validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    /// `[sip]`
    pub sip: Sip,
    /// `[cluster]`
    pub cluster: Cluster,
    /// `[edge]`
    pub edge: Edge,
    /// `[worker]`
    pub worker: Worker,
}

/// A `[cluster] hash_key` or `--hash-key` value: 32 hex digits.
pub fn parse_hash_key(s: &str) -> Result<(u64, u64), String> {
    if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "must be exactly 32 hex digits (128 bits), got {} characters",
            s.len()
        ));
    }
    let k0 = u64::from_str_radix(&s[..16], 16).map_err(|e| e.to_string())?;
    let k1 = u64::from_str_radix(&s[16..], 16).map_err(|e| e.to_string())?;
    Ok((k0, k1))
}

/// The key a process hashes with: `--hash-key`, else the file's, else the
/// built-in default, which is public (it is in this repository): anyone
/// can compute where a Call-ID lands and aim at one worker. So a process
/// that is one node of several (a replicated worker, an edge of a
/// cluster) refuses to start on it, and says how to set one.
pub fn hashing(
    flag: Option<(u64, u64)>,
    file: Option<(u64, u64)>,
    several_nodes: bool,
) -> anyhow::Result<handover_sip::ids::Hashing> {
    match flag.or(file) {
        Some((k0, k1)) => Ok(handover_sip::ids::Hashing::with_key(k0, k1)),
        None if several_nodes => anyhow::bail!(
            "a cluster needs a hashing key of its own, the same on every node: set \
             [cluster] hash_key or --hash-key (32 hex digits, e.g. from `openssl rand -hex 16`); \
             the built-in default is public"
        ),
        None => Ok(handover_sip::ids::Hashing::default()),
    }
}

fn mode_name<S: serde::Serializer>(
    m: &handover_call::TransferMode,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(match m {
        handover_call::TransferMode::Passthrough => "passthrough",
        handover_call::TransferMode::Local => "local",
    })
}

/// Effective `[worker]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Worker {
    pub listen: String,
    pub edge: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    pub admin: String,
    pub max_call_age_s: u64,
    pub ring_timeout_s: u64,
    pub bundle_bytes: usize,
    #[serde(serialize_with = "mode_name")]
    pub transfer_mode: handover_call::TransferMode,
    pub t1_ms: u64,
    pub max_calls: usize,
    pub max_calls_per_source: usize,
    /// Trusted peers' prefixes, as given.
    pub trusted: Vec<String>,
    /// Header names treated as identity headers beside RFC 3325's.
    pub identity_headers: Vec<String>,
    /// P-Asserted-Identity from digest users to trusted targets.
    pub assert_identity: bool,
    /// Routes in the command-line form (`MATCH=TARGET[,TARGET…]`).
    pub routes: Vec<String>,
    pub replication: Replication,
    pub registrar: Registrar,
}

/// Effective `[worker.registrar]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Registrar {
    pub min_expires: u32,
    pub max_expires: u32,
    pub default_expires: u32,
    pub max_contacts: usize,
    pub max_aors: usize,
    pub max_bindings_per_source: usize,
    pub domains: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub users: Option<String>,
    pub realm: String,
    pub algorithms: Vec<String>,
    pub nonce_ttl_s: u64,
    pub max_failures: u32,
    pub ban_s: u64,
    pub upstream: Vec<String>,
    pub ping_interval_s: u32,
}

/// Effective `[worker.replication]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Replication {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    pub id_from_hostname: bool,
    pub peers: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_template: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub founders: Option<u64>,
    pub remove_down_after_s: u64,
    pub commit_window_ms: u64,
    pub data: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_dir: Option<String>,
    pub insecure: bool,
    pub min_free_mb: u64,
    pub raft_log_mb: u64,
}

/// An edge's address inside the cluster: `IP:PORT`, or a bare `IP` (a
/// pod's, from the downward API) on the port of `listen` (`IP:PORT`).
pub fn internal_addr(s: &str, listen: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    let port = listen
        .parse::<std::net::SocketAddr>()
        .map_or(5060, |l| l.port());
    match s.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        Ok(ip) if !ip.is_unspecified() => Ok(std::net::SocketAddr::new(ip, port)),
        Ok(_) => Err(format!("`{s}` is no address to reach this edge at")),
        Err(_) => Err(format!(
            "`{s}` is not an IP or IP:PORT address (host names are not resolved)"
        )),
    }
}

/// Effective `[edge]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Edge {
    pub listen: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internal_advertise: Option<String>,
    pub backends: Vec<String>,
    pub threads: usize,
    pub io: String,
    pub admin: String,
    pub recv_buffer_bytes: usize,
    pub send_buffer_bytes: usize,
    pub record_route: bool,
    pub bad_input_per_source: u32,
    pub new_dialogs_per_source: u32,
    pub ban_s: u32,
    /// Replicated workers' gRPC addresses (`IP:PORT` or `HOST:PORT`).
    pub cluster: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_tls: Option<String>,
    pub drain_s: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_tcp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_tls: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_ws: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_wss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_ca: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_upstream_ca: Option<String>,
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    pub stream_idle_s: u64,
    pub stream_message_timeout_ms: u64,
    pub proxy_protocol_from: Vec<String>,
    /// None: the private ranges (`handover_edge::Destinations::PRIVATE`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deny_destinations: Option<Vec<String>>,
    pub allow_destinations: Vec<String>,
    pub health: Health,
}

/// Effective `[edge.health]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub down_after: u32,
    pub up_after: u32,
}

/// Effective `[sip]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sip {
    /// See the file key of the same name.
    pub max_message_bytes: usize,
    /// See the file key of the same name.
    pub max_uri_bytes: usize,
}

/// Effective `[cluster]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cluster {
    /// "default" when the published default key is in use, else "set".
    pub hash_key: &'static str,
    #[serde(skip)]
    /// The key, when set.
    pub hash_key_value: Option<(u64, u64)>,
}

impl Sip {
    /// As the SIP layer's limits.
    pub fn limits(&self) -> Limits {
        Limits {
            max_message_bytes: self.max_message_bytes,
            max_uri_bytes: self.max_uri_bytes,
        }
    }
}

/// A configuration error, with where it is.
#[derive(Debug)]
pub struct ConfigError {
    path: PathBuf,
    /// 1-based line and column, when the error has a position.
    at: Option<(usize, usize)>,
    /// The offending line, for display.
    line: Option<String>,
    key: Option<&'static str>,
    message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some((l, c)) = self.at {
            write!(f, ":{l}:{c}")?;
        }
        write!(f, ": ")?;
        if let Some(k) = self.key {
            write!(f, "key `{k}`: ")?;
        }
        write!(f, "{}", self.message)?;
        if let (Some((l, _)), Some(line)) = (self.at, &self.line) {
            write!(f, "\n  {l} | {line}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

fn locate(src: &str, at: usize) -> (usize, usize, String) {
    let at = at.min(src.len());
    let before = &src[..at];
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[start..].chars().count() + 1;
    let text = src[start..].lines().next().unwrap_or("").to_string();
    (line, col, text)
}

impl Config {
    /// Defaults, as for an empty file.
    pub fn defaults() -> Self {
        Self::parse(Path::new("<defaults>"), "").expect("defaults are valid")
    }

    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let src = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_owned(),
            at: None,
            line: None,
            key: None,
            message: format!("cannot read the file: {e}"),
        })?;
        Self::parse(path, &src)
    }

    /// Parses and validates `src`, read from `path`.
    pub fn parse(path: &Path, src: &str) -> Result<Self, ConfigError> {
        let err = |span: Option<Range<usize>>, key: Option<&'static str>, message: String| {
            let (at, line) = match span.map(|s| locate(src, s.start)) {
                Some((l, c, text)) => (Some((l, c)), Some(text)),
                None => (None, None),
            };
            ConfigError {
                path: path.to_owned(),
                at,
                line,
                key,
                message,
            }
        };
        let file: File =
            toml::from_str(src).map_err(|e| err(e.span(), None, e.message().trim().to_string()))?;

        let defaults = Limits::default();
        let value = |v: &Option<Spanned<usize>>, d: usize| v.as_ref().map_or(d, |s| *s.get_ref());
        let sip = Sip {
            max_message_bytes: value(&file.sip.max_message_bytes, defaults.max_message_bytes),
            max_uri_bytes: value(&file.sip.max_uri_bytes, defaults.max_uri_bytes),
        };
        let span_of = |v: &Option<Spanned<usize>>| v.as_ref().map(Spanned::span);
        if !(512..=65_535).contains(&sip.max_message_bytes) {
            return Err(err(
                span_of(&file.sip.max_message_bytes),
                Some("sip.max_message_bytes"),
                format!(
                    "{} is out of range: it must be between 512 and 65535 (a UDP datagram)",
                    sip.max_message_bytes
                ),
            ));
        }
        if sip.max_uri_bytes < 64 || sip.max_uri_bytes > sip.max_message_bytes {
            return Err(err(
                span_of(&file.sip.max_uri_bytes),
                Some("sip.max_uri_bytes"),
                format!(
                    "{} is out of range: it must be at least 64 and at most sip.max_message_bytes ({})",
                    sip.max_uri_bytes, sip.max_message_bytes
                ),
            ));
        }
        debug_assert!(sip.limits().validate().is_ok());

        let hash_key_value = match &file.cluster.hash_key {
            None => None,
            Some(k) => match parse_hash_key(k.get_ref()) {
                Ok(v) => Some(v),
                Err(m) => return Err(err(Some(k.span()), Some("cluster.hash_key"), m)),
            },
        };
        let e = &file.edge;
        let addr = |v: &Option<Spanned<String>>,
                    key: &'static str,
                    default: &str|
         -> Result<String, ConfigError> {
            match v {
                None => Ok(default.to_string()),
                Some(s) => match s.get_ref().parse::<std::net::SocketAddr>() {
                    Ok(_) => Ok(s.get_ref().clone()),
                    Err(_) => Err(err(
                        Some(s.span()),
                        Some(key),
                        format!(
                            "`{}` is not an IP:PORT address (host names are not resolved)",
                            s.get_ref()
                        ),
                    )),
                },
            }
        };
        let listen = addr(&e.listen, "edge.listen", "127.0.0.1:5060")?;
        let advertise = match &e.advertise {
            None => None,
            Some(_) => Some(addr(&e.advertise, "edge.advertise", "")?),
        };
        let internal_advertise = match &e.internal_advertise {
            None => None,
            Some(s) => Some(
                internal_addr(s.get_ref(), &listen)
                    .map_err(|m| err(Some(s.span()), Some("edge.internal_advertise"), m))?
                    .to_string(),
            ),
        };
        let admin = addr(&e.admin, "edge.admin", "127.0.0.1:9100")?;
        let listen_tcp = match &e.listen_tcp {
            None => None,
            Some(_) => Some(addr(&e.listen_tcp, "edge.listen_tcp", "")?),
        };
        let listen_tls = match &e.listen_tls {
            None => None,
            Some(_) => Some(addr(&e.listen_tls, "edge.listen_tls", "")?),
        };
        let listen_ws = match &e.listen_ws {
            None => None,
            Some(_) => Some(addr(&e.listen_ws, "edge.listen_ws", "")?),
        };
        let listen_wss = match &e.listen_wss {
            None => None,
            Some(_) => Some(addr(&e.listen_wss, "edge.listen_wss", "")?),
        };
        for (l, key) in [
            (&e.listen_tls, "edge.listen_tls"),
            (&e.listen_wss, "edge.listen_wss"),
        ] {
            if let Some(l) = l
                && (e.tls_cert.is_none() || e.tls_key.is_none())
            {
                return Err(err(
                    Some(l.span()),
                    Some(key),
                    "a TLS listener needs tls_cert and tls_key (PEM files)".to_string(),
                ));
            }
        }
        let sd = handover_edge::StreamConfig::default();
        let stream_idle_s = e
            .stream_idle_s
            .as_ref()
            .map_or(sd.idle_timeout.as_secs(), |v| *v.get_ref());
        if !(1..=86_400).contains(&stream_idle_s) {
            return Err(err(
                e.stream_idle_s.as_ref().map(Spanned::span),
                Some("edge.stream_idle_s"),
                format!("{stream_idle_s} is out of range: 1..=86400 s"),
            ));
        }
        let stream_message_timeout_ms = e
            .stream_message_timeout_ms
            .as_ref()
            .map_or(sd.message_timeout.as_millis() as u64, |v| *v.get_ref());
        if !(100..=600_000).contains(&stream_message_timeout_ms) {
            return Err(err(
                e.stream_message_timeout_ms.as_ref().map(Spanned::span),
                Some("edge.stream_message_timeout_ms"),
                format!("{stream_message_timeout_ms} is out of range: 100..=600000 ms"),
            ));
        }
        let cidrs = |t: &Option<Spanned<Vec<String>>>, key: &'static str| {
            let mut v = Vec::new();
            if let Some(t) = t {
                for c in t.get_ref() {
                    c.parse::<handover_sip::Cidr>()
                        .map_err(|e| err(Some(t.span()), Some(key), e.to_string()))?;
                    v.push(c.clone());
                }
            }
            Ok::<_, ConfigError>(v)
        };
        let proxy_protocol_from = cidrs(&e.proxy_protocol_from, "edge.proxy_protocol_from")?;
        let deny_destinations = match &e.deny_destinations {
            None => None,
            Some(_) => Some(cidrs(&e.deny_destinations, "edge.deny_destinations")?),
        };
        let allow_destinations = cidrs(&e.allow_destinations, "edge.allow_destinations")?;
        let mut backends = Vec::new();
        if let Some(b) = &e.backends {
            for v in b.get_ref() {
                if v.parse::<std::net::SocketAddr>().is_err() {
                    return Err(err(
                        Some(b.span()),
                        Some("edge.backends"),
                        format!("`{v}` is not an IP:PORT address (host names are not resolved)"),
                    ));
                }
                backends.push(v.clone());
            }
        }
        let io = match &e.io {
            None => "auto".to_string(),
            Some(s) if matches!(s.get_ref().as_str(), "auto" | "uring" | "epoll") => {
                s.get_ref().clone()
            }
            Some(s) => {
                return Err(err(
                    Some(s.span()),
                    Some("edge.io"),
                    format!("`{}` is not one of auto, uring, epoll", s.get_ref()),
                ));
            }
        };
        let mut cluster = Vec::new();
        if let Some(c) = &e.cluster {
            for v in c.get_ref() {
                let Some(a) = handover_worker::peers::host_port(v) else {
                    return Err(err(
                        Some(c.span()),
                        Some("edge.cluster"),
                        format!("`{v}` is not an IP:PORT or HOST:PORT address"),
                    ));
                };
                cluster.push(a);
            }
        }
        let hd = handover_edge::HealthConfig::default();
        let h = &e.health;
        let health = Health {
            interval_ms: h.interval_ms.unwrap_or(hd.interval_ms),
            timeout_ms: h
                .timeout_ms
                .as_ref()
                .map_or(hd.timeout_ms, |v| *v.get_ref()),
            down_after: h
                .down_after
                .as_ref()
                .map_or(hd.down_after, |v| *v.get_ref()),
            up_after: h.up_after.as_ref().map_or(hd.up_after, |v| *v.get_ref()),
        };
        if health.interval_ms != 0 && health.timeout_ms > health.interval_ms {
            return Err(err(
                h.timeout_ms.as_ref().map(Spanned::span),
                Some("edge.health.timeout_ms"),
                format!(
                    "{} must not exceed edge.health.interval_ms ({})",
                    health.timeout_ms, health.interval_ms
                ),
            ));
        }
        for (v, key) in [
            (&h.down_after, "edge.health.down_after"),
            (&h.up_after, "edge.health.up_after"),
        ] {
            if let Some(v) = v
                && *v.get_ref() == 0
            {
                return Err(err(
                    Some(v.span()),
                    Some(key),
                    "must be at least 1".to_string(),
                ));
            }
        }
        let worker = worker::worker(&file.worker, &err, &addr)?;
        let ed = handover_edge::EdgeConfig::default();
        let edge = Edge {
            listen,
            advertise,
            internal_advertise,
            backends,
            threads: e.threads.unwrap_or(0),
            io,
            admin,
            recv_buffer_bytes: e.recv_buffer_bytes.unwrap_or(ed.recv_buffer_bytes),
            send_buffer_bytes: e.send_buffer_bytes.unwrap_or(ed.send_buffer_bytes),
            record_route: e.record_route.unwrap_or(ed.record_route),
            bad_input_per_source: e.bad_input_per_source.unwrap_or(ed.bad_input_per_source),
            new_dialogs_per_source: e
                .new_dialogs_per_source
                .unwrap_or(ed.new_dialogs_per_source),
            ban_s: e.ban_s.unwrap_or(ed.ban_s),
            cluster,
            cluster_tls: e.cluster_tls.clone(),
            drain_s: e.drain_s.unwrap_or(5),
            listen_tcp,
            listen_tls,
            listen_ws,
            listen_wss,
            tls_cert: e.tls_cert.clone(),
            tls_key: e.tls_key.clone(),
            tls_client_ca: e.tls_client_ca.clone(),
            tls_upstream_ca: e.tls_upstream_ca.clone(),
            max_connections: e.max_connections.unwrap_or(sd.max_connections),
            max_connections_per_source: e.max_connections_per_source.unwrap_or(sd.max_per_source),
            stream_idle_s,
            stream_message_timeout_ms,
            proxy_protocol_from,
            deny_destinations,
            allow_destinations,
            health,
        };
        Ok(Config {
            worker,
            edge,
            sip,
            cluster: Cluster {
                hash_key: if hash_key_value.is_some() {
                    "set"
                } else {
                    "default"
                },
                hash_key_value,
            },
        })
    }

    /// The effective configuration as TOML (secrets shown only as "set").
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("plain data serialises")
    }
}

#[cfg(test)]
mod tests;
