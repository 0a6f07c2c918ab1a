//! One Via value (RFC 3261 §20.42, RFC 3581 `rport`).

use crate::lex::{Param, Params, Span, is_lws, is_token, parse_u64, trim, valid_host};

/// The RFC 3261 branch prefix (§8.1.1.7).
pub const MAGIC_COOKIE: &[u8] = b"z9hG4bK";

/// State of the `rport` parameter (RFC 3581).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rport {
    /// No `rport` parameter.
    Absent,
    /// `rport` without a value: the client asks for it to be filled.
    Requested,
    /// `rport=N`.
    Value(u16),
}

/// One parsed Via value.
#[derive(Debug, Clone, Copy)]
pub struct Via<'a> {
    buf: &'a [u8],
    span: Span,
    transport: Span,
    host: Span,
    port: Option<u16>,
    params: Span,
}

impl<'a> Via<'a> {
    /// Parses the Via value that `span` of `buf` covers (one value, not a
    /// comma list). `None` when it is not a SIP/2.0 Via with a valid sent-by.
    pub fn parse(buf: &'a [u8], span: Span) -> Option<Self> {
        let span = trim(buf, span);
        let end = span.end;
        // Fast path for the usual shape, `SIP/2.0/UDP host...`: no LWS
        // inside the protocol; the general grammar below handles the rest.
        let v = span.of(buf);
        let mut p = span.start;
        let mut transport = None;
        if v.len() > 12 && v[..8].eq_ignore_ascii_case(b"SIP/2.0/") {
            let t0 = span.start + 8;
            let mut t1 = t0;
            while t1 < end && is_token(buf[t1]) {
                t1 += 1;
            }
            if t1 > t0 && t1 < end && buf[t1] == b' ' {
                transport = Some(Span::new(t0, t1));
                p = t1;
            }
        }
        let token = |p: &mut usize| -> Option<Span> {
            while *p < end && is_lws(buf[*p]) {
                *p += 1;
            }
            let s = *p;
            while *p < end && (is_token(buf[*p])) {
                *p += 1;
            }
            (*p > s).then(|| Span::new(s, *p))
        };
        let slash = |p: &mut usize| -> Option<()> {
            while *p < end && is_lws(buf[*p]) {
                *p += 1;
            }
            (*p < end && buf[*p] == b'/').then(|| *p += 1)
        };
        let transport = match transport {
            Some(t) => t,
            None => {
                let proto = token(&mut p)?;
                slash(&mut p)?;
                let version = token(&mut p)?;
                slash(&mut p)?;
                let transport = token(&mut p)?;
                if !proto.of(buf).eq_ignore_ascii_case(b"SIP") || version.of(buf) != b"2.0" {
                    return None;
                }
                transport
            }
        };
        // sent-by: LWS, then host[:port] up to ';' or LWS or end.
        let before = p;
        while p < end && is_lws(buf[p]) {
            p += 1;
        }
        if p == before {
            return None;
        }
        let sb_start = p;
        let (host, after) = if buf.get(p) == Some(&b'[') {
            let close = memchr::memchr(b']', &buf[p..end])?;
            (Span::new(p, p + close + 1), p + close + 1)
        } else {
            while p < end && !matches!(buf[p], b':' | b';') && !is_lws(buf[p]) {
                p += 1;
            }
            (Span::new(sb_start, p), p)
        };
        let host_ok = valid_host(host.of(buf));
        if !host_ok {
            return None;
        }
        p = after;
        while p < end && is_lws(buf[p]) {
            p += 1;
        }
        let mut port = None;
        if p < end && buf[p] == b':' {
            p += 1;
            while p < end && is_lws(buf[p]) {
                p += 1;
            }
            let ps = p;
            while p < end && buf[p].is_ascii_digit() {
                p += 1;
            }
            port = Some(parse_u64(&buf[ps..p], 65535)? as u16);
            while p < end && is_lws(buf[p]) {
                p += 1;
            }
        }
        if p < end && buf[p] != b';' {
            return None;
        }
        let via = Via {
            buf,
            span,
            transport,
            host,
            port,
            params: Span::new(p, end),
        };
        // One pass: every parameter needs a token name; branch, if present,
        // needs a value.
        for prm in via.params() {
            let name = prm.name.of(buf);
            if !name.iter().all(|&b| is_token(b)) {
                return None;
            }
            if name.eq_ignore_ascii_case(b"branch") && prm.value.is_none_or(|v| v.is_empty()) {
                return None;
            }
        }
        Some(via)
    }

    /// The whole value.
    pub fn span(&self) -> Span {
        self.span
    }

    /// Transport token (`UDP`, `TCP`, …) as written.
    pub fn transport(&self) -> &'a [u8] {
        self.transport.of(self.buf)
    }

    /// Where the transport token is (to rewrite it).
    pub fn transport_span(&self) -> Span {
        self.transport
    }

    /// The flow a response to this Via goes back on: its transport (UDP
    /// when the token is unknown) and [`Via::target`].
    pub fn flow(&self) -> Option<crate::Flow> {
        Some(crate::Flow::new(
            crate::Transport::parse(self.transport()).unwrap_or_default(),
            self.target()?,
        ))
    }

    /// Where a worker sends its answer to a request the edge forwarded:
    /// the edge's own address when the edge wrote one (`;fe=IP:PORT`,
    /// which edges that share one advertised address add, so the answer
    /// reaches the edge that holds the phone's flow), else
    /// [`Via::target`]. Only for the edge's own Via, which the worker
    /// trusts; never read from a client's.
    pub fn edge_target(&self) -> Option<std::net::SocketAddr> {
        self.internal_edge().or_else(|| self.target())
    }

    /// The edge's own address inside the cluster, when its Via names one
    /// (`;fe=IP:PORT`; see [`Via::edge_target`]).
    pub fn internal_edge(&self) -> Option<std::net::SocketAddr> {
        self.param(b"fe")
            .and_then(|p| p.value)
            .and_then(|v| core::str::from_utf8(v.of(self.buf)).ok()?.parse().ok())
    }

    /// sent-by host (IPv6 with brackets).
    pub fn host(&self) -> &'a [u8] {
        self.host.of(self.buf)
    }

    /// sent-by port, if written.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// Span of the parameters (from the first `;` to the end of the value).
    pub fn params_span(&self) -> Span {
        self.params
    }

    /// The parameters.
    pub fn params(&self) -> Params<'a> {
        Params::new(self.buf, self.params)
    }

    /// A parameter by name.
    pub fn param(&self, name: &[u8]) -> Option<Param> {
        self.params().get(name)
    }

    /// The `branch` parameter.
    pub fn branch(&self) -> Option<&'a [u8]> {
        self.param(b"branch")
            .and_then(|p| p.value)
            .map(|v| v.of(self.buf))
    }

    /// The `received` parameter.
    pub fn received(&self) -> Option<&'a [u8]> {
        self.param(b"received")
            .and_then(|p| p.value)
            .map(|v| v.of(self.buf))
    }

    /// The `rport` parameter.
    pub fn rport(&self) -> Rport {
        match self.param(b"rport") {
            None => Rport::Absent,
            Some(Param { value: None, .. }) => Rport::Requested,
            Some(Param { value: Some(v), .. }) => match parse_u64(v.of(self.buf), 65535) {
                Some(n) => Rport::Value(n as u16),
                None => Rport::Requested,
            },
        }
    }

    /// Where a response to this Via goes (RFC 3261 §18.2.2, RFC 3581 §4):
    /// `received` if it is an IP address (else the sent-by host, when that
    /// is one), and `rport`'s value (else the sent-by port, else 5060).
    /// `None` when neither names an IP: the sender must be looked up, and
    /// this layer resolves no names.
    pub fn target(&self) -> Option<std::net::SocketAddr> {
        let ip = self
            .received()
            .and_then(ip_literal)
            .or_else(|| ip_literal(self.host()))?;
        let port = match self.rport() {
            Rport::Value(p) => p,
            _ => self.port().unwrap_or(5060),
        };
        Some(std::net::SocketAddr::new(ip, port))
    }

    /// True when the branch starts with the RFC 3261 magic cookie.
    pub fn is_rfc3261_branch(&self) -> bool {
        self.branch().is_some_and(|b| b.starts_with(MAGIC_COOKIE))
    }
}

/// An IP address, IPv6 in brackets or not.
fn ip_literal(host: &[u8]) -> Option<std::net::IpAddr> {
    let h = host
        .strip_prefix(b"[")
        .and_then(|h| h.strip_suffix(b"]"))
        .unwrap_or(host);
    core::str::from_utf8(h).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3581_4_responses_go_to_received_and_rport() {
        let t = |s: &str| v(s).unwrap().target().map(|a| a.to_string());
        assert_eq!(
            t("SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1").as_deref(),
            Some("10.0.0.1:5060")
        );
        assert_eq!(
            t("SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK1;received=192.0.2.9;rport=6000").as_deref(),
            Some("192.0.2.9:6000")
        );
        assert_eq!(
            t("SIP/2.0/UDP [2001:db8::1]:5071;branch=z9hG4bK1").as_deref(),
            Some("[2001:db8::1]:5071")
        );
        // A received that is no IP falls back to the sent-by host.
        assert_eq!(
            t("SIP/2.0/UDP 10.0.0.1:5070;received=x;branch=z9hG4bK1").as_deref(),
            Some("10.0.0.1:5070")
        );
        assert_eq!(t("SIP/2.0/UDP pbx.example;branch=z9hG4bK1"), None);
    }

    fn v(s: &str) -> Option<Via<'_>> {
        Via::parse(s.as_bytes(), Span::new(0, s.len()))
    }

    #[test]
    fn plain() {
        let x = v("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK776;rport").unwrap();
        assert_eq!(x.transport(), b"UDP");
        assert_eq!(x.host(), b"10.0.0.1");
        assert_eq!(x.port(), Some(5060));
        assert_eq!(x.branch(), Some(&b"z9hG4bK776"[..]));
        assert_eq!(x.rport(), Rport::Requested);
        assert!(x.is_rfc3261_branch());
    }

    #[test]
    fn lws_everywhere_and_ipv6() {
        let x = v("SIP / 2.0 / TCP\r\n  [2001:db8::9:1] : 5070 ;received=1.2.3.4;rport=9").unwrap();
        assert_eq!(x.transport(), b"TCP");
        assert_eq!(x.host(), b"[2001:db8::9:1]");
        assert_eq!(x.port(), Some(5070));
        assert_eq!(x.received(), Some(&b"1.2.3.4"[..]));
        assert_eq!(x.rport(), Rport::Value(9));
        assert_eq!(x.branch(), None);
    }

    #[test]
    fn rejects() {
        for bad in [
            "SIP/3.0/UDP h",
            "SIP/2.0/UDP",
            "SIP/2.0/UDPh",
            "SIP/2.0/UDP h:99999",
            "SIP/2.0/UDP h;branch=",
            "SIP/2.0/UDP h;branch",
            "SIP/2.0/UDP h x",
            "SIP/2.0/UDP [::1",
            "SIP/2.0/UDP h:5060 junk",
            "HTTP/2.0/UDP h",
        ] {
            assert!(v(bad).is_none(), "{bad}");
        }
    }
}
