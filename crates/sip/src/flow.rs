//! Transports and flows: where a message came from, or must go, as the
//! edge sees it (RFC 5626 §3: a flow is a transport and a remote address;
//! for a stream transport, the one connection between them).
//!
//! A flow is written `IP:PORT` for UDP (as handover wrote flows before it
//! had streams, so old records still read) and `TRANSPORT:IP:PORT`
//! otherwise (`tcp:198.51.100.7:40000`, `tls:[2001:db8::1]:5061`). It
//! travels in our own URIs (`;flow=`), in the registrar's bindings and in
//! the replicated table.

use core::fmt;
use core::str::FromStr;
use std::net::SocketAddr;

/// A SIP transport (RFC 3261 §18, RFC 7118 for WebSocket).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Transport {
    /// Datagrams.
    #[default]
    Udp,
    /// A TCP stream.
    Tcp,
    /// TLS over TCP.
    Tls,
    /// WebSocket (RFC 7118).
    Ws,
    /// WebSocket over TLS.
    Wss,
}

impl Transport {
    /// Every transport, in a stable order (metrics label sets).
    pub const ALL: [Transport; 5] = [
        Transport::Udp,
        Transport::Tcp,
        Transport::Tls,
        Transport::Ws,
        Transport::Wss,
    ];

    /// The Via token (`UDP`, `TCP`, `TLS`, `WS`, `WSS`).
    pub fn via_token(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
            Transport::Ws => "WS",
            Transport::Wss => "WSS",
        }
    }

    /// The lower-case name (`transport=` URI parameter, flow prefix, metrics label).
    pub fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        }
    }

    /// The `transport=` URI parameter naming it (RFC 7118 §5.2: `ws` for
    /// WebSocket whether secure or not; a `sips:` URI says TLS).
    pub fn uri_param(self) -> &'static str {
        match self {
            Transport::Wss => "ws",
            t => t.name(),
        }
    }

    /// Reads a Via token or a `transport=` value, in any case.
    pub fn parse(token: &[u8]) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|t| token.eq_ignore_ascii_case(t.name().as_bytes()))
    }

    /// True for the connection-oriented transports: a message goes back
    /// on the connection it came on (RFC 3261 §18.2.2).
    pub fn is_stream(self) -> bool {
        self != Transport::Udp
    }

    /// Its index in [`Transport::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A transport and a remote address: on a stream transport, the one
/// connection the edge holds with that address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    /// The transport.
    pub transport: Transport,
    /// The far end's address (for a stream: the connection's peer).
    pub addr: SocketAddr,
}

impl Flow {
    /// A UDP flow to `addr`.
    pub fn udp(addr: SocketAddr) -> Self {
        Self {
            transport: Transport::Udp,
            addr,
        }
    }

    /// A flow on `transport` to `addr`.
    pub fn new(transport: Transport, addr: SocketAddr) -> Self {
        Self { transport, addr }
    }
}

impl From<SocketAddr> for Flow {
    fn from(addr: SocketAddr) -> Self {
        Self::udp(addr)
    }
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.transport {
            Transport::Udp => write!(f, "{}", self.addr),
            t => write!(f, "{t}:{}", self.addr),
        }
    }
}

/// A flow that does not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadFlow;

impl fmt::Display for BadFlow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a flow: want IP:PORT or TRANSPORT:IP:PORT")
    }
}

impl std::error::Error for BadFlow {}

impl FromStr for Flow {
    type Err = BadFlow;
    fn from_str(s: &str) -> Result<Self, BadFlow> {
        // An address starts with a digit or `[`; a transport with a letter.
        let (transport, addr) = match s.split_once(':') {
            Some((t, rest)) if t.bytes().all(|b| b.is_ascii_alphabetic()) && !t.is_empty() => {
                (Transport::parse(t.as_bytes()).ok_or(BadFlow)?, rest)
            }
            _ => (Transport::Udp, s),
        };
        let addr = addr.parse().map_err(|_| BadFlow)?;
        Ok(Self { transport, addr })
    }
}

impl Flow {
    /// Reads a flow from the bytes of a `flow=` parameter.
    pub fn parse(b: &[u8]) -> Option<Self> {
        core::str::from_utf8(b).ok()?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_read_back_what_they_write_and_udp_keeps_the_old_form() {
        for s in [
            "198.51.100.7:40000",
            "tcp:198.51.100.7:40000",
            "tls:[2001:db8::1]:5061",
            "wss:127.0.0.1:1",
            "ws:127.0.0.1:2",
        ] {
            let f: Flow = s.parse().unwrap();
            assert_eq!(f.to_string(), s);
        }
        let f = Flow::parse(b"TCP:127.0.0.1:5").unwrap();
        assert_eq!(f.transport, Transport::Tcp);
        assert_eq!(
            Flow::parse(b"[::1]:5060").unwrap(),
            Flow::udp("[::1]:5060".parse().unwrap())
        );
        for bad in [
            "",
            "sctp:1.2.3.4:5",
            "tcp:",
            "tcp:host:5",
            "1.2.3.4",
            ":1.2.3.4:5",
        ] {
            assert!(bad.parse::<Flow>().is_err(), "{bad}");
        }
    }

    #[test]
    fn via_tokens_and_uri_values_name_transports_in_any_case() {
        assert_eq!(Transport::parse(b"udp"), Some(Transport::Udp));
        assert_eq!(Transport::parse(b"TLS"), Some(Transport::Tls));
        assert_eq!(Transport::parse(b"Wss"), Some(Transport::Wss));
        assert_eq!(Transport::parse(b"SCTP"), None);
        assert!(Transport::Ws.is_stream() && !Transport::Udp.is_stream());
    }
}
