//! Phones: REGISTER handed to the registrar (`handover-registrar`), digest
//! challenges of REGISTERs (401) and of calls from untrusted sources
//! (407), and calls to registered users: an AOR's live bindings become the
//! call's targets, each reached on the flow its REGISTER came from.

use handover_registrar::Registrar;
use handover_registrar::digest::{Check, Digest, Guard, Kind, Standing};

use super::*;

/// Where a B leg goes: a route's address, or a registered contact (its
/// URI as the Request-URI, reached through `route`: our Route naming the
/// flow, or the binding's Path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The address (a route's target, or the flow of a binding).
    pub addr: SocketAddr,
    /// The Request-URI when it is not `sip:USER@addr` (a binding's Contact).
    pub uri: Option<Vec<u8>>,
    /// Route header values for the request.
    pub route: Vec<Vec<u8>>,
    /// A route target over UDP that takes TCP too: an INVITE larger than
    /// this goes over TCP (`;tcp_above`, RFC 3261 §18.1.1).
    pub tcp_above: Option<u16>,
    /// A registered contact: an AOR's bindings ring together (parallel
    /// forking), where a route's targets are tried one after another.
    pub binding: bool,
}

/// Who a new call's caller is, as authentication found.
#[derive(Debug, Clone, Default)]
pub(super) struct Caller {
    /// The user its credentials proved (none: not challenged).
    pub user: Option<Vec<u8>>,
    /// The identity to assert for it when `Config::assert_identity` says
    /// so (`<sip:USER@REALM>`).
    pub asserted: Option<Vec<u8>>,
}

impl From<SocketAddr> for Target {
    fn from(addr: SocketAddr) -> Self {
        Self {
            addr,
            uri: None,
            route: Vec::new(),
            tcp_above: None,
            binding: false,
        }
    }
}

/// Whether `route` is our flow route (see `Target`): the dialog to a
/// registered phone keeps it as its route set.
pub(super) fn is_flow_route(route: &[u8]) -> bool {
    memchr::memmem::find(route, b";flow=").is_some()
}

/// Our dialog with the callee that answered our INVITE `invite` (whole, or
/// its head: `replica::invite_head` keeps its Route) with the 2xx `resp`.
/// A registered phone answers without a Record-Route (the edge adds none to
/// our requests): the dialog keeps reaching it on its flow.
pub(super) fn callee_dialog(invite: &[u8], resp: &Message<'_>) -> Option<Dialog> {
    let inv = scan(invite).ok()?;
    let mut d = Dialog::uac(&inv, resp).ok()?;
    if d.route_set().next().is_none()
        && let Some(r) = inv.values(HeaderName::Route).next()
        && is_flow_route(r.of(inv.buf()))
    {
        d.set_route_set(&[r.of(inv.buf())]);
    }
    Some(d)
}

impl<R: RngCore> B2bua<R> {
    /// Our Route to a registered phone: the edge, and the flow its
    /// REGISTER came on (with the edge that holds it, when edges name
    /// themselves: the request is sent there, see `poll_transmit`).
    pub(super) fn flow_route(
        &self,
        flow: &handover_sip::Flow,
        edge: Option<SocketAddr>,
    ) -> Vec<u8> {
        let f = flow.to_string();
        let fe = self.fe_param(&f, edge);
        format!("<sip:{};lr;flow={f}{fe}>", self.ep.cfg.advertised).into_bytes()
    }

    /// `;fe=IP:PORT~TAG` naming `edge` as the holder of `flow` (empty
    /// without an edge).
    fn fe_param(&self, flow: &str, edge: Option<SocketAddr>) -> String {
        edge.map_or_else(String::new, |e| {
            let e = e.to_string();
            let tag = self.ep.cfg.hashing.edge_tag(flow.as_bytes(), e.as_bytes());
            format!(";fe={e}~{}", String::from_utf8_lossy(&tag))
        })
    }

    /// Replaces the registrar (its settings, and whether its writes are
    /// replicated: see `handover_registrar::Registrar::new`).
    pub fn set_registrar(&mut self, registrar: Registrar) {
        self.ep.registrar = registrar;
    }

    /// The registrar (its counters; the shell's replication glue).
    pub fn registrar(&mut self) -> &mut Registrar {
        &mut self.ep.registrar
    }

    /// Turns digest authentication on (`None`: off).
    pub fn set_auth(&mut self, auth: Option<(Digest, Guard)>) {
        self.ep.auth = auth;
    }

    /// Replaces the users of digest authentication (the file changed).
    pub fn set_users(&mut self, users: handover_registrar::digest::Users) {
        if let Some((d, _)) = self.ep.auth.as_mut() {
            d.set_users(users);
        }
    }

    /// Writes out expired bindings of the AORs this worker owns.
    /// Writes out expired bindings of the AORs this worker owns, and pings
    /// those whose time has come (`Config::ping_interval_s`).
    pub fn sweep_registrations(&mut self, now: Instant, owned: impl Fn(u64) -> bool) {
        self.ep.registrar.sweep(now, &owned);
        for t in self.ep.registrar.due_pings(now, &owned) {
            let request = self.ping_request(&t);
            self.ep.registrar.ping(now, t, request);
        }
    }

    /// The OPTIONS that pings binding `t`: to its Contact, on its flow (or
    /// its Path), with our Via keyed by its AOR so the answer comes back
    /// to the AOR's owner.
    fn ping_request(&mut self, t: &handover_registrar::PingTarget) -> Vec<u8> {
        let via = self.ep.via(t.key);
        let call_id = self.ep.ids.call_id();
        let tag = self.ep.ids.tag();
        let route: Vec<Vec<u8>> = if t.binding.path.is_empty() {
            t.binding
                .flow
                .map(|f| self.flow_route(&f, t.binding.edge))
                .into_iter()
                .collect()
        } else {
            t.binding.path.iter().map(|p| p.to_vec()).collect()
        };
        let route: Vec<&[u8]> = route.iter().map(Vec::as_slice).collect();
        let from = format!("<sip:ping@{}>", self.ep.cfg.advertised);
        let mut to = b"<sip:".to_vec();
        to.extend_from_slice(&t.aor);
        to.push(b'>');
        handover_sip::build::Request {
            method: "OPTIONS",
            uri: &t.binding.contact,
            via: &[&via],
            from: from.as_bytes(),
            from_tag: tag.as_bytes(),
            to: &to,
            call_id: call_id.as_bytes(),
            cseq: 1,
            max_forwards: 70,
            route: &route,
            ..Default::default()
        }
        .to_vec()
    }

    /// Authentication failures by reason, and sources banned, so far.
    pub fn auth_stats(&self) -> AuthStats {
        self.ep.stats.auth
    }

    /// Sets the PBXs that are the registrars of some domains (relay mode,
    /// `handover_registrar::relay`).
    pub fn set_upstreams(&mut self, upstreams: handover_registrar::Upstreams) {
        self.ep.upstreams = upstreams;
    }

    pub(super) fn register(&mut self, now: Instant, m: &Message<'_>) {
        if self.ep.registrar.absorb(now, m) {
            return;
        }
        // The AOR's key (a To that does not parse: the registrar answers 400).
        let to = m.to().ok();
        let key = to.map_or(0, |t| self.ep.cfg.hashing.aor_key(t.uri()));
        // A domain whose registrar is a PBX: relayed, the PBX authenticates.
        if let Some(pbx) = to.and_then(|t| self.ep.upstreams.pick(t.uri().host(), key)) {
            let request = self.relayed_register(m, pbx, key);
            let tag = self.ep.ids.tag();
            self.ep.registrar.relay(now, m, request, tag.as_bytes());
            return;
        }
        // A REGISTER with a Contact writes bindings (a query does not).
        if self.ep.storage_full && m.headers().any(|h| h.name == HeaderName::Contact) {
            self.ep.stats.refused_storage += 1;
            let tag = self.ep.ids.tag();
            self.ep.refuse_overloaded(m, Some(tag.as_bytes()));
            return;
        }
        let Some(user) = self.authenticate(now, m, Kind::Www) else {
            return;
        };
        let tag = self.ep.ids.tag();
        self.ep
            .registrar
            .register(now, m, user.as_deref(), key, tag.as_bytes());
    }

    /// The REGISTER for the PBX `pbx` (see `handover_registrar::relay`):
    /// our Via alone (the edge's address with the AOR's key `key`), a
    /// Route to the PBX, our Path naming the phone's flow with its token
    /// on top of the phone's, `Supported: path`, and the phone's other
    /// headers as they came.
    fn relayed_register(&mut self, m: &Message<'_>, pbx: SocketAddr, key: u64) -> Vec<u8> {
        let buf = m.buf();
        let mut out = Vec::with_capacity(buf.len() + 256);
        out.extend_from_slice(b"REGISTER ");
        out.extend_from_slice(
            m.request_uri()
                .map_or(&b"sip:invalid"[..], |u| u.as_bytes()),
        );
        out.extend_from_slice(b" SIP/2.0\r\nVia: ");
        out.extend_from_slice(&self.ep.via(key));
        let mf = m.max_forwards().unwrap_or(70).saturating_sub(1);
        out.extend_from_slice(
            format!("\r\nRoute: <sip:{pbx};lr>\r\nMax-Forwards: {mf}\r\n").as_bytes(),
        );
        if let Some(flow) = m.vias().nth(1).and_then(|v| v.flow()) {
            let f = flow.to_string();
            let t = handover_registrar::relay::flow_token(&self.ep.cfg.hashing.secret(), &f);
            let fe = self.fe_param(&f, m.top_via().internal_edge());
            out.extend_from_slice(
                format!(
                    "Path: <sip:{};lr;flow={f}{fe};ft={t}>\r\n",
                    self.ep.cfg.advertised
                )
                .as_bytes(),
            );
        }
        let mut path_supported = false;
        for h in m.headers() {
            if matches!(
                h.name,
                HeaderName::Via
                    | HeaderName::Route
                    | HeaderName::MaxForwards
                    | HeaderName::ContentLength
            ) {
                continue;
            }
            if h.name == HeaderName::Supported
                && handover_sip::CommaValues::new(buf, h.value)
                    .any(|v| v.of(buf).eq_ignore_ascii_case(b"path"))
            {
                path_supported = true;
            }
            out.extend_from_slice(h.line.of(buf));
        }
        if !path_supported {
            out.extend_from_slice(b"Supported: path\r\n");
        }
        out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        out
    }

    /// Where an INVITE from a PBX goes when it is routed by one of our Path
    /// entries (relay mode): its top Route names the edge with a flow and
    /// that flow's token (the edge leaves such a Route on requests it
    /// forwards to us). The Request-URI is the phone's Contact; the flow
    /// is where its REGISTER came from. A flow without our token is not
    /// obeyed.
    pub(super) fn flow_target(&self, m: &Message<'_>) -> Option<Target> {
        let r = m.top_route()?.ok()?;
        let u = r.uri();
        let here = format!(
            "{}:{}",
            String::from_utf8_lossy(u.host()),
            u.port().unwrap_or(5060)
        );
        if here != self.ep.cfg.advertised {
            return None;
        }
        let flow = core::str::from_utf8(u.param(b"flow")?).ok()?;
        let token = u.param(b"ft")?;
        if !handover_registrar::relay::flow_token_ok(&self.ep.cfg.hashing.secret(), flow, token) {
            return None;
        }
        let addr = flow.parse::<handover_sip::Flow>().ok()?.addr;
        let route = m.values(HeaderName::Route).next()?.of(m.buf()).to_vec();
        Some(Target {
            addr,
            uri: Some(m.request_uri()?.as_bytes().to_vec()),
            route: vec![route],
            tcp_above: None,
            binding: true,
        })
    }

    /// A new call from an untrusted source must carry credentials for our
    /// realm (407 otherwise). `Some`: go on, with who the caller proved to
    /// be (see [`Caller`]).
    pub(super) fn authenticate_call(&mut self, now: Instant, m: &Message<'_>) -> Option<Caller> {
        let user = self.authenticate(now, m, Kind::Proxy)?;
        let realm = self.ep.auth.as_ref().map(|(d, _)| d.realm());
        let asserted = match (&user, realm) {
            (Some(u), Some(realm)) if self.ep.cfg.assert_identity => {
                let mut v = b"<sip:".to_vec();
                v.extend_from_slice(u);
                v.push(b'@');
                v.extend_from_slice(realm.as_bytes());
                v.push(b'>');
                Some(v)
            }
            _ => None,
        };
        Some(Caller { user, asserted })
    }

    /// Digest authentication of `m`: `Some(user)` to go on (`Some(None)`
    /// when nobody is challenged: off, or a trusted source), `None` when
    /// `m` was answered (a challenge, 403) or dropped (a banned source).
    fn authenticate(
        &mut self,
        now: Instant,
        m: &Message<'_>,
        kind: Kind,
    ) -> Option<Option<Vec<u8>>> {
        let source = sender_ip(m);
        let Some((digest, guard)) = self.ep.auth.as_mut() else {
            return Some(None);
        };
        if self.ep.cfg.trusted.contains(source) {
            return Some(None);
        }
        let now_s = self.ep.registrar.wall_ms(now) / 1000;
        let who = digest.username(m, kind);
        if source.is_some_and(|ip| guard.banned(ip, &who, now_s)) {
            self.ep.stats.auth.ignored += 1;
            return None;
        }
        let check = digest.check(m, kind, now_s);
        let stale = match check {
            Check::Ok(user) => {
                if let Some(ip) = source {
                    guard.pass(ip, &user);
                }
                return Some(Some(user));
            }
            Check::Missing => false,
            Check::Stale => true,
            Check::Failed(f) => {
                self.ep.stats.auth.count(f);
                let standing = source.map_or(Standing::Good, |ip| guard.fail(ip, &who, now_s));
                match standing {
                    Standing::Good => false,
                    Standing::Forbid => {
                        self.ep.stats.auth.banned += 1;
                        let t = self.ep.ids.tag();
                        self.answer_auth(now, m, kind, 403, t, &[]);
                        return None;
                    }
                    Standing::Ignore => {
                        self.ep.stats.auth.ignored += 1;
                        return None;
                    }
                }
            }
        };
        self.ep.stats.auth.challenges += 1;
        let values = digest.challenges(now_s, stale);
        let extra: Vec<(&str, &[u8])> = values
            .iter()
            .map(|v| (kind.challenge_header(), v.as_slice()))
            .collect();
        let t = self.ep.ids.tag();
        self.answer_auth(now, m, kind, kind.status(), t, &extra);
        None
    }

    /// An answer of the authentication step: a REGISTER's through the
    /// registrar (repeated to retransmissions), a call's directly (its ACK
    /// is absorbed like any ACK outside a call).
    fn answer_auth(
        &mut self,
        now: Instant,
        m: &Message<'_>,
        kind: Kind,
        status: u16,
        tag: Token,
        extra: &[(&str, &[u8])],
    ) {
        match kind {
            Kind::Www => self
                .ep
                .registrar
                .answer(now, m, status, None, tag.as_bytes(), extra),
            Kind::Proxy => {
                let mut b = Vec::new();
                response(
                    &m.reply_parts(),
                    status,
                    None,
                    Some(tag.as_bytes()),
                    extra,
                    &mut b,
                );
                self.ep.out.push_back((via_target(m), b));
            }
        }
    }

    /// Where a call to `uri` goes: the live bindings of its AOR, best
    /// first, when it has any; else the routes.
    pub(super) fn locate(
        &self,
        now: Instant,
        uri: Option<&handover_sip::Uri<'_>>,
        key: u64,
    ) -> (Vec<Target>, Option<TransferMode>) {
        let user = uri.and_then(|u| u.user()).unwrap_or_default();
        let host = uri.map_or(&b""[..], |u| u.host());
        if let Some(u) = uri {
            let bindings = self.ep.registrar.targets(
                self.ep.cfg.hashing.aor_key(u),
                &handover_sip::ids::aor(u),
                now,
            );
            let targets: Vec<Target> = bindings
                .into_iter()
                .filter_map(|b| {
                    let flow = b
                        .flow
                        .or_else(|| uri_target(&b.contact).map(handover_sip::Flow::udp))?;
                    let addr = flow.addr;
                    let route = if b.path.is_empty() {
                        vec![self.flow_route(&flow, b.edge)]
                    } else {
                        b.path.iter().map(|p| p.to_vec()).collect()
                    };
                    Some(Target {
                        addr,
                        uri: Some(b.contact.to_vec()),
                        route,
                        tcp_above: None,
                        binding: true,
                    })
                })
                .collect();
            if !targets.is_empty() {
                return (targets, None);
            }
        }
        let (addrs, mode) = self.ep.cfg.routes.lookup(user, host, key);
        let transport = self.ep.cfg.routes.transport(user, host);
        let tls_name = self.ep.cfg.routes.tls_name(user, host);
        let tcp_above = self.ep.cfg.routes.tcp_above(user, host);
        let user = String::from_utf8_lossy(user);
        let targets = addrs
            .into_iter()
            .map(|addr| {
                // A route over TCP, TLS or WebSocket: the Request-URI says
                // so, and the edge opens (and reuses) a connection to the
                // target; over TLS with a name, the name is the host (what
                // the target's certificate carries) and the address
                // `maddr`. WebSocket on TLS is `sips:` with `transport=ws`
                // (RFC 7118 §5.2).
                use handover_sip::Transport as T;
                let uri = match (transport, tls_name) {
                    (T::Tcp | T::Ws, _) => {
                        format!("sip:{user}@{addr};transport={}", transport.uri_param())
                    }
                    (T::Tls, None) => format!("sip:{user}@{addr};transport=tls"),
                    (T::Wss, None) => format!("sips:{user}@{addr};transport=ws"),
                    (T::Tls | T::Wss, Some(n)) => format!(
                        "{}:{user}@{n}:{};maddr={};transport={}",
                        if transport == T::Wss { "sips" } else { "sip" },
                        addr.port(),
                        addr.ip(),
                        transport.uri_param()
                    ),
                    _ => {
                        return Target {
                            tcp_above,
                            ..Target::from(addr)
                        };
                    }
                };
                Target {
                    addr,
                    uri: Some(uri.into_bytes()),
                    route: Vec::new(),
                    tcp_above: None,
                    binding: false,
                }
            })
            .collect();
        (targets, mode)
    }
}

/// The address of a URI with an IP literal host (5060 when no port).
fn uri_target(uri: &[u8]) -> Option<SocketAddr> {
    let u = handover_sip::Uri::parse(uri, handover_sip::Span::new(0, uri.len())).ok()?;
    let ip: IpAddr = core::str::from_utf8(u.host()).ok()?.parse().ok()?;
    Some(SocketAddr::new(ip, u.port().unwrap_or(5060)))
}

/// Authentication counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuthStats {
    /// Challenges sent (401/407).
    pub challenges: u64,
    /// Failures: no such user.
    pub unknown_user: u64,
    /// Failures: a wrong password.
    pub wrong_password: u64,
    /// Failures: credentials that do not parse.
    pub malformed: u64,
    /// Failures: a nonce we did not make.
    pub bad_nonce: u64,
    /// Sources answered 403 and banned for a while.
    pub banned: u64,
    /// Requests of banned sources dropped.
    pub ignored: u64,
}

impl AuthStats {
    fn count(&mut self, f: handover_registrar::digest::Failure) {
        use handover_registrar::digest::Failure as F;
        match f {
            F::UnknownUser => self.unknown_user += 1,
            F::WrongPassword => self.wrong_password += 1,
            F::Malformed => self.malformed += 1,
            F::BadNonce => self.bad_nonce += 1,
        }
    }
}

impl Call {
    /// A B leg (the main one, or fork `fork`) failed with `status`: when
    /// it is `430 Flow Failed` (the edge no longer holds the registered
    /// phone's connection, RFC 5626 §5.3) the binding it went to is
    /// dropped, and the caller hears `480 Temporarily Unavailable`
    /// instead (430 is for the phone's own edge, not a caller). Returns
    /// the status that counts for the caller.
    pub(super) fn leg_failed<R: RngCore>(
        &mut self,
        ep: &mut Endpoint<R>,
        now: Instant,
        fork: Option<usize>,
        status: u16,
    ) -> u16 {
        if status != 430 {
            return status;
        }
        let invite = match fork {
            None => Some(self.legs.b.invite.clone()),
            Some(i) => self.forks.get(i).map(|f| f.invite.clone()),
        };
        if let Some(inv) = invite
            && let Ok(m) = scan(&inv)
            && m.values(HeaderName::Route)
                .next()
                .is_some_and(|r| is_flow_route(r.of(m.buf())))
            && let (Ok(to), Some(contact)) = (m.to(), m.request_uri())
        {
            let key = ep.cfg.hashing.aor_key(to.uri());
            let aor = handover_sip::ids::aor(to.uri());
            ep.registrar.flow_failed(now, key, &aor, contact.as_bytes());
        }
        480
    }
}
