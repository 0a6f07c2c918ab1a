//! Where a new call goes: routes matched in configuration order on the
//! Request-URI's user (exactly or by prefix) or domain, each with one or
//! more weighted targets. The first target of a call is picked by weight,
//! keyed by the call's affinity key (so the choice is the same on every
//! worker); the others follow, for failover on 408, 503 or no answer.

use std::net::SocketAddr;

/// What a route matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// The Request-URI user, exactly.
    User(String),
    /// The Request-URI user starts with this (dial plans: `+4420`, `9`).
    Prefix(String),
    /// The Request-URI host, ASCII case-insensitively.
    Domain(String),
    /// Anything (the default route).
    Any,
}

/// Who carries out a transfer (REFER) on a call of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransferMode {
    /// The phones: REFER and NOTIFY are relayed between the legs.
    #[default]
    Passthrough,
    /// The B2BUA: it answers the REFER, calls the target and re-INVITEs
    /// the transferee; the transferee never sees a REFER.
    Local,
}

impl core::str::FromStr for TransferMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "passthrough" => Ok(Self::Passthrough),
            "local" => Ok(Self::Local),
            _ => Err(format!(
                "transfer mode `{s}` is not one of: passthrough, local"
            )),
        }
    }
}

/// One route: a match and its targets with weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// What it matches.
    pub matcher: Match,
    /// `(IP:PORT, weight)`, weight ≥ 1.
    pub targets: Vec<(SocketAddr, u32)>,
    /// Transfer mode of its calls; `None`: the worker's default.
    pub transfer: Option<TransferMode>,
    /// The transport its targets are reached on (`;transport=tcp|tls`):
    /// the B leg's Request-URI says so, and the edge opens a connection.
    pub transport: handover_sip::Transport,
    /// Over TLS: the name the targets' certificates carry
    /// (`;tls_name=NAME`), the B leg's Request-URI host (the target's
    /// address then rides in `maddr`); None: the IP address is the name.
    pub tls_name: Option<String>,
    /// Over UDP, to targets that take TCP too (`;tcp_above=BYTES`): a
    /// request larger than this goes over TCP (RFC 3261 §18.1.1: above
    /// 1,300 bytes when the path MTU is unknown).
    pub tcp_above: Option<u16>,
}

/// The routes of a worker, in the order they are tried.
#[derive(Debug, Clone, Default)]
pub struct Routes(Vec<Route>);

impl Routes {
    /// Adds a route given on the command line:
    /// `MATCH=IP:PORT[*WEIGHT][,IP:PORT[*WEIGHT]…][;transfer=MODE][;transport=udp|tcp|tls|ws|wss][;tls_name=NAME][;tcp_above=BYTES]`,
    /// where MATCH is a user, `PREFIX*` for a prefix, `@DOMAIN` for a
    /// domain, or `*` for any, MODE `passthrough` or `local`, NAME the
    /// name the TLS targets' certificates carry, and BYTES the size above
    /// which requests to UDP targets go over TCP.
    pub fn add(&mut self, spec: &str) -> Result<(), String> {
        let mut parts = spec.split(';');
        let spec_main = parts.next().unwrap_or_default();
        let (mut transfer, mut transport) = (None, handover_sip::Transport::Udp);
        let mut tls_name = None;
        let mut tcp_above = None;
        for opt in parts {
            if let Some(mode) = opt.strip_prefix("transfer=") {
                transfer = Some(mode.parse().map_err(|e| format!("route `{spec}`: {e}"))?);
            } else if let Some(t) = opt.strip_prefix("transport=") {
                transport = match t.to_ascii_lowercase().as_str() {
                    "udp" => handover_sip::Transport::Udp,
                    "tcp" => handover_sip::Transport::Tcp,
                    "tls" => handover_sip::Transport::Tls,
                    "ws" => handover_sip::Transport::Ws,
                    "wss" => handover_sip::Transport::Wss,
                    _ => {
                        return Err(format!(
                            "route `{spec}`: `;transport={t}` is not udp, tcp, tls, ws or wss"
                        ));
                    }
                };
            } else if let Some(n) = opt.strip_prefix("tls_name=") {
                let ok = !n.is_empty()
                    && n.len() <= 253
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
                if !ok {
                    return Err(format!(
                        "route `{spec}`: `;tls_name={n}` is not a host name"
                    ));
                }
                tls_name = Some(n.to_ascii_lowercase());
            } else if let Some(n) = opt.strip_prefix("tcp_above=") {
                tcp_above = Some(
                    n.parse::<u16>()
                        .ok()
                        .filter(|n| (500..=65_000).contains(n))
                        .ok_or_else(|| {
                            format!("route `{spec}`: `;tcp_above={n}` is not 500..=65000 bytes")
                        })?,
                );
            } else {
                return Err(format!(
                    "route `{spec}`: `;{opt}` is not `;transfer=passthrough|local`, `;transport=udp|tcp|tls|ws|wss`, `;tls_name=NAME` or `;tcp_above=BYTES`"
                ));
            }
        }
        if tls_name.is_some()
            && !matches!(
                transport,
                handover_sip::Transport::Tls | handover_sip::Transport::Wss
            )
        {
            return Err(format!(
                "route `{spec}`: `;tls_name` needs `;transport=tls` or `wss`"
            ));
        }
        if tcp_above.is_some() && transport != handover_sip::Transport::Udp {
            return Err(format!(
                "route `{spec}`: `;tcp_above` is for targets reached over UDP"
            ));
        }
        let (m, targets) = spec_main
            .split_once('=')
            .ok_or_else(|| format!("route `{spec}` is not MATCH=IP:PORT"))?;
        let matcher = if m == "*" {
            Match::Any
        } else if let Some(d) = m.strip_prefix('@') {
            Match::Domain(d.to_string())
        } else if let Some(p) = m.strip_suffix('*') {
            Match::Prefix(p.to_string())
        } else {
            Match::User(m.to_string())
        };
        let mut list = Vec::new();
        for t in targets.split(',') {
            let (addr, w) = match t.split_once('*') {
                Some((a, w)) => (
                    a,
                    w.parse::<u32>()
                        .map_err(|_| format!("route `{spec}`: weight `{w}` is not a number"))?,
                ),
                None => (t, 1),
            };
            let addr = addr
                .parse::<SocketAddr>()
                .map_err(|_| format!("route `{spec}`: `{addr}` is not an IP:PORT address"))?;
            list.push((addr, w));
        }
        self.push(Route {
            matcher,
            targets: list,
            transfer,
            transport,
            tls_name,
            tcp_above,
        })
    }

    /// Adds a route; the error names the broken rule.
    pub fn push(&mut self, r: Route) -> Result<(), String> {
        if r.targets.is_empty() {
            return Err("a route needs at least one target".into());
        }
        if r.targets.iter().any(|(_, w)| *w == 0) {
            return Err("a target's weight must be at least 1".into());
        }
        self.0.push(r);
        Ok(())
    }

    /// True when no route is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The targets of the first route matching `user`@`host`, in the order
    /// to try them: the first picked by weight from `key`, then the rest in
    /// configuration order. Empty when nothing matches.
    pub fn targets(&self, user: &[u8], host: &[u8], key: u64) -> Vec<SocketAddr> {
        self.lookup(user, host, key).0
    }

    /// The transport of the first route matching `user`@`host` (UDP when
    /// none matches).
    pub fn transport(&self, user: &[u8], host: &[u8]) -> handover_sip::Transport {
        self.find(user, host)
            .map_or(handover_sip::Transport::Udp, |r| r.transport)
    }

    /// The size above which the route `user@host` takes sends requests
    /// over TCP, if it sets one.
    pub fn tcp_above(&self, user: &[u8], host: &[u8]) -> Option<u16> {
        self.find(user, host).and_then(|r| r.tcp_above)
    }

    /// The TLS name of the route `user@host` takes, if it sets one.
    pub fn tls_name(&self, user: &[u8], host: &[u8]) -> Option<&str> {
        self.find(user, host).and_then(|r| r.tls_name.as_deref())
    }

    fn find(&self, user: &[u8], host: &[u8]) -> Option<&Route> {
        self.0.iter().find(|r| match &r.matcher {
            Match::User(u) => u.as_bytes() == user,
            Match::Prefix(p) => user.starts_with(p.as_bytes()),
            Match::Domain(d) => d.as_bytes().eq_ignore_ascii_case(host),
            Match::Any => true,
        })
    }

    /// [`Routes::targets`], and the matching route's transfer mode.
    pub fn lookup(
        &self,
        user: &[u8],
        host: &[u8],
        key: u64,
    ) -> (Vec<SocketAddr>, Option<TransferMode>) {
        let Some(r) = self.find(user, host) else {
            return (Vec::new(), None);
        };
        let total: u64 = r.targets.iter().map(|(_, w)| u64::from(*w)).sum();
        let mut at = key % total;
        let first = r
            .targets
            .iter()
            .position(|(_, w)| {
                if at < u64::from(*w) {
                    true
                } else {
                    at -= u64::from(*w);
                    false
                }
            })
            .unwrap_or(0);
        let n = r.targets.len();
        (
            (0..n).map(|i| r.targets[(first + i) % n].0).collect(),
            r.transfer,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    #[test]
    fn matching_order_user_prefix_domain_default() {
        let mut r = Routes::default();
        r.add("alice=127.0.0.1:1").unwrap();
        r.add("+4420*=127.0.0.1:2").unwrap();
        r.add("@pbx.example=127.0.0.1:3").unwrap();
        r.add("*=127.0.0.1:4").unwrap();
        assert_eq!(r.targets(b"alice", b"x", 0), vec![a(1)]);
        assert_eq!(r.targets(b"+442079460000", b"x", 0), vec![a(2)]);
        assert_eq!(r.targets(b"bob", b"PBX.example", 0), vec![a(3)]);
        assert_eq!(r.targets(b"bob", b"other", 0), vec![a(4)]);
        let mut none = Routes::default();
        none.add("alice=127.0.0.1:1").unwrap();
        assert!(none.targets(b"bob", b"x", 0).is_empty());
    }

    #[test]
    fn weights_pick_the_first_target_and_the_rest_follow() {
        let mut r = Routes::default();
        r.add("*=127.0.0.1:1*3,127.0.0.1:2*1").unwrap();
        let mut first = [0u32; 2];
        for key in 0..4000u64 {
            let t = r.targets(b"u", b"h", key.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            assert_eq!(t.len(), 2, "every target is a fallback");
            first[usize::from(t[0] == a(2))] += 1;
        }
        let share = f64::from(first[0]) / 4000.0;
        assert!(
            (share - 0.75).abs() < 0.03,
            "weight 3:1 gives ~75%: {share}"
        );
    }

    #[test]
    fn bad_routes_are_named() {
        let mut r = Routes::default();
        assert!(r.add("alice").unwrap_err().contains("is not MATCH=IP:PORT"));
        assert!(
            r.add("alice=pbx:5060")
                .unwrap_err()
                .contains("`pbx:5060` is not an IP:PORT")
        );
        assert!(
            r.add("alice=127.0.0.1:1*x")
                .unwrap_err()
                .contains("weight `x`")
        );
        assert!(
            r.add("alice=127.0.0.1:1*0")
                .unwrap_err()
                .contains("at least 1")
        );
        assert!(
            r.add("alice=127.0.0.1:1;transfer=magic")
                .unwrap_err()
                .contains("`magic` is not one of: passthrough, local")
        );
        assert!(
            r.add("alice=127.0.0.1:1;mode=local")
                .unwrap_err()
                .contains("is not `;transfer=passthrough|local`")
        );
    }

    #[test]
    fn a_route_may_set_its_transfer_mode() {
        let mut r = Routes::default();
        r.add("alice=127.0.0.1:1;transfer=local").unwrap();
        r.add("trunk=127.0.0.1:2;transport=tcp;transfer=local")
            .unwrap();
        assert_eq!(r.transport(b"trunk", b"x"), handover_sip::Transport::Tcp);
        assert_eq!(r.transport(b"alice", b"x"), handover_sip::Transport::Udp);
        assert!(
            r.add("t=127.0.0.1:3;transport=sctp")
                .unwrap_err()
                .contains("is not udp, tcp, tls, ws or wss")
        );
        r.add("*=127.0.0.1:2").unwrap();
        assert_eq!(r.lookup(b"alice", b"x", 0).1, Some(TransferMode::Local));
        assert_eq!(r.lookup(b"bob", b"x", 0).1, None);
    }

    #[test]
    fn a_udp_route_may_send_large_requests_over_tcp() {
        let mut r = Routes::default();
        r.add("pbx=192.0.2.7:5060;tcp_above=1300").unwrap();
        r.add("other=192.0.2.8:5060").unwrap();
        assert_eq!(r.tcp_above(b"pbx", b"x"), Some(1300));
        assert_eq!(r.tcp_above(b"other", b"x"), None);
        for bad in ["0", "499", "65001", "x", ""] {
            let e = r
                .add(&format!("t=192.0.2.1:5060;tcp_above={bad}"))
                .unwrap_err();
            assert!(e.contains("is not 500..=65000 bytes"), "{bad}: {e}");
        }
        let e = r
            .add("t=192.0.2.1:5060;transport=tcp;tcp_above=1300")
            .unwrap_err();
        assert!(e.contains("for targets reached over UDP"), "{e}");
    }

    #[test]
    fn a_route_over_tls_may_name_its_targets_certificate() {
        let mut r = Routes::default();
        r.add("carrier=203.0.113.5:5061;transport=tls;tls_name=SIP.Carrier.example")
            .unwrap();
        r.add("pbx=192.0.2.7:5061;transport=tls").unwrap();
        r.add("ws=192.0.2.8:8080;transport=ws").unwrap();
        r.add("wss=192.0.2.8:443;transport=WSS;tls_name=ws.example")
            .unwrap();
        assert_eq!(r.transport(b"carrier", b"x"), handover_sip::Transport::Tls);
        assert_eq!(r.transport(b"ws", b"x"), handover_sip::Transport::Ws);
        assert_eq!(r.transport(b"wss", b"x"), handover_sip::Transport::Wss);
        assert_eq!(r.tls_name(b"wss", b"x"), Some("ws.example"));
        assert!(
            r.add("t=192.0.2.1:80;transport=ws;tls_name=a.example")
                .unwrap_err()
                .contains("needs `;transport=tls` or `wss`")
        );
        assert_eq!(r.tls_name(b"carrier", b"x"), Some("sip.carrier.example"));
        assert_eq!(r.tls_name(b"pbx", b"x"), None);
        assert!(
            r.add("t=192.0.2.1:5060;tls_name=a.example")
                .unwrap_err()
                .contains("needs `;transport=tls`")
        );
        for bad in ["", "a b", "x/y", "é.example"] {
            let e = r
                .add(&format!("t=192.0.2.1:5061;transport=tls;tls_name={bad}"))
                .unwrap_err();
            assert!(e.contains("is not a host name"), "{bad}: {e}");
        }
    }
}
