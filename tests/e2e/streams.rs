//! SIP over TCP and TLS at the edge (issue 18), with real peers: SIPp over
//! TCP (`-t t1`, one connection for every call; `-t tn`, one per call)
//! through the edge alone and through `handover up`; a TLS client that
//! verifies the edge's certificate against a CA the test made; abuse of
//! the stream listeners (a TLS handshake of garbage, a 10 MB
//! Content-Length, a half-sent message, 10,000 idle connections from one
//! address) refused and counted while calls from elsewhere go on; and a
//! registered phone whose connection is gone: `430 Flow Failed` from the
//! edge, its binding dropped, the caller told 480. (Phones on TLS and TCP
//! doing the handset guide's transfer: `phones.rs`.)

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_rustls::rustls;

use crate::phones::test_ca;
use crate::support::*;

/// Waits until the edge at `admin` is ready (a backend is up).
fn wait_ready(admin: &str) {
    let ok = wait_for(Duration::from_secs(10), || {
        http_get(&format!("{admin}/readyz")).0 == 200
    });
    assert!(ok, "the edge became ready");
}

/// 20 SIPp calls to user `b` through `target` with these flags; all must
/// succeed.
fn twenty_calls(dir: &Path, target: SocketAddr, flags: &[&str]) {
    let (p, stat) = sipp_uac_on(dir, "127.0.0.1", "uac.xml", "b", target, (20, 20, 0), flags);
    let r = finish_uac(p, &stat);
    assert_eq!(
        (r.successful, r.failed),
        (20, 0),
        "{target} {flags:?}: {r:?}"
    );
}

#[test]
fn sipp_over_tcp_on_one_connection_and_one_per_call_through_the_edge_and_up() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    // The edge alone, in front of a SIPp callee on UDP.
    let port = free_udp_port();
    let mut uas = sipp_uas_probed(dir.path(), port);
    let backend = format!("127.0.0.1:{port}");
    let e = spawn_edge(&[
        "--backend",
        &backend,
        "--listen-tcp",
        "127.0.0.1:0",
        "--probe-interval-ms",
        "500",
        "--probe-timeout-ms",
        "300",
    ]);
    wait_ready(&e.admin);
    let tcp = e.tcp.expect("the edge prints its TCP listener");
    let one = ["-t", "t1"];
    let many = ["-t", "tn", "-max_socket", "100"];
    for flags in [&one[..], &many[..]] {
        twenty_calls(dir.path(), tcp, flags);
    }
    // Every callee leg got its BYE.
    uas.expect_calls(40);
    let m = scrape(&e);
    assert_eq!(
        metric(
            &m,
            "handover_edge_connections_opened_total{transport=\"tcp\"}"
        ),
        21.0,
        "one connection for -t t1, one per call for -t tn: {m}"
    );
    // INVITE, ACK, BYE per call, and nothing refused.
    assert!(metric(&m, "handover_edge_stream_messages_total{transport=\"tcp\"}") >= 120.0);

    // Through `handover up` (TCP on the SIP port).
    let port = free_udp_port();
    let mut uas = sipp_uas(dir.path(), port);
    let c = cluster(&[format!("b=127.0.0.1:{port}")], &[]);
    let target: SocketAddr = format!("127.0.0.1:{}", c.sip).parse().unwrap();
    for flags in [&one[..], &many[..]] {
        twenty_calls(dir.path(), target, flags);
    }
    uas.expect_calls(40);
}

/// A rustls client configuration trusting `ca` only.
fn client_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// An INVITE the edge answers itself (483: Max-Forwards is 0), sent on
/// a connection from `local` with `transport` in its Via.
fn invite_mf0(transport: &str, local: SocketAddr) -> String {
    format!(
        "INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/{transport} {local};branch=z9hG4bK-s1\r\n\
Max-Forwards: 0\r\nTo: <sip:bob@example.com>\r\nFrom: <sip:alice@example.com>;tag=a1\r\n\
Call-ID: streams-1@test\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{local};transport=tls>\r\n\
Content-Length: 0\r\n\r\n"
    )
}

/// Reads from `s` until a whole SIP message (no body) or `within`.
fn read_message(s: &mut impl std::io::Read, within: Duration) -> String {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    while Instant::now() < deadline && !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// True when the peer closed `s` within `within` (a read returns 0 or
/// fails).
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + within;
    let mut b = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn tls_is_verified_against_the_test_ca_and_stream_abuse_is_refused_while_calls_go_on() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_ca(dir.path());
    let port = free_udp_port();
    let mut uas = sipp_uas_probed(dir.path(), port);
    let backend = format!("127.0.0.1:{port}");
    let (cert_s, key_s) = (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    );
    let e = spawn_edge(&[
        "--backend",
        &backend,
        "--listen-tcp",
        "127.0.0.1:0",
        "--listen-tls",
        "127.0.0.1:0",
        "--tls-cert",
        &cert_s,
        "--tls-key",
        &key_s,
        "--probe-interval-ms",
        "500",
        "--probe-timeout-ms",
        "300",
        "--stream-message-timeout-ms",
        "1500",
        "--max-connections-per-source",
        "50",
    ]);
    wait_ready(&e.admin);
    let (tcp, tls) = (e.tcp.unwrap(), e.tls.unwrap());

    // A client that trusts the test CA reaches the edge by name, and the
    // edge answers it on that connection.
    let sock = TcpStream::connect(tls).unwrap();
    let local = sock.local_addr().unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(client_config(&ca), name).unwrap();
    let mut s = rustls::StreamOwned::new(conn, sock);
    s.sock
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    s.write_all(invite_mf0("TLS", local).as_bytes()).unwrap();
    let answer = read_message(&mut s, Duration::from_secs(5));
    assert!(
        answer.starts_with("SIP/2.0 483 "),
        "483 over TLS: {answer:?}"
    );
    let suite = s.conn.negotiated_cipher_suite().unwrap();
    assert!(format!("{:?}", suite.version()).contains("TLSv1_3"));
    // A client that trusts another CA refuses the edge.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let (other_ca, _, _) = test_ca(&other);
    let sock = TcpStream::connect(tls).unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(client_config(&other_ca), name).unwrap();
    let mut s2 = rustls::StreamOwned::new(conn, sock);
    let err = s2
        .write_all(invite_mf0("TLS", local).as_bytes())
        .and_then(|()| s2.flush())
        .err()
        .map(|e| e.to_string());
    assert!(
        err.as_deref()
            .is_some_and(|e| e.contains("invalid peer certificate")),
        "a certificate from an unknown CA is refused: {err:?}"
    );

    // Garbage instead of a TLS handshake: closed, counted.
    let mut g = TcpStream::connect(tls).unwrap();
    g.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(
        closed_within(&mut g, Duration::from_secs(5)),
        "garbage handshake closed"
    );
    // A 10 MB Content-Length on TCP: closed from the header, no body read.
    let mut big = TcpStream::connect(tcp).unwrap();
    big.write_all(
        b"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bK-big\r\n\
Content-Length: 10000000\r\n\r\n",
    )
    .unwrap();
    assert!(
        closed_within(&mut big, Duration::from_secs(5)),
        "10 MB refused"
    );
    // Half a message held open: closed at the message deadline (1.5 s).
    let mut half = TcpStream::connect(tcp).unwrap();
    half.write_all(b"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1")
        .unwrap();
    assert!(
        closed_within(&mut half, Duration::from_secs(6)),
        "a half-sent message is not waited for forever"
    );

    // 10,000 idle connections from 127.0.0.1: 50 are taken (and closed
    // at their first-message deadline), the rest refused at once; calls
    // over TCP from 127.0.0.2 go on meanwhile.
    let limit = handover_io::raise_fd_limit().unwrap_or(0);
    assert!(
        limit >= 10_500,
        "this test holds 10,000 connections: the open-file limit is {limit}"
    );
    let mut idle = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        match TcpStream::connect(tcp) {
            Ok(c) => idle.push(c),
            Err(e) => panic!("connection {} of the flood: {e}", idle.len()),
        }
    }
    let (p, stat) = sipp_uac_on(
        dir.path(),
        "127.0.0.2",
        "uac.xml",
        "b",
        tcp,
        (20, 20, 0),
        &["-t", "t1"],
    );
    let r = finish_uac(p, &stat);
    assert_eq!(
        (r.successful, r.failed),
        (20, 0),
        "calls from another address during the flood: {r:?}"
    );
    drop(idle);
    uas.expect_calls(20);
    let refused =
        "handover_edge_connections_refused_total{transport=\"tcp\",reason=\"source_limit\"}";
    let counted = wait_for(Duration::from_secs(10), || {
        metric(&scrape(&e), refused) >= 9_000.0
    });
    let m = scrape(&e);
    assert!(counted, "the flood beyond 50 was refused: {m}");
    for (series, at_least) in [
        ("handover_edge_tls_handshake_failures_total", 2.0),
        (
            "handover_edge_connections_closed_total{transport=\"tcp\",reason=\"too_large\"}",
            1.0,
        ),
        (
            "handover_edge_connections_closed_total{transport=\"tcp\",reason=\"message_timeout\"}",
            1.0,
        ),
        ("handover_edge_replies_total{status=\"483\"}", 1.0),
    ] {
        assert!(metric(&m, series) >= at_least, "{series}: {m}");
    }
}

/// Issue 18's 430: a phone registered over TCP whose connection is gone.
/// A call to it: the edge answers the worker's INVITE `430 Flow Failed`,
/// the worker drops the binding and tells the caller 480.
#[test]
fn a_call_to_a_phone_whose_connection_is_gone_gets_430_at_the_worker_and_480_at_the_caller() {
    let _g = serial();
    let c = cluster(&[], &[]);
    let edge: SocketAddr = format!("127.0.0.1:{}", c.sip).parse().unwrap();
    // The phone: REGISTER over TCP, 200, then its connection closes.
    let mut phone = TcpStream::connect(edge).unwrap();
    phone
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let local = phone.local_addr().unwrap();
    phone
        .write_all(
            format!(
                "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bK-r1\r\n\
Max-Forwards: 70\r\nTo: <sip:dora@example.com>\r\nFrom: <sip:dora@example.com>;tag=d1\r\n\
Call-ID: reg-dora@test\r\nCSeq: 1 REGISTER\r\nContact: <sip:dora@{local};transport=tcp>\r\n\
Expires: 600\r\nContent-Length: 0\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
    let ok = read_message(&mut phone, Duration::from_secs(5));
    assert!(ok.starts_with("SIP/2.0 200 "), "registered: {ok:?}");
    drop(phone);
    let gone = wait_for(Duration::from_secs(5), || {
        metric(
            &scrape_at(&c.admin),
            "handover_edge_connections{transport=\"tcp\"}",
        ) == 0.0
    });
    assert!(gone, "the edge saw the connection close");

    // A caller on UDP calls dora.
    let caller = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    caller
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let me = caller.local_addr().unwrap();
    let invite = format!(
        "INVITE sip:dora@example.com SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-c1;rport\r\n\
Max-Forwards: 70\r\nTo: <sip:dora@example.com>\r\nFrom: <sip:ed@example.com>;tag=e1\r\n\
Call-ID: call-dora@test\r\nCSeq: 1 INVITE\r\nContact: <sip:ed@{me}>\r\nContent-Length: 0\r\n\r\n"
    );
    caller.send_to(invite.as_bytes(), edge).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut finals = Vec::new();
    let mut b = [0u8; 4096];
    while Instant::now() < deadline && finals.is_empty() {
        if let Ok((n, _)) = caller.recv_from(&mut b) {
            let text = String::from_utf8_lossy(&b[..n]).into_owned();
            let status: u16 = text[8..11].parse().unwrap_or(0);
            if status >= 200 {
                finals.push(text);
            }
        }
    }
    let answer = finals.first().cloned().unwrap_or_default();
    assert!(
        answer.starts_with("SIP/2.0 480 "),
        "the caller hears 480: {answer:?}"
    );
    // ACK the 480 (its To tag), as a caller does.
    let to_tag = answer
        .lines()
        .find(|l| l.starts_with("To:"))
        .and_then(|l| l.split("tag=").nth(1))
        .unwrap_or("")
        .trim()
        .to_string();
    let ack = format!(
        "ACK sip:dora@example.com SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-c1;rport\r\n\
Max-Forwards: 70\r\nTo: <sip:dora@example.com>;tag={to_tag}\r\nFrom: <sip:ed@example.com>;tag=e1\r\n\
Call-ID: call-dora@test\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    );
    caller.send_to(ack.as_bytes(), edge).unwrap();
    // (The edge's data plane flushes its counters every 100 ms.)
    let answered = wait_for(Duration::from_secs(2), || {
        metric(
            &scrape_at(&c.admin),
            "handover_edge_replies_total{status=\"430\"}",
        ) == 1.0
    });
    assert!(answered, "the edge answered 430: {}", scrape_at(&c.admin));
    let dropped = wait_for(Duration::from_secs(5), || {
        let w = http_get(&format!("http://{}/metrics", c.worker_admin)).1;
        metric(&w, "handover_bindings_total{event=\"flow_failed\"}") == 1.0
            && metric(&w, "handover_registrations_active") == 0.0
    });
    assert!(
        dropped,
        "the worker dropped the binding: {}",
        http_get(&format!("http://{}/metrics", c.worker_admin)).1
    );
}

/// The metrics text of the process whose admin address is `admin`.
fn scrape_at(admin: &str) -> String {
    http_get(&format!("http://{admin}/metrics")).1
}

/// A PROXY protocol v2 header (TCP over IPv4) naming `client` as the
/// source, as a cloud load balancer sends it first on a connection.
fn proxy_v2(client: SocketAddr, to: SocketAddr) -> Vec<u8> {
    let (std::net::IpAddr::V4(c), std::net::IpAddr::V4(d)) = (client.ip(), to.ip()) else {
        panic!("IPv4 here")
    };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&c.octets());
    h.extend_from_slice(&d.octets());
    h.extend_from_slice(&client.port().to_be_bytes());
    h.extend_from_slice(&to.port().to_be_bytes());
    h
}

/// Behind a load balancer that speaks the PROXY protocol: the edge takes
/// the client's address from the header (in the Via it writes
/// `received`/`rport`, and the flow in its Record-Route), and the answer
/// goes back down the balancer's connection. A trusted balancer's
/// connection without a header is refused; the header from anyone else
/// is not believed.
#[test]
fn behind_a_load_balancer_the_proxy_protocol_names_the_client() {
    let _g = serial();
    // The backend is this test: it reads what the edge forwards.
    let backend = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    backend
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let b = backend.local_addr().unwrap().to_string();
    let e = spawn_edge(&[
        "--backend",
        &b,
        "--probe-interval-ms",
        "0",
        "--listen-tcp",
        "127.0.0.1:0",
        "--proxy-protocol-from",
        "127.0.0.1/32",
    ]);
    let tcp = e.tcp.unwrap();
    let client: SocketAddr = "203.0.113.9:40000".parse().unwrap();
    let mut lb = TcpStream::connect(tcp).unwrap();
    lb.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    lb.write_all(&proxy_v2(client, tcp)).unwrap();
    let invite = "INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/TCP 10.1.1.1:5060;branch=z9hG4bK-lb1\r\n\
Max-Forwards: 70\r\nTo: <sip:bob@example.com>\r\nFrom: <sip:alice@example.com>;tag=a1\r\n\
Call-ID: lb-1@test\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@10.1.1.1;transport=tcp>\r\n\
Content-Length: 0\r\n\r\n";
    lb.write_all(invite.as_bytes()).unwrap();
    let mut buf = [0u8; 4096];
    let (n, edge_udp) = backend
        .recv_from(&mut buf)
        .expect("the edge forwards the INVITE");
    let fwd = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        fwd.contains(
            "SIP/2.0/TCP 10.1.1.1:5060;branch=z9hG4bK-lb1;received=203.0.113.9;rport=40000"
        ),
        "the client's address from the header: {fwd}"
    );
    assert!(fwd.contains("flow=tcp:203.0.113.9:40000>"), "{fwd}");
    // The backend's answer goes down the balancer's connection.
    let ok = fwd
        .replacen(
            "INVITE sip:bob@example.com SIP/2.0",
            "SIP/2.0 486 Busy Here",
            1,
        )
        .replace(
            "To: <sip:bob@example.com>",
            "To: <sip:bob@example.com>;tag=b1",
        );
    backend.send_to(ok.as_bytes(), edge_udp).unwrap();
    let answer = read_message(&mut lb, Duration::from_secs(5));
    assert!(answer.starts_with("SIP/2.0 486 "), "{answer:?}");
    // The balancer's connection without a header: refused.
    let mut bare = TcpStream::connect(tcp).unwrap();
    bare.write_all(invite.as_bytes()).unwrap();
    assert!(closed_within(&mut bare, Duration::from_secs(5)));
    let m = scrape(&e);
    assert_eq!(
        metric(
            &m,
            "handover_edge_proxy_protocol_refused_total{transport=\"tcp\"}"
        ),
        1.0,
        "{m}"
    );
    // From an address not trusted (127.0.0.2), a header is not believed:
    // it is read as SIP, and what it prefixes is not SIP.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.2:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    sock.connect(&tcp.into()).unwrap();
    let mut liar: TcpStream = sock.into();
    liar.write_all(&proxy_v2(client, tcp)).unwrap();
    liar.write_all(invite.as_bytes()).unwrap();
    backend
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    assert!(
        backend.recv_from(&mut buf).is_err(),
        "nothing forwarded from the untrusted header's connection"
    );
}

/// A CA of the test's own, which signs server and client certificates.
struct TestCa {
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        let pem = p.self_signed(&key).unwrap().pem();
        Self {
            pem,
            issuer: rcgen::Issuer::new(p, key),
        }
    }

    /// (certificate, key) PEMs for `names`, for a server or a client.
    fn leaf(&self, names: &[&str], client: bool) -> (String, String) {
        self.leaf_for(
            names,
            vec![if client {
                rcgen::ExtendedKeyUsagePurpose::ClientAuth
            } else {
                rcgen::ExtendedKeyUsagePurpose::ServerAuth
            }],
        )
    }

    /// (certificate, key) PEMs for `names` with these key usages.
    fn leaf_for(
        &self,
        names: &[&str],
        usages: Vec<rcgen::ExtendedKeyUsagePurpose>,
    ) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.extended_key_usages = usages;
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A TLS client trusting `ca` (PEM), presenting `cert` if given; sends
/// an INVITE the edge answers itself (483) and returns the answer or
/// the error.
fn tls_try(tls: SocketAddr, ca: &str, cert: Option<&(String, String)>) -> Result<String, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let cfg = match cert {
        None => b.with_no_client_auth(),
        Some((c, k)) => b
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(c.as_bytes())
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_slice(k.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    let sock = TcpStream::connect(tls).map_err(|e| e.to_string())?;
    let local = sock.local_addr().unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let mut s = rustls::StreamOwned::new(conn, sock);
    s.write_all(invite_mf0("TLS", local).as_bytes())
        .and_then(|()| s.flush())
        .map_err(|e| e.to_string())?;
    let answer = read_message(&mut s, Duration::from_secs(3));
    if answer.is_empty() {
        // The server's refusal arrives as an alert on the read side.
        let mut b = [0u8; 1];
        return Err(s
            .read(&mut b)
            .err()
            .map_or("closed without an answer".into(), |e| e.to_string()));
    }
    Ok(answer)
}

/// TLS on IPv6: the edge's TLS listener on `[::1]` answers a rustls
/// client that verifies it against the test's CA (an INVITE with
/// Max-Forwards 0, answered 483 by the edge itself), and the connection
/// is counted as TLS.
#[test]
fn tls_on_ipv6_is_verified_and_answered() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let servers = TestCa::new("servers");
    let (c, k) = servers.leaf(&["localhost"], false);
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, c).unwrap();
    std::fs::write(&key, k).unwrap();
    let backend = std::net::UdpSocket::bind("[::1]:0").unwrap();
    let b = backend.local_addr().unwrap().to_string();
    let (cert_s, key_s) = (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    );
    let e = spawn_edge_at(
        "[::1]:0",
        &[
            "--backend",
            &b,
            "--probe-interval-ms",
            "0",
            "--listen-tls",
            "[::1]:0",
            "--tls-cert",
            &cert_s,
            "--tls-key",
            &key_s,
        ],
    );
    let tls = e.tls.expect("a TLS listener on ::1");
    assert!(tls.is_ipv6(), "{tls}");
    let ok = tls_try(tls, &servers.pem, None).expect("answered over TLS on IPv6");
    assert!(ok.starts_with("SIP/2.0 483 "), "{ok:?}");
    let m = scrape(&e);
    assert_eq!(
        metric(
            &m,
            "handover_edge_connections_opened_total{transport=\"tls\"}"
        ),
        1.0,
        "{m}"
    );
    let other = TestCa::new("others");
    let refused = tls_try(tls, &other.pem, None);
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("invalid peer certificate")),
        "a client trusting another CA refuses the edge: {refused:?}"
    );
}

/// Trunks with client certificates (`--tls-client-ca`), and a certificate
/// rotated under a running edge (as Kubernetes rotates a Secret): a client
/// without a certificate, or with one from another CA, is refused; a
/// trunk with one from the configured CA is answered; after the files
/// are replaced by a pair from a new CA, clients trusting the new CA are
/// answered and those trusting only the old one refuse the edge.
#[test]
fn trunks_present_client_certificates_and_a_rotated_certificate_is_picked_up() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (servers, servers2, trunks, strangers) = (
        TestCa::new("servers"),
        TestCa::new("servers, rotated"),
        TestCa::new("trunks"),
        TestCa::new("strangers"),
    );
    let (cert, key, client_ca) = (
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
        dir.path().join("trunks.pem"),
    );
    let (c, k) = servers.leaf(&["localhost"], false);
    std::fs::write(&cert, c).unwrap();
    std::fs::write(&key, k).unwrap();
    std::fs::write(&client_ca, &trunks.pem).unwrap();
    let backend = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = backend.local_addr().unwrap().to_string();
    let (cert_s, key_s, ca_s) = (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
        client_ca.to_string_lossy().into_owned(),
    );
    let e = spawn_edge(&[
        "--backend",
        &b,
        "--probe-interval-ms",
        "0",
        "--listen-tls",
        "127.0.0.1:0",
        "--tls-cert",
        &cert_s,
        "--tls-key",
        &key_s,
        "--tls-client-ca",
        &ca_s,
    ]);
    let tls = e.tls.unwrap();
    let trunk = trunks.leaf(&["trunk.example"], true);
    let stranger = strangers.leaf(&["stranger.example"], true);
    let ok = tls_try(tls, &servers.pem, Some(&trunk)).expect("the trunk is answered");
    assert!(ok.starts_with("SIP/2.0 483 "), "{ok:?}");
    let no_cert = tls_try(tls, &servers.pem, None);
    assert!(no_cert.is_err(), "no client certificate: {no_cert:?}");
    let wrong = tls_try(tls, &servers.pem, Some(&stranger));
    assert!(wrong.is_err(), "a certificate from another CA: {wrong:?}");

    // Rotation: new files in place, picked up within a second or two.
    let (c2, k2) = servers2.leaf(&["localhost"], false);
    std::thread::sleep(Duration::from_millis(1100)); // a new mtime second
    std::fs::write(&key, k2).unwrap();
    std::fs::write(&cert, c2).unwrap();
    let reloaded = wait_for(Duration::from_secs(5), || {
        metric(
            &scrape(&e),
            "handover_edge_tls_reloads_total{result=\"ok\"}",
        ) >= 1.0
    });
    assert!(reloaded, "reloaded: {}", scrape(&e));
    let ok = tls_try(tls, &servers2.pem, Some(&trunk)).expect("the new certificate serves");
    assert!(ok.starts_with("SIP/2.0 483 "), "{ok:?}");
    let old = tls_try(tls, &servers.pem, Some(&trunk));
    assert!(
        old.as_ref()
            .is_err_and(|e| e.contains("invalid peer certificate")),
        "the old CA no longer names the edge: {old:?}"
    );
}

/// Outbound connections (issue 18, item 4, TCP): a route whose targets
/// say `;transport=tcp` (a trunk that takes SIP over TCP only). The B
/// leg's Request-URI says so, the edge opens one TCP connection to the
/// trunk and reuses it for every call, and the trunk's answers and the
/// BYEs travel on it. SIPp here listens on TCP alone.
#[test]
fn a_route_over_tcp_is_reached_on_one_connection_the_edge_opens() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let port = free_sip_port();
    let mut trunk = sipp_uas_on(dir.path(), "uas.xml", port, &["-t", "t1"]);
    let c = cluster(&[format!("b=127.0.0.1:{port};transport=tcp")], &[]);
    let target: SocketAddr = format!("127.0.0.1:{}", c.sip).parse().unwrap();
    let (p, stat) = sipp_uac_on(
        dir.path(),
        "127.0.0.1",
        "uac.xml",
        "b",
        target,
        (10, 20, 0),
        &[],
    );
    let r = finish_uac(p, &stat);
    assert_eq!((r.successful, r.failed), (20, 0), "{r:?}");
    trunk.expect_calls(20);
    let m = scrape_at(&c.admin);
    assert_eq!(
        metric(
            &m,
            "handover_edge_connections_outbound_total{transport=\"tcp\"}"
        ),
        1.0,
        "one connection for all calls: {m}"
    );
    assert_eq!(
        metric(
            &m,
            "handover_edge_connect_failures_total{transport=\"tcp\"}"
        ),
        0.0
    );
}

/// A TLS trunk: OpenSSL (`socat`) terminating TLS in front of a SIPp
/// callee on TCP, with `cert`/`key`, asking its clients for a certificate
/// from `client_ca` (mutual TLS, as carriers' SBCs do).
fn tls_trunk(
    dir: &Path,
    port: u16,
    to: u16,
    (cert, key): (&Path, &Path),
    client_ca: &Path,
) -> Proc {
    let ok = std::process::Command::new("socat")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "socat is not installed: run scripts/install-deps.sh (Debian package socat)"
    );
    let listen = format!(
        "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},cafile={},verify=1",
        cert.display(),
        key.display(),
        client_ca.display()
    );
    let child = std::process::Command::new("socat")
        .args([listen, format!("TCP:127.0.0.1:{to}")])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("socat starts");
    assert!(
        wait_for(Duration::from_secs(5), || TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "socat listens on {port}"
    );
    Proc(child)
}

/// Outbound TLS (issue 18, item 4): routes to trunks over TLS
/// (`;transport=tls`). The edge verifies each trunk's certificate against
/// `--tls-upstream-ca` and the route's `tls_name`, and presents its own
/// certificate (the trunk asks for one from the edge's CA). Ten calls to
/// the good trunk all end with their BYEs at its callee, over one TLS
/// connection; a trunk whose certificate names another host, and one
/// whose certificate comes from another CA, are never sent a message:
/// their handshakes fail and are counted.
#[test]
fn routes_over_tls_reach_a_verified_trunk_and_nothing_else() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (trunks, edges, rogues) = (
        TestCa::new("trunks"),
        TestCa::new("edges"),
        TestCa::new("rogues"),
    );
    let file = |name: &str, text: &str| {
        let p = d.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let (c, k) = trunks.leaf(&["trunk.test"], false);
    let trunk = (file("trunk.crt", &c), file("trunk.key", &k));
    let (c, k) = rogues.leaf(&["trunk.test"], false);
    let rogue = (file("rogue.crt", &c), file("rogue.key", &k));
    let (c, k) = edges.leaf_for(
        &["localhost", "127.0.0.1"],
        vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ],
    );
    let edge = (file("edge.crt", &c), file("edge.key", &k));
    let (trunks_ca, edges_ca) = (
        file("trunks.pem", &trunks.pem),
        file("edges.pem", &edges.pem),
    );
    // The good trunk's callee, and one callee behind both bad trunks.
    let (good_uas, bad_uas) = (free_sip_port(), free_sip_port());
    let mut good = sipp_uas_on(d, "uas.xml", good_uas, &["-t", "t1"]);
    let mut stray = sipp_uas_on(d, "uas.xml", bad_uas, &["-t", "t1"]);
    let (p_good, p_name, p_rogue) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    let _t1 = tls_trunk(d, p_good, good_uas, (&trunk.0, &trunk.1), &edges_ca);
    let _t2 = tls_trunk(d, p_name, bad_uas, (&trunk.0, &trunk.1), &edges_ca);
    let _t3 = tls_trunk(d, p_rogue, bad_uas, (&rogue.0, &rogue.1), &edges_ca);
    let (cert, key, ca) = (
        edge.0.to_string_lossy().into_owned(),
        edge.1.to_string_lossy().into_owned(),
        trunks_ca.to_string_lossy().into_owned(),
    );
    let c = cluster(
        &[
            format!("good=127.0.0.1:{p_good};transport=tls;tls_name=trunk.test"),
            format!("other=127.0.0.1:{p_name};transport=tls;tls_name=other.test"),
            format!("rogue=127.0.0.1:{p_rogue};transport=tls;tls_name=trunk.test"),
        ],
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-upstream-ca",
            &ca,
        ],
    );
    let target: SocketAddr = format!("127.0.0.1:{}", c.sip).parse().unwrap();
    let (p, stat) = sipp_uac_on(d, "127.0.0.1", "uac.xml", "good", target, (10, 10, 0), &[]);
    let r = finish_uac(p, &stat);
    assert_eq!((r.successful, r.failed), (10, 0), "{r:?}");
    good.expect_calls(10);
    let m = scrape_at(&c.admin);
    let outbound = "handover_edge_connections_outbound_total{transport=\"tls\"}";
    let failures = "handover_edge_connect_failures_total{transport=\"tls\"}";
    assert_eq!(
        metric(&m, outbound),
        1.0,
        "one TLS connection for all calls: {m}"
    );
    assert_eq!(metric(&m, failures), 0.0, "{m}");
    assert_eq!(
        metric(
            &m,
            "handover_edge_connections_outbound_total{transport=\"tcp\"}"
        ),
        0.0,
        "the BYEs went on the TLS connection too (its flow in the Record-Route): {m}"
    );

    // A trunk whose certificate names trunk.test, reached as other.test;
    // then one whose certificate comes from a CA the edge does not trust.
    for user in ["other", "rogue"] {
        let before = metric(&scrape_at(&c.admin), failures);
        let (p, _stat) = sipp_uac_on(d, "127.0.0.1", "uac.xml", user, target, (1, 1, 0), &[]);
        assert!(
            wait_for(Duration::from_secs(10), || metric(
                &scrape_at(&c.admin),
                failures
            ) > before),
            "{user}: the handshake failed and was counted"
        );
        drop(p);
    }
    let m = scrape_at(&c.admin);
    assert_eq!(
        metric(&m, outbound),
        1.0,
        "no connection to a bad trunk: {m}"
    );
    stray.expect_no_calls();
}

/// RFC 3261 §18.1.1 (issue 18, item 4): a route over UDP to a PBX that
/// takes TCP too (`;tcp_above=1300`). Ten ordinary calls reach its UDP
/// side; ten whose INVITE carries an audio and video offer (about 2 KB)
/// reach its TCP side, on one connection the edge opens; every call ends
/// with its BYE at the side that took it (the dialog follows the
/// INVITE's transport).
#[test]
fn invites_over_1300_bytes_go_over_tcp_to_a_route_that_takes_both() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tcp_dir = d.join("tcp");
    std::fs::create_dir(&tcp_dir).unwrap();
    // One PBX address, UDP and TCP on the same port: two SIPp callees.
    let port = free_sip_port();
    let mut on_udp = sipp_uas_on(d, "uas.xml", port, &[]);
    let mut on_tcp = sipp_uas_on(&tcp_dir, "uas.xml", port, &["-t", "t1"]);
    let c = cluster(&[format!("b=127.0.0.1:{port};tcp_above=1300")], &[]);
    let target: SocketAddr = format!("127.0.0.1:{}", c.sip).parse().unwrap();
    let (p, stat) = sipp_uac_on(d, "127.0.0.1", "uac.xml", "b", target, (10, 10, 0), &[]);
    let r = finish_uac(p, &stat);
    assert_eq!((r.successful, r.failed), (10, 0), "{r:?}");
    let (p, stat) = sipp_uac_on(
        d,
        "127.0.0.1",
        "uac_large.xml",
        "b",
        target,
        (10, 10, 0),
        &[],
    );
    let r = finish_uac(p, &stat);
    assert_eq!((r.successful, r.failed), (10, 0), "{r:?}");
    on_udp.expect_calls(10);
    on_tcp.expect_calls(10);
    let m = scrape_at(&c.admin);
    assert_eq!(
        metric(
            &m,
            "handover_edge_connections_outbound_total{transport=\"tcp\"}"
        ),
        1.0,
        "one TCP connection for the large calls: {m}"
    );
}

/// IPv6: the edge on `[::1]` over UDP and TCP, in front of a SIPp callee
/// on `[::1]`, and SIPp calling over one TCP connection from `[::1]`.
#[test]
fn sip_over_tcp_on_ipv6_through_the_edge() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    // (The later `-i` wins: the callee listens on ::1; `-aa` answers
    // the edge's probes.)
    let mut uas = sipp_uas_on(dir.path(), "uas.xml", port, &["-i", "::1", "-aa"]);
    let backend = format!("[::1]:{port}");
    let e = spawn_edge_at(
        "[::1]:0",
        &[
            "--backend",
            &backend,
            "--listen-tcp",
            "[::1]:0",
            "--probe-interval-ms",
            "500",
            "--probe-timeout-ms",
            "300",
        ],
    );
    wait_ready(&e.admin);
    let tcp = e.tcp.expect("a TCP listener on ::1");
    assert!(tcp.is_ipv6(), "{tcp}");
    let (p, stat) = sipp_uac_on(
        dir.path(),
        "::1",
        "uac.xml",
        "b",
        tcp,
        (10, 10, 0),
        &["-t", "t1"],
    );
    let r = finish_uac(p, &stat);
    assert_eq!((r.successful, r.failed), (10, 0), "{r:?}");
    // Every call ended at the callee with its BYE (its log may hold the
    // automatic answers to the edge's probes, and nothing else).
    uas.expect_calls(10);
}

/// Kamailio as a SIP server reached over WebSocket (RFC 7118; its `xhttp`
/// and `websocket` modules, Debian `kamailio-websocket-modules`) on
/// `port`, relaying new calls to `to` over UDP and in-dialog requests by
/// their Request-URI, answering on the connection they came on.
fn kamailio_ws(dir: &Path, port: u16, udp: u16, to: u16) -> crate::register::Kamailio {
    let modules = "/usr/lib/x86_64-linux-gnu/kamailio/modules";
    assert!(
        Path::new(&format!("{modules}/websocket.so")).exists(),
        "Kamailio's websocket module is not installed: run scripts/install-deps.sh \
         (Debian packages kamailio, kamailio-websocket-modules)"
    );
    let cfg = dir.join("kamailio-ws.cfg");
    std::fs::write(
        &cfg,
        format!(
            r#"#!KAMAILIO
debug=2
log_stderror=yes
fork=yes
children=1
tcp_children=1
listen=udp:127.0.0.1:{udp}
listen=tcp:127.0.0.1:{port}
auto_aliases=no
# The WebSocket upgrade is an HTTP GET without a body.
tcp_accept_no_cl=yes
mpath="{modules}/"
loadmodule "pv.so"
loadmodule "sl.so"
loadmodule "tm.so"
loadmodule "siputils.so"
loadmodule "xhttp.so"
loadmodule "websocket.so"
modparam("websocket", "sub_protocols", 1)
request_route {{
    force_rport();
    if (!has_totag()) {{ $du = "sip:127.0.0.1:{to}"; }}
    t_relay();
    exit;
}}
event_route[xhttp:request] {{
    if ($hdr(Upgrade) =~ "websocket" && $hdr(Connection) =~ "Upgrade" && $rm =~ "GET") {{
        if (ws_handle_handshake()) {{ exit; }}
    }}
    xhttp_reply("404", "Not Found", "", "");
}}
"#
        ),
    )
    .unwrap();
    let p = crate::register::Kamailio::start(dir, &cfg, &dir.join("kamailio-ws.log"));
    assert!(
        wait_for(Duration::from_secs(10), || TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "kamailio listens on {port}: {}",
        std::fs::read_to_string(dir.join("kamailio-ws.log")).unwrap_or_default()
    );
    p
}

/// Issue 18: a route over WebSocket (`;transport=ws`). The target is
/// Kamailio as a WebSocket SIP server in front of a SIPp callee; the
/// edge opens one WebSocket connection (the `sip` subprotocol) and every
/// call, its ACK and its BYE ride it; a WebSocket server that does not
/// speak SIP (no `sip` subprotocol in its answer) is refused, counted,
/// and its calls fail without reaching anyone.
#[test]
fn a_route_over_websocket_reaches_a_kamailio_websocket_server_on_one_connection() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (uas, ws, kudp) = (free_sip_port(), free_tcp_port(), free_sip_port());
    let mut callee = sipp_uas(dir.path(), uas);
    let _kamailio = kamailio_ws(dir.path(), ws, kudp, uas);
    // Not SIP: a WebSocket server without the `sip` subprotocol.
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let plain_port = plain.local_addr().unwrap().port();
    let plain_upgrades = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = Arc::clone(&plain_upgrades);
    std::thread::spawn(move || {
        for s in plain.incoming().flatten() {
            seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = tokio_tungstenite::tungstenite::accept(s);
        }
    });
    let c = cluster(
        &[
            format!("b=127.0.0.1:{ws};transport=ws"),
            format!("chat=127.0.0.1:{plain_port};transport=ws"),
        ],
        &[],
    );
    let target: SocketAddr = format!("127.0.0.1:{}", c.sip).parse().unwrap();
    let (p, stat) = sipp_uac_on(
        dir.path(),
        "127.0.0.1",
        "uac.xml",
        "b",
        target,
        (10, 20, 0),
        &[],
    );
    let r = finish_uac(p, &stat);
    assert_eq!(
        (r.successful, r.failed),
        (20, 0),
        "{r:?}; kamailio said: {}",
        std::fs::read_to_string(dir.path().join("kamailio-ws.log")).unwrap_or_default()
    );
    callee.expect_calls(20);
    let m = scrape_at(&c.admin);
    assert_eq!(
        metric(
            &m,
            "handover_edge_connections_outbound_total{transport=\"ws\"}"
        ),
        1.0,
        "one WebSocket connection for all calls: {m}"
    );
    assert_eq!(
        metric(&m, "handover_edge_connect_failures_total{transport=\"ws\"}"),
        0.0
    );

    let (p, stat) = sipp_uac_on(
        dir.path(),
        "127.0.0.1",
        "uac.xml",
        "chat",
        target,
        (10, 2, 0),
        &[],
    );
    let r = finish_uac_unchecked(p, &stat);
    assert_eq!((r.successful, r.failed), (0, 2), "{r:?}");
    // Answered 503 in the target's name (RFC 3261 §8.1.3.1), not left to
    // time out: each caller heard it.
    let said = sipp_error_entries(
        &std::fs::read_to_string(stat.with_extension("err")).unwrap_or_default(),
    );
    assert_eq!(
        said.iter().filter(|l| l.contains("SIP/2.0 503")).count(),
        2,
        "each caller heard 503: {said:?}"
    );
    assert!(
        plain_upgrades.load(std::sync::atomic::Ordering::Relaxed) >= 1,
        "the edge tried it"
    );
    let m = scrape_at(&c.admin);
    assert!(
        metric(&m, "handover_edge_connect_failures_total{transport=\"ws\"}") >= 1.0,
        "its upgrade refused and counted: {m}"
    );
}

/// A route over TCP whose first target refuses connections: the edge
/// answers the worker 503 in that target's name (RFC 3261 §8.1.3.1), so
/// the worker fails over to the next target at once and every call is
/// carried by the one that listens.
#[test]
fn a_tcp_target_that_refuses_connections_fails_over_to_the_next_at_once() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let port = free_sip_port();
    let dead = free_tcp_port();
    let mut trunk = sipp_uas_on(dir.path(), "uas.xml", port, &["-t", "t1"]);
    let c = cluster(
        &[format!("b=127.0.0.1:{dead},127.0.0.1:{port};transport=tcp")],
        &[],
    );
    let target: SocketAddr = format!("127.0.0.1:{}", c.sip).parse().unwrap();
    let (p, stat) = sipp_uac_on(
        dir.path(),
        "127.0.0.1",
        "uac.xml",
        "b",
        target,
        (10, 20, 0),
        &[],
    );
    let r = finish_uac(p, &stat);
    assert_eq!((r.successful, r.failed), (20, 0), "{r:?}");
    trunk.expect_calls(20);
    let (host, wport) = c.worker_admin.rsplit_once(':').unwrap();
    let failovers = summed(
        host,
        wport.parse().unwrap(),
        &[0],
        "handover_route_failovers_total",
    );
    let m = scrape_at(&c.admin);
    let refused = metric(
        &m,
        "handover_edge_connect_failures_total{transport=\"tcp\"}",
    );
    let w = http_get(&format!("http://{}/metrics", c.worker_admin)).1;
    assert!(
        failovers >= 1.0,
        "some calls tried the dead target first: {failovers} (the edge refused {refused}); the worker: {}",
        w.lines()
            .filter(|l| l.contains("failover") || l.starts_with("handover_calls_"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        refused >= failovers,
        "each of those was a refused connect: {refused} < {failovers}"
    );
}
