//! Real phones (issue 17): three baresip instances (Debian `baresip-core`,
//! driven through its `ctrl_tcp` module) register with digest
//! authentication at `handover up --workers 3`, call each other by
//! address-of-record, and play the handset guide's blind transfer: A calls
//! B, B transfers A to C by REFER and hangs up, A calls C, C answers, and
//! audio (RTP) flows between A and C. Phones with a wrong or no password
//! are refused.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use crate::support::*;

fn require_baresip() {
    let ok = Command::new("baresip").arg("-h").output().is_ok();
    assert!(
        ok,
        "baresip is not installed: run scripts/install-deps.sh (Debian package baresip-core)"
    );
}

/// One baresip process and its control connection (`ctrl_tcp`: JSON in
/// netstrings; commands answered by a `response`, and `event`s as they
/// happen).
struct Phone {
    name: String,
    _proc: Proc,
    ctl: TcpStream,
    buf: Vec<u8>,
    /// Events read while waiting for something else.
    seen: Vec<serde_json::Value>,
    log: PathBuf,
}

impl Phone {
    /// Starts baresip in `dir/name` with these account lines, its SIP on a
    /// free port (and the next: baresip binds TLS there), all on 127.0.0.1.
    fn start(dir: &Path, name: &str, accounts: &[String]) -> Phone {
        Self::start_at(dir, name, "127.0.0.1", accounts)
    }

    /// [`Phone::start`] on the loopback address `ip` (another source as
    /// the edge sees it).
    fn start_at(dir: &Path, name: &str, ip: &str, accounts: &[String]) -> Phone {
        Self::start_with(dir, name, ip, accounts, "")
    }

    /// [`Phone::start_at`] with more configuration lines (`sip_cafile …`).
    fn start_with(dir: &Path, name: &str, ip: &str, accounts: &[String], more: &str) -> Phone {
        require_baresip();
        let home = dir.join(name);
        std::fs::create_dir_all(&home).unwrap();
        let sip = free_tcp_ports(2);
        let ctl = free_tcp_port();
        // 48 kHz stereo: what `ausine` (the 440 Hz tone played as the
        // microphone) supports; baresip resamples to PCMU.
        std::fs::write(
            home.join("config"),
            format!(
                "poll_method poll\nsip_listen {ip}:{sip}\nnet_interface {ip}\n\
module_path /usr/lib/baresip/modules\nmodule g711.so\nmodule ausine.so\nmodule aufile.so\n\
module rtcpsummary.so\nmodule menu.so\nmodule_app account.so\nmodule_app ctrl_tcp.so\n\
ctrl_tcp_listen 127.0.0.1:{ctl}\naudio_player aufile,/dev/null\naudio_source ausine,440\n\
audio_alert aufile,/dev/null\nausrc_srate 48000\nauplay_srate 48000\nausrc_channels 2\n\
auplay_channels 2\nrtp_ports 30000-40000\n{more}"
            ),
        )
        .unwrap();
        std::fs::write(home.join("accounts"), accounts.join("\n") + "\n").unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new("baresip")
            // -s: the SIP trace in the log (what a failure shows).
            .args(["-4", "-s", "-f"])
            .arg(&home)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .expect("baresip starts");
        let proc = Proc(child);
        let mut stream = None;
        wait_for(Duration::from_secs(10), || {
            stream = TcpStream::connect(("127.0.0.1", ctl)).ok();
            stream.is_some()
        });
        let ctl = stream.unwrap_or_else(|| panic!("{name}: baresip's ctrl_tcp answers"));
        ctl.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Phone {
            name: name.to_string(),
            _proc: proc,
            ctl,
            buf: Vec::new(),
            seen: Vec::new(),
            log,
        }
    }

    /// The next netstring's JSON, waiting until `deadline`.
    fn next(&mut self, deadline: Instant) -> Option<serde_json::Value> {
        loop {
            if let Some(colon) = self.buf.iter().position(|&b| b == b':') {
                let len: usize = std::str::from_utf8(&self.buf[..colon])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .expect("a netstring length");
                if self.buf.len() > colon + len {
                    let body = self.buf[colon + 1..colon + 1 + len].to_vec();
                    self.buf.drain(..colon + 2 + len);
                    return serde_json::from_slice(&body).ok();
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            let mut b = [0u8; 4096];
            match self.ctl.read(&mut b) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&b[..n]),
                Err(_) => {}
            }
        }
    }

    /// Runs a command; its response's `ok`.
    fn command(&mut self, command: &str, params: &str) -> bool {
        self.command_data(command, params).0
    }

    /// Runs a command; its response's `ok` and `data`.
    fn command_data(&mut self, command: &str, params: &str) -> (bool, String) {
        let j =
            serde_json::json!({"command": command, "params": params, "token": command}).to_string();
        self.ctl
            .write_all(format!("{}:{j},", j.len()).as_bytes())
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Some(v) = self.next(deadline) {
            if v["response"] == true {
                return (
                    v["ok"] == true,
                    v["data"].as_str().unwrap_or("").to_string(),
                );
            }
            self.seen.push(v);
        }
        panic!("{}: no response to {command}", self.name);
    }

    /// The registration state of each account (`reginfo`), waiting up to
    /// `within` for `want` accounts to say 200 OK.
    fn registered(&mut self, want: usize, within: Duration) -> String {
        let mut info = String::new();
        wait_for(within, || {
            info = strip_colours(&self.command_data("reginfo", "").1);
            info.matches(" OK ").count() == want
        });
        info
    }

    /// Waits for an event of `kind` (for account `aor` when given).
    fn event(&mut self, kind: &str, aor: Option<&str>, within: Duration) -> serde_json::Value {
        let matches = |v: &serde_json::Value| {
            v["event"] == true
                && v["type"] == kind
                && aor.is_none_or(|a| v["accountaor"].as_str().is_some_and(|x| x.contains(a)))
        };
        if let Some(i) = self.seen.iter().position(matches) {
            return self.seen.remove(i);
        }
        let deadline = Instant::now() + within;
        while let Some(v) = self.next(deadline) {
            if matches(&v) {
                return v;
            }
            self.seen.push(v);
        }
        // Every phone's calls as baresip logged them (beside this one's).
        let dir = self.log.parent().expect("a directory");
        let mut calls = String::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "log") {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                calls += &format!("\n== {}\n", p.display());
                for l in text
                    .lines()
                    .filter(|l| l.contains("call") || l.contains("SIP/2.0 "))
                {
                    calls += &l[..l.len().min(200)];
                    calls.push('\n');
                }
            }
        }
        panic!(
            "{}: no {kind} event within {within:?}; seen: {:?}; the phones' calls: {calls}",
            self.name, self.seen
        );
    }

    /// RTP packets received and sent in each call that ended, from
    /// `rtcpsummary`'s line per call (`EX=BareSip;…;PR=n;PS=n;…`).
    fn rtp(&self) -> Vec<(u64, u64)> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|l| l.split("EX=BareSip;").nth(1))
            .map(|l| {
                let field = |k: &str| {
                    l.split(';')
                        .find_map(|f| f.strip_prefix(k))
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0)
                };
                (field("PR="), field("PS="))
            })
            .collect()
    }
}

/// `text` without ANSI colour codes (baresip colours its status words).
fn strip_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut esc = false;
    for ch in text.chars() {
        match (esc, ch) {
            (false, '\u{1b}') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

#[test]
fn baresip_phones_register_call_by_aor_and_do_the_handset_guides_blind_transfer() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    for (u, p) in [("alice", "a-pw"), ("bob", "b-pw"), ("carol", "c-pw")] {
        passwd(&users, u, p);
    }
    let users_s = users.to_string_lossy().into_owned();
    // libre 1.x (baresip's SIP stack) gives up on any challenge it cannot
    // answer, SHA-256 included: these phones are offered MD5 alone.
    let c = cluster(
        &[],
        &[
            "--workers",
            "3",
            "--users",
            &users_s,
            "--digest-algorithms",
            "MD5",
        ],
    );
    wait_members(&c.grpc, 3);
    wait_all_shards_served(&c.grpc, 3);
    let edge = format!("127.0.0.1:{}", c.sip);
    let account =
        |u: &str, p: &str| format!("<sip:{u}@{edge}>;auth_pass={p};regint=600;answermode=manual");
    let mut a = Phone::start(dir.path(), "alice", &[account("alice", "a-pw")]);
    let mut b = Phone::start(dir.path(), "bob", &[account("bob", "b-pw")]);
    let mut cph = Phone::start(dir.path(), "carol", &[account("carol", "c-pw")]);
    for p in [&mut a, &mut b, &mut cph] {
        let info = p.registered(1, Duration::from_secs(10));
        assert_eq!(info.matches(" OK ").count(), 1, "{}: {info}", p.name);
    }
    // Every worker has applied the three bindings (a replica hears of a
    // commit a round after the AOR's owner).
    let (host, port) = c.worker_admin.rsplit_once(':').unwrap();
    let port: u16 = port.parse().unwrap();
    let replicated = wait_for(Duration::from_secs(5), || {
        summed(host, port, &[0, 1, 2], "handover_registrations_active") == 9.0
    });
    assert!(replicated, "every worker holds the three bindings");
    // A wrong password, and none at all: refused.
    // (From another address: failures are counted per address and user,
    // and eve's guesses must not lock the real alice out.)
    let mut eve = Phone::start_at(
        dir.path(),
        "eve",
        "127.0.0.2",
        &[
            account("alice", "guess"),
            format!("<sip:bob@{edge}>;regint=600"),
        ],
    );
    let failed = wait_for(Duration::from_secs(10), || {
        summed(
            host,
            port,
            &[0, 1, 2],
            "handover_auth_failures_total{reason=\"wrong_password\"}",
        ) >= 1.0
    });
    assert!(failed, "eve's wrong password was refused");
    let info = eve.registered(0, Duration::from_secs(2));
    assert_eq!(
        info.matches(" OK ").count(),
        0,
        "eve registered nothing: {info}"
    );

    // A calls B by AOR; B answers.
    assert!(a.command("dial", &format!("sip:bob@{edge}")));
    b.event("CALL_INCOMING", None, Duration::from_secs(10));
    assert!(b.command("accept", ""));
    a.event("CALL_ESTABLISHED", None, Duration::from_secs(10));
    b.event("CALL_ESTABLISHED", None, Duration::from_secs(10));
    // B transfers A to C (REFER; A answers 202 and NOTIFYs) and hangs up;
    // A calls C, C rings and answers.
    assert!(b.command("transfer", &format!("sip:carol@{edge}")));
    cph.event("CALL_INCOMING", None, Duration::from_secs(10));
    assert!(b.command("hangup", ""));
    assert!(cph.command("accept", ""));
    let est = a.event("CALL_ESTABLISHED", None, Duration::from_secs(10));
    assert!(
        est["peeruri"].as_str().is_some_and(|p| p.contains("carol")),
        "A now talks to C: {est}"
    );
    cph.event("CALL_ESTABLISHED", None, Duration::from_secs(10));
    // Let audio flow past baresip's first RTCP report (5 s: its summary
    // counts packets only then), then A hangs up; C hears the end.
    std::thread::sleep(Duration::from_millis(6500));
    assert!(a.command("hangup", ""));
    cph.event("CALL_CLOSED", None, Duration::from_secs(10));
    let ok = wait_for(Duration::from_secs(5), || {
        a.rtp().len() == 2 && cph.rtp().len() == 1
    });
    assert!(
        ok,
        "one call summary per call: A {:?}, C {:?}",
        a.rtp(),
        cph.rtp()
    );
    // A to C: audio both ways (about 50 packets a second each).
    let (a_got, a_sent) = a.rtp()[1];
    let (c_got, c_sent) = cph.rtp()[0];
    assert!(
        a_got >= 25 && c_got >= 25 && a_sent >= 25 && c_sent >= 25,
        "RTP between A and C: A received {a_got}, sent {a_sent}; C received {c_got}, sent {c_sent} \
(A's calls {:?}, C's {:?}; summaries: {})",
        a.rtp(),
        cph.rtp(),
        [&a, &cph]
            .iter()
            .map(|p| std::fs::read_to_string(&p.log).unwrap_or_default())
            .flat_map(|t| t
                .lines()
                .filter(|l| l.contains("EX=") || l.contains("stablished"))
                .map(str::to_owned)
                .collect::<Vec<_>>())
            .collect::<Vec<_>>()
            .join(" | ")
    );
}

/// The lines of a baresip SIP trace (`-s`) that say how a message went:
/// `TLS 127.0.0.1:40304 -> 127.0.0.1:33471`, `TCP …`, `UDP …`.
fn hops(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            ["UDP ", "TCP ", "TLS "]
                .iter()
                .any(|x| l.starts_with(x) && l.contains(" -> "))
        })
        .collect()
}

/// A test CA and a certificate it signed for `localhost` and 127.0.0.1,
/// as PEM files in `dir`: (ca.pem, cert.pem, key.pem).
pub(crate) fn test_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "handover test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, leaf.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// Issue 18: the handset guide's flow with phones on every transport.
/// Alice on TLS (the edge's certificate made by a test CA, given to her
/// as `sip_cafile`), Bob on TCP, Carol on UDP register through `handover
/// up --workers 3` with digest; A calls B, B transfers A to C and hangs
/// up, A calls C, C answers; then A hangs up and C hears it. Each phone's
/// SIP went over its own transport only (read from the edge's counters:
/// every TLS and TCP message, and no UDP from A or B).
#[test]
fn baresip_phones_on_tls_tcp_and_udp_register_call_and_do_the_blind_transfer() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    for (u, p) in [("alice", "a-pw"), ("bob", "b-pw"), ("carol", "c-pw")] {
        passwd(&users, u, p);
    }
    let (ca, cert, key) = test_ca(dir.path());
    let users_s = users.to_string_lossy().into_owned();
    let (cert_s, key_s) = (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    );
    let c = cluster(
        &[],
        &[
            "--workers",
            "3",
            "--users",
            &users_s,
            "--digest-algorithms",
            "MD5",
            "--tls-cert",
            &cert_s,
            "--tls-key",
            &key_s,
        ],
    );
    wait_members(&c.grpc, 3);
    wait_all_shards_served(&c.grpc, 3);
    // As a desk phone is set up: its domain, and the proxy (handover's
    // edge) every request goes to, on the phone's transport.
    let udp = format!("127.0.0.1:{}", c.sip);
    let account = |u: &str, p: &str, proxy: String| {
        format!(
            "<sip:{u}@127.0.0.1>;outbound=\"{proxy}\";auth_pass={p};regint=600;answermode=manual"
        )
    };
    let mut a = Phone::start_with(
        dir.path(),
        "alice",
        "127.0.0.1",
        &[account(
            "alice",
            "a-pw",
            format!("sip:127.0.0.1:{};transport=tls", c.tls),
        )],
        &format!("sip_cafile {}\n", ca.display()),
    );
    let mut b = Phone::start(
        dir.path(),
        "bob",
        &[account("bob", "b-pw", format!("sip:{udp};transport=tcp"))],
    );
    let mut cph = Phone::start(
        dir.path(),
        "carol",
        &[account("carol", "c-pw", format!("sip:{udp}"))],
    );
    for p in [&mut a, &mut b, &mut cph] {
        let info = p.registered(1, Duration::from_secs(10));
        assert_eq!(info.matches(" OK ").count(), 1, "{}: {info}", p.name);
    }
    let edge_metrics = || http_get(&format!("http://{}/metrics", c.admin)).1;
    let m = edge_metrics();
    assert_eq!(
        metric(&m, "handover_edge_connections{transport=\"tls\"}"),
        1.0,
        "alice's one TLS connection: {m}"
    );
    assert_eq!(
        metric(&m, "handover_edge_connections{transport=\"tcp\"}"),
        1.0,
        "bob's one TCP connection"
    );
    let (host, port) = c.worker_admin.rsplit_once(':').unwrap();
    let port: u16 = port.parse().unwrap();
    let replicated = wait_for(Duration::from_secs(5), || {
        summed(host, port, &[0, 1, 2], "handover_registrations_active") == 9.0
    });
    assert!(replicated, "every worker holds the three bindings");

    // A (TLS) calls B (TCP) by AOR; B answers.
    assert!(a.command("dial", "sip:bob@127.0.0.1"));
    b.event("CALL_INCOMING", None, Duration::from_secs(10));
    assert!(b.command("accept", ""));
    a.event("CALL_ESTABLISHED", None, Duration::from_secs(10));
    b.event("CALL_ESTABLISHED", None, Duration::from_secs(10));
    // B transfers A to C (UDP) and hangs up; A calls C, C answers.
    assert!(b.command("transfer", "sip:carol@127.0.0.1"));
    cph.event("CALL_INCOMING", None, Duration::from_secs(10));
    assert!(b.command("hangup", ""));
    assert!(cph.command("accept", ""));
    let est = a.event("CALL_ESTABLISHED", None, Duration::from_secs(10));
    assert!(
        est["peeruri"].as_str().is_some_and(|p| p.contains("carol")),
        "A now talks to C: {est}"
    );
    cph.event("CALL_ESTABLISHED", None, Duration::from_secs(10));
    b.event("CALL_CLOSED", None, Duration::from_secs(10));
    // C hangs up: the B2BUA's BYE reaches A over her TLS connection.
    assert!(cph.command("hangup", ""));
    a.event("CALL_CLOSED", None, Duration::from_secs(10));
    // Everything A and B said went over their connections: the edge read
    // SIP on both stream transports, and both connections are still the
    // first ones (no reconnect, no UDP fallback for their dialogs).
    let m = edge_metrics();
    for t in ["tls", "tcp"] {
        assert!(
            metric(
                &m,
                &format!("handover_edge_stream_messages_total{{transport=\"{t}\"}}")
            ) >= 5.0,
            "{t}: {m}"
        );
        assert_eq!(
            metric(
                &m,
                &format!("handover_edge_connections_opened_total{{transport=\"{t}\"}}")
            ),
            1.0,
            "{t}: one connection for everything"
        );
    }
    // And as each phone logged its SIP (`TLS a -> b`, `TCP …`, `UDP …`):
    // A and B used their transport alone, the BYEs to them included.
    for (p, t) in [(&a, "TLS"), (&b, "TCP")] {
        let log = std::fs::read_to_string(&p.log).unwrap_or_default();
        let hops = hops(&log);
        assert!(hops.len() >= 10, "{}: {hops:?}", p.name);
        assert!(
            hops.iter().all(|h| h.starts_with(t)),
            "{} sent and received over {t} only: {hops:?}",
            p.name
        );
        assert!(
            log.lines()
                .zip(log.lines().skip(1))
                .any(|(h, l)| h.starts_with(t) && l.starts_with("BYE sip:")),
            "{}: a BYE crossed its {t} connection",
            p.name
        );
    }
}

/// The worker (0-based) of `up --workers 3` that holds a call now.
fn owner_of_the_call(host: &str, port: u16) -> u16 {
    let mut owner = None;
    let found = wait_for(Duration::from_secs(10), || {
        owner = (0..3u16).find(|&i| summed(host, port, &[i], "handover_calls_active") >= 1.0);
        owner.is_some()
    });
    assert!(found, "a worker holds the call");
    owner.unwrap()
}

/// Waits until every worker's replicated table holds the one call up: it
/// was committed, so its 2xx reached the caller (a call still in setup
/// on a killed worker is lost, as the replication section says).
fn committed(host: &str, port: u16) {
    let ok = wait_for(Duration::from_secs(10), || {
        (0..3u16).all(|i| summed(host, port, &[i], "handover_replicated_calls") == 1.0)
    });
    assert!(ok, "the call is in every worker's replicated table");
}

/// Kills worker `i` (SIP on `sip_base` + i) with SIGKILL; returns how to
/// start it again (its command line).
fn kill_worker(sip_base: u16, i: u16) -> Vec<String> {
    let o = Command::new("pgrep")
        .args([
            "-f",
            "--",
            &format!("worker --listen 127.0.0.1:{} ", sip_base + i),
        ])
        .output()
        .unwrap();
    let pid: u32 = String::from_utf8_lossy(&o.stdout)
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("the worker's pid");
    let argv: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    crate::support::signal(pid, "9");
    argv
}

/// Issue 18: a phone on TLS and a trunk on UDP, through three replicated
/// workers; the worker that owns their call is killed with SIGKILL while
/// the call is up, and the call is still hung up on both sides, each over
/// its own transport: first the trunk calls the phone and hangs up (the
/// new owner's BYE reaches the phone on its TLS connection), then the
/// phone calls the trunk and hangs up at once, before the call is taken
/// over (its BYE comes in on that connection once, and the edge's
/// retransmissions on the UDP hop carry it to the new owner and on to
/// the trunk).
#[test]
fn a_tls_phone_and_a_udp_trunk_hang_up_after_the_worker_owning_their_call_is_killed() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_ca(dir.path());
    let (cert_s, key_s) = (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    );
    let trunk_port = free_udp_port();
    let mut trunk = sipp_uas(dir.path(), trunk_port);
    let c = cluster(
        &[format!("trunk=127.0.0.1:{trunk_port}")],
        &["--workers", "3", "--tls-cert", &cert_s, "--tls-key", &key_s],
    );
    wait_members(&c.grpc, 3);
    wait_all_shards_served(&c.grpc, 3);
    let (host, port) = c.worker_admin.rsplit_once(':').unwrap();
    let port: u16 = port.parse().unwrap();
    let mut a = Phone::start_with(
        dir.path(),
        "alice",
        "127.0.0.1",
        &[format!(
            "<sip:alice@127.0.0.1>;outbound=\"sip:127.0.0.1:{};transport=tls\";regint=600;answermode=manual",
            c.tls
        )],
        &format!("sip_cafile {}\n", ca.display()),
    );
    let info = a.registered(1, Duration::from_secs(10));
    assert_eq!(info.matches(" OK ").count(), 1, "{info}");
    let replicated = wait_for(Duration::from_secs(5), || {
        summed(host, port, &[0, 1, 2], "handover_registrations_active") == 3.0
    });
    assert!(replicated, "every worker holds alice's binding");

    // 1. The trunk (SIPp on UDP) calls alice and hangs up 8 s later.
    let edge: std::net::SocketAddr = format!("127.0.0.1:{}", c.sip).parse().unwrap();
    let (uac, stat) = sipp_uac_with(dir.path(), "uac.xml", "alice", edge, 1, 1, 8_000);
    a.event("CALL_INCOMING", None, Duration::from_secs(10));
    assert!(a.command("accept", ""));
    a.event("CALL_ESTABLISHED", None, Duration::from_secs(10));
    committed(host, port);
    let victim = owner_of_the_call(host, port);
    let argv = kill_worker(c.worker, victim);
    let r = finish_uac(uac, &stat);
    assert_eq!(
        (r.successful, r.failed),
        (1, 0),
        "the trunk's BYE was answered: {r:?}"
    );
    a.event("CALL_CLOSED", None, Duration::from_secs(40));
    // The killed worker comes back, and the cluster is whole again.
    let _back = Proc(
        Command::new(&argv[0])
            .args(&argv[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_all_shards_served(&c.grpc, 3);

    // 2. alice calls the trunk; its owner dies; alice hangs up.
    assert!(a.command("dial", "sip:trunk@127.0.0.1"));
    a.event("CALL_ESTABLISHED", None, Duration::from_secs(10));
    committed(host, port);
    let victim = owner_of_the_call(host, port);
    let survivors: Vec<u16> = (0..3u16).filter(|&i| i != victim).collect();
    let adopted_before = summed(host, port, &survivors, "handover_calls_adopted_total");
    let _argv = kill_worker(c.worker, victim);
    // At once, before anyone has taken the shard over: alice's BYE goes
    // out once on TLS (a phone on a stream never retransmits); the edge
    // retransmits it on UDP until the new owner answers.
    assert!(a.command("hangup", ""));
    a.event("CALL_CLOSED", None, Duration::from_secs(10));
    let taken = wait_for(Duration::from_secs(15), || {
        summed(host, port, &survivors, "handover_calls_adopted_total") > adopted_before
    });
    assert!(taken, "a surviving worker adopted the call");
    let m = http_get(&format!("http://{}/metrics", c.admin)).1;
    assert!(
        metric(
            &m,
            "handover_edge_stream_retransmissions_total{transport=\"tls\"}"
        ) >= 1.0,
        "the edge sent alice's BYE again on the UDP hop: {m}"
    );
    // The trunk (callee of the second call) got its BYE.
    trunk.expect_calls(1);
    // Everything alice said and heard went over TLS, BYEs both ways.
    let log = std::fs::read_to_string(&a.log).unwrap_or_default();
    let hops = hops(&log);
    assert!(hops.iter().all(|h| h.starts_with("TLS ")), "{hops:?}");
    let byes = log
        .lines()
        .zip(log.lines().skip(1))
        .filter(|(h, l)| h.starts_with("TLS ") && l.starts_with("BYE sip:"))
        .count();
    assert_eq!(byes, 2, "one BYE to alice, one from her");
}

/// A phone that quits unregisters (baresip sends `Expires: 0` for its
/// binding) and registers again when it starts, as desk phones do at
/// every reboot. With replication, the AOR's removal leaves a tombstone
/// in the replicated table; the new registration must still be taken,
/// answered 200 and the phone called (before the fix its version was
/// counted from zero, the table refused it as older than the tombstone,
/// and the phone never got an answer).
#[test]
fn a_phone_that_quits_and_starts_again_registers_again_and_is_called() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(&[], &["--workers", "3"]);
    wait_members(&c.grpc, 3);
    wait_all_shards_served(&c.grpc, 3);
    let (host, port) = c.worker_admin.rsplit_once(':').unwrap();
    let port: u16 = port.parse().unwrap();
    let account = format!(
        "<sip:carol@127.0.0.1>;outbound=\"sip:127.0.0.1:{};transport=tcp\";regint=600;answermode=auto",
        c.sip
    );
    let active = || summed(host, port, &[0, 1, 2], "handover_registrations_active");
    let mut first = Phone::start(dir.path(), "carol", std::slice::from_ref(&account));
    let info = first.registered(1, Duration::from_secs(10));
    assert_eq!(info.matches(" OK ").count(), 1, "{info}");
    assert!(
        wait_for(Duration::from_secs(5), || active() == 3.0),
        "every worker holds carol's binding"
    );
    // `quit`: baresip unregisters, then exits.
    first.command("quit", "");
    assert!(
        wait_for(Duration::from_secs(10), || active() == 0.0),
        "carol's binding is gone from every worker: {}",
        active()
    );
    drop(first);
    let mut again = Phone::start(dir.path(), "carol-again", std::slice::from_ref(&account));
    let info = again.registered(1, Duration::from_secs(10));
    assert_eq!(info.matches(" OK ").count(), 1, "registered again: {info}");
    assert!(
        wait_for(Duration::from_secs(5), || active() == 3.0),
        "every worker holds carol's new binding"
    );
    let edge: std::net::SocketAddr = format!("127.0.0.1:{}", c.sip).parse().unwrap();
    let (uac, stat) = sipp_uac_with(dir.path(), "uac.xml", "carol", edge, 1, 1, 1_000);
    again.event("CALL_ESTABLISHED", None, Duration::from_secs(10));
    let r = finish_uac(uac, &stat);
    assert_eq!((r.successful, r.failed), (1, 0), "carol was called: {r:?}");
    again.event("CALL_CLOSED", None, Duration::from_secs(10));
}

/// Issue 18: a browser on WSS and a phone on TCP, through three
/// replicated workers. JsSIP in headless Chromium (WebRTC: ICE and
/// DTLS-SRTP) calls carol, a baresip phone registered over TCP with its
/// `ice` and `dtls_srtp` modules (so it answers a browser's offer); the
/// worker that owns the call is killed with SIGKILL while it is up; then
/// the browser hangs up: its BYE reaches a surviving worker through the
/// edge and carol on her TCP connection, and both ends see the call end.
#[test]
fn a_wss_browser_and_a_tcp_phone_hang_up_after_the_worker_owning_their_call_is_killed() {
    crate::browser::require_browser();
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(&[], &["--workers", "3"]);
    wait_members(&c.grpc, 3);
    wait_all_shards_served(&c.grpc, 3);
    let (host, port) = c.worker_admin.rsplit_once(':').unwrap();
    let port: u16 = port.parse().unwrap();
    let mut carol = Phone::start_with(
        dir.path(),
        "carol",
        "127.0.0.1",
        &[format!(
            "<sip:carol@127.0.0.1>;outbound=\"sip:127.0.0.1:{};transport=tcp\";regint=600;\
             answermode=auto;medianat=ice;mediaenc=dtls_srtp",
            c.sip
        )],
        "module ice.so\nmodule dtls_srtp.so\nrtcp_mux yes\n",
    );
    let info = carol.registered(1, Duration::from_secs(10));
    assert_eq!(info.matches(" OK ").count(), 1, "{info}");
    assert!(
        wait_for(Duration::from_secs(5), || summed(
            host,
            port,
            &[0, 1, 2],
            "handover_registrations_active"
        ) == 3.0),
        "every worker holds carol's binding"
    );
    let go = dir.path().join("hang-up");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser/jssip_caller.mjs");
    let mut node = Command::new("node")
        .arg(&script)
        .arg(format!("wss://127.0.0.1:{}", c.wss))
        .arg("127.0.0.1")
        .arg("carol")
        .arg(&go)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = node.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(l);
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(40)).unwrap_or_default();
    if first != "confirmed" {
        let _ = node.kill();
        let err = node
            .wait_with_output()
            .map(|o| o.stderr)
            .unwrap_or_default();
        panic!(
            "the browser's call was not confirmed: {first}\n{}",
            String::from_utf8_lossy(&err)
        );
    }
    carol.event("CALL_ESTABLISHED", None, Duration::from_secs(10));
    committed(host, port);
    let victim = owner_of_the_call(host, port);
    let survivors: Vec<u16> = (0..3u16).filter(|&i| i != victim).collect();
    let adopted_before = summed(host, port, &survivors, "handover_calls_adopted_total");
    let _argv = kill_worker(c.worker, victim);
    let taken = wait_for(Duration::from_secs(15), || {
        summed(host, port, &survivors, "handover_calls_adopted_total") > adopted_before
    });
    assert!(taken, "a surviving worker adopted the call");
    std::fs::write(&go, b"").unwrap();
    let last = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&last)
        .unwrap_or_else(|_| panic!("the browser reported nothing usable: {last}"));
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(
        v["seen"],
        serde_json::json!(["registered", "accepted 200", "confirmed", "ended by local"]),
        "{v}"
    );
    let _ = node.wait();
    carol.event("CALL_CLOSED", None, Duration::from_secs(10));
    // carol's SIP went over her TCP connection only, the BYE included.
    let log = std::fs::read_to_string(&carol.log).unwrap_or_default();
    let hops = hops(&log);
    assert!(hops.iter().all(|h| h.starts_with("TCP ")), "{hops:?}");
    let byes = log
        .lines()
        .zip(log.lines().skip(1))
        .filter(|(h, l)| h.starts_with("TCP ") && l.starts_with("BYE sip:"))
        .count();
    assert_eq!(byes, 1, "one BYE to carol");
    // The browser's over WSS: one connection.
    let m = http_get(&format!("http://{}/metrics", c.admin)).1;
    assert_eq!(
        metric(
            &m,
            "handover_edge_connections_opened_total{transport=\"wss\"}"
        ),
        1.0,
        "{m}"
    );
}

/// Issue 18: two edges that share one advertised address, as behind a
/// cloud load balancer, each naming itself inside the cluster
/// (`--internal-advertise`), in front of three workers started as the
/// Kubernetes manifests start them. Workers send what they originate to
/// the first edge (their `--edge`, as to the manifests' Service). carol,
/// a baresip phone, registers over TCP on the second edge; a SIPp caller
/// on the first calls her and hangs up; a second caller waits while she
/// hangs up. Her REGISTER's answer, the INVITE and BYE to her all reach
/// her through the edge that holds her connection, never the other.
#[test]
fn with_two_edges_a_tcp_phone_is_registered_called_and_hung_up_through_the_edge_holding_its_connection()
 {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let uas = free_udp_port();
    let c = crate::kube::by_name_with(dir.path(), uas, &[], &["--internal-advertise", "127.0.0.1"]);
    let first = c.edge_sip;
    let second = free_tcp_port();
    let listen = format!("127.0.0.1:{second}");
    let (_edge2, admin2) = crate::kube::start_edge(
        dir.path(),
        &crate::kube::by_name_clusters(c.grpc),
        &["--listen", &listen, "--listen-tcp", &listen],
        &[
            "--advertise",
            &first.to_string(),
            "--internal-advertise",
            "127.0.0.1",
        ],
    );
    assert!(
        wait_for(Duration::from_secs(15), || http_get(&format!(
            "{admin2}/readyz"
        ))
        .0 == 200),
        "the second edge is ready"
    );
    let account = format!(
        "<sip:carol@127.0.0.1>;outbound=\"sip:127.0.0.1:{second};transport=tcp\";regint=600;answermode=auto"
    );
    let mut carol = Phone::start(dir.path(), "carol", std::slice::from_ref(&account));
    // The workers' answer went to the second edge (the Via the edges
    // share names the first).
    let info = carol.registered(1, Duration::from_secs(10));
    assert_eq!(info.matches(" OK ").count(), 1, "carol registered: {info}");
    let active = || {
        summed(
            "127.0.0.1",
            c.admin,
            &[0, 1, 2],
            "handover_registrations_active",
        )
    };
    assert!(
        wait_for(Duration::from_secs(5), || active() == 3.0),
        "every worker holds carol's binding"
    );

    // A call through the first edge: the INVITE, ACK and the caller's BYE
    // reach carol on her connection.
    let (uac, stat) = sipp_uac_with(dir.path(), "uac.xml", "carol", first, 1, 1, 1_000);
    carol.event("CALL_ESTABLISHED", None, Duration::from_secs(10));
    let r = finish_uac(uac, &stat);
    assert_eq!((r.successful, r.failed), (1, 0), "carol was called: {r:?}");
    carol.event("CALL_CLOSED", None, Duration::from_secs(10));

    // carol hangs up a call: the answer to her BYE reaches her too.
    let (uac, stat) = sipp_uac_with(dir.path(), "uac_wait_bye.xml", "carol", first, 1, 1, 0);
    carol.event("CALL_ESTABLISHED", None, Duration::from_secs(10));
    assert!(carol.command("hangup", ""), "carol hangs up");
    let r = finish_uac(uac, &stat);
    assert_eq!(
        (r.successful, r.failed),
        (1, 0),
        "the caller got carol's BYE: {r:?}"
    );
    carol.event("CALL_CLOSED", None, Duration::from_secs(10));
    let log = std::fs::read_to_string(dir.path().join("carol.log")).unwrap();
    assert!(
        !log.contains("SIP/2.0 408") && !log.contains("SIP/2.0 430"),
        "carol saw no lost answer: {log}"
    );

    // Nothing went astray: no request met a missing connection (430 and
    // its dropped binding), and only the second edge ever held one.
    let flow_failed = summed(
        "127.0.0.1",
        c.admin,
        &[0, 1, 2],
        "handover_bindings_total{event=\"flow_failed\"}",
    );
    assert_eq!(
        flow_failed, 0.0,
        "no request reached an edge without carol's connection"
    );
    let text = http_get(&format!("{}/metrics", c.edge_admin)).1;
    assert_eq!(
        metric(
            &text,
            "handover_edge_connections_opened_total{transport=\"tcp\"}"
        ),
        0.0,
        "the first edge never held a connection"
    );
    let text = http_get(&format!("{admin2}/metrics")).1;
    assert_eq!(
        metric(&text, "handover_edge_connections{transport=\"tcp\"}"),
        1.0,
        "carol's one connection, on the second edge"
    );
}
