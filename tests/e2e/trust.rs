//! The trust boundary (issue 16) of a running `handover up`: the cluster
//! port takes only the cluster's certificates, each member speaks only for
//! itself and what a valid member sends cannot stop a replica; a full
//! disk, floods, forged shard keys, spoofed INVITEs, identity headers and
//! extreme numbers inside calls are answered as the RFCs say and hurt no
//! other call.

use std::path::{Path, PathBuf};
use std::time::Duration;

use handover_cluster::{Message, MessageType, encode_message};
use handover_worker::rpc::pb;
use handover_worker::tls::{TlsDir, WORKER_NAME};
use tonic::transport::ClientTlsConfig;

use crate::support::*;

/// A credentials directory with `ca`'s `ca.crt` and `cert`'s `tls.crt` and
/// `tls.key`.
fn mixed(at: &Path, ca: &Path, cert: &Path) -> PathBuf {
    std::fs::create_dir_all(at).unwrap();
    std::fs::copy(ca.join("ca.crt"), at.join("ca.crt")).unwrap();
    for f in ["tls.crt", "tls.key"] {
        std::fs::copy(cert.join(f), at.join(f)).unwrap();
    }
    at.to_path_buf()
}

/// `Admin.Status` at `addr` over `tls` (None: plain HTTP/2): the worker's
/// id, or the error as text.
async fn status(addr: &str, tls: Option<ClientTlsConfig>) -> Result<u64, String> {
    let ch = handover_worker::tls::channel(addr, tls)
        .await
        .map_err(|e| format!("{e:#}"))?;
    pb::admin_client::AdminClient::new(ch)
        .status(pb::StatusRequest {})
        .await
        .map(|s| s.into_inner().id)
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

/// `Raft.Send` of `messages` (already encoded) to `addr` with `creds`.
async fn send(addr: &str, creds: &Path, messages: Vec<Vec<u8>>) -> Result<(), tonic::Status> {
    let tls = TlsDir(creds.to_path_buf())
        .client_config(WORKER_NAME)
        .unwrap();
    let ch = handover_worker::tls::channel(addr, Some(tls))
        .await
        .expect("a TLS connection with valid credentials");
    let batch = pb::RaftBatch { group: 1, messages };
    pb::raft_client::RaftClient::new(ch)
        .max_encoding_message_size(80 << 20)
        .send(tokio_stream::iter(vec![batch]))
        .await
        .map(|_| ())
}

fn message(t: MessageType, from: u64, to: u64, term: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(t);
    m.from = from;
    m.to = to;
    m.term = term;
    m
}

/// A hand-made phone on one UDP socket, for what no SIPp scenario sends:
/// numbers at their extremes inside a call. Strict as a phone: a request
/// in its dialog with the wrong tags fails the test (a phone answers it
/// 481), and a request it resends until a final answer comes, as over UDP.
struct Phone {
    s: std::net::UdpSocket,
    me: std::net::SocketAddr,
    edge: std::net::SocketAddr,
    /// The last request answered (its branch) and the answer, sent again
    /// if the request is.
    last: std::cell::RefCell<Option<(String, String)>>,
}

/// A header's first value in `msg` (names compared without case).
fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    headers(msg, name).into_iter().next()
}

/// Every value of a header in `msg`, in order.
fn headers<'a>(msg: &'a str, name: &str) -> Vec<&'a str> {
    let head = msg.split("\r\n\r\n").next().unwrap_or("");
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

/// The branch of a message's first Via (a request and its answers share it).
fn branch_of(msg: &str) -> &str {
    header(msg, "Via")
        .and_then(|v| v.split(';').find_map(|p| p.trim().strip_prefix("branch=")))
        .unwrap_or("")
}

/// The `tag` parameter of a From or To value.
fn tag_of(value: &str) -> Option<&str> {
    let at = value.rfind(">").unwrap_or(0);
    value[at..]
        .split(';')
        .find_map(|p| p.trim().strip_prefix("tag="))
}

/// The URI inside a name-addr's angle brackets.
fn uri_of(value: &str) -> &str {
    let start = value.find('<').map_or(0, |i| i + 1);
    let end = value[start..].find('>').map_or(value.len(), |i| start + i);
    &value[start..end]
}

impl Phone {
    /// A phone on `ip`; its `edge` is set once the cluster is up.
    fn new(ip: &str) -> Phone {
        let s = std::net::UdpSocket::bind(format!("{ip}:0")).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let me = s.local_addr().unwrap();
        Phone {
            s,
            me,
            edge: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            last: std::cell::RefCell::new(None),
        }
    }

    fn send(&self, msg: &str) {
        self.s.send_to(msg.as_bytes(), self.edge).unwrap();
    }

    /// Sends `msg` (again every second, four times at most) until a final
    /// answer to it (its Via) comes; returns it. Requests arriving
    /// meanwhile fail the test: nothing else is expected in these steps.
    fn ask(&self, msg: &str) -> String {
        let branch = branch_of(msg);
        let mut buf = [0u8; 8192];
        for _ in 0..4 {
            self.send(msg);
            let end = std::time::SystemTime::now() + Duration::from_secs(1);
            while std::time::SystemTime::now() < end {
                let Ok((n, _)) = self.s.recv_from(&mut buf) else {
                    continue;
                };
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if !text.starts_with("SIP/2.0 ") {
                    self.resent(&text)
                        .unwrap_or_else(|| panic!("{}: unexpected request:\n{text}", self.me));
                    continue;
                }
                let fin = !text.starts_with("SIP/2.0 1");
                if fin && branch_of(&text) == branch {
                    return text;
                }
            }
        }
        panic!("{}: no final answer to four sends of:\n{msg}", self.me);
    }

    /// The answer to a request already answered, sent again; None for a
    /// new request.
    fn resent(&self, req: &str) -> Option<()> {
        let branch = header(req, "Via")?.to_string();
        let last = self.last.borrow();
        let (b, answer) = last.as_ref()?;
        (*b == branch).then(|| self.send(answer))
    }

    /// The next request within 10 s, which must be `method`; responses
    /// (resent final answers to what this phone sent) are skipped.
    fn request(&self, method: &str) -> String {
        let mut buf = [0u8; 8192];
        let end = std::time::SystemTime::now() + Duration::from_secs(10);
        while std::time::SystemTime::now() < end {
            let Ok((n, _)) = self.s.recv_from(&mut buf) else {
                continue;
            };
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if text.starts_with("SIP/2.0 ") || self.resent(&text).is_some() {
                continue;
            }
            assert!(
                text.starts_with(&format!("{method} ")),
                "{}: expected {method}, got:\n{text}",
                self.me
            );
            return text;
        }
        panic!("{}: no {method} within 10 s", self.me);
    }

    /// Answers `req` with `status` (`200 OK`); `to_tag` is added to To when
    /// it has none; `extra` header lines end with CRLF.
    fn answer(&self, req: &str, status: &str, to_tag: &str, extra: &str, body: &str) {
        let mut m = format!("SIP/2.0 {status}\r\n");
        for v in headers(req, "Via") {
            m += &format!("Via: {v}\r\n");
        }
        let to = header(req, "To").unwrap();
        let to = if tag_of(to).is_some() {
            to.to_string()
        } else {
            format!("{to};tag={to_tag}")
        };
        for rr in headers(req, "Record-Route") {
            m += &format!("Record-Route: {rr}\r\n");
        }
        m += &format!(
            "From: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\nContact: <sip:phone@{}>\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            header(req, "From").unwrap(),
            header(req, "Call-ID").unwrap(),
            header(req, "CSeq").unwrap(),
            self.me,
            body.len()
        );
        self.send(&m);
        let branch = header(req, "Via").unwrap().to_string();
        *self.last.borrow_mut() = Some((branch, m));
    }
}

/// One side of a dialog: what its requests carry.
struct Dialog {
    call_id: String,
    local: String,
    remote: String,
    target: String,
    routes: Vec<String>,
}

impl Dialog {
    /// The caller's side, from the 2xx to its INVITE (RFC 3261 §12.1.2:
    /// the route set is the Record-Route in reverse).
    fn of_caller(ok: &str) -> Dialog {
        let mut routes: Vec<String> = headers(ok, "Record-Route")
            .iter()
            .flat_map(|v| v.split(','))
            .map(|r| r.trim().to_string())
            .collect();
        routes.reverse();
        Dialog {
            call_id: header(ok, "Call-ID").unwrap().into(),
            local: header(ok, "From").unwrap().into(),
            remote: header(ok, "To").unwrap().into(),
            target: uri_of(header(ok, "Contact").unwrap()).into(),
            routes,
        }
    }

    /// The callee's side, from the INVITE it answered with `tag` (§12.1.1).
    fn of_callee(invite: &str, tag: &str) -> Dialog {
        Dialog {
            call_id: header(invite, "Call-ID").unwrap().into(),
            local: format!("{};tag={tag}", header(invite, "To").unwrap()),
            remote: header(invite, "From").unwrap().into(),
            target: uri_of(header(invite, "Contact").unwrap()).into(),
            routes: headers(invite, "Record-Route")
                .iter()
                .flat_map(|v| v.split(','))
                .map(|r| r.trim().to_string())
                .collect(),
        }
    }

    /// A request in this dialog from `me`; `extra` header lines end with
    /// CRLF and may replace Max-Forwards or Content-Length (given first,
    /// they are the ones a parser reads).
    fn request(
        &self,
        me: std::net::SocketAddr,
        method: &str,
        cseq: &str,
        extra: &str,
        body: &str,
    ) -> String {
        let routes: String = self
            .routes
            .iter()
            .map(|r| format!("Route: {r}\r\n"))
            .collect();
        let branch = format!("z9hG4bK-{method}-{cseq}-{}", self.call_id);
        let length = if extra.contains("Content-Length:") {
            String::new()
        } else {
            format!("Content-Length: {}\r\n", body.len())
        };
        let forwards = if extra.contains("Max-Forwards:") {
            ""
        } else {
            "Max-Forwards: 70\r\n"
        };
        format!(
            "{method} {} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={branch};rport\r\n{routes}{forwards}\
From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\nContact: <sip:phone@{me}>\r\n{extra}{length}\r\n{body}",
            self.target, self.local, self.remote, self.call_id
        )
    }

    /// Whether `req` belongs to this dialog (its tags the other way round);
    /// a phone answers 481 to one that does not.
    fn owns(&self, req: &str) -> bool {
        header(req, "Call-ID") == Some(self.call_id.as_str())
            && tag_of(header(req, "From").unwrap_or("")) == tag_of(&self.remote)
            && tag_of(header(req, "To").unwrap_or("")) == tag_of(&self.local)
    }
}

#[test]
fn the_cluster_port_takes_only_cluster_certificates_and_no_member_speaks_for_another() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let uas_port = free_udp_port();
    let mut uas = sipp_uas_with(dir.path(), "uas.xml", uas_port);
    let data = dir.path().join("data");
    let c = cluster(
        &[format!("b=127.0.0.1:{uas_port}")],
        &[
            "--workers",
            "3",
            "--udp-only",
            "--data",
            data.to_str().unwrap(),
        ],
    );
    wait_members(&c.grpc, 3);
    let creds = data.join("cluster-tls");
    let (host, grpc) = c.grpc.rsplit_once(':').unwrap();
    let grpc: u16 = grpc.parse().unwrap();
    let addr = |i: u16| format!("{host}:{}", grpc + i);
    let (_, wadmin) = c.worker_admin.rsplit_once(':').unwrap();
    let wadmin: u16 = wadmin.parse().unwrap();
    let counted = |i: u16, series: &str| summed(host, wadmin, &[i], series);
    let refused = |i: u16, reason: &str| {
        counted(
            i,
            &format!("handover_cluster_refused_total{{reason=\"{reason}\"}}"),
        )
    };
    let ca = std::fs::read(creds.join("admin/ca.crt")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // The admin credentials `up` made are taken.
    let admin = TlsDir(creds.join("admin"))
        .client_config(WORKER_NAME)
        .unwrap();
    assert_eq!(rt.block_on(status(&addr(0), Some(admin))), Ok(1));

    // No TLS at all, TLS without a client certificate, and a certificate
    // from another CA (named like a member, sent with the right CA file)
    // are refused in the handshake, and counted.
    let before = refused(0, "handshake");
    let plain = rt.block_on(status(&addr(0), None));
    assert!(plain.is_err(), "plain HTTP/2 answered: {plain:?}");
    let anonymous = ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca))
        .domain_name(WORKER_NAME);
    let anon = rt.block_on(status(&addr(0), Some(anonymous)));
    assert!(anon.is_err(), "no client certificate answered: {anon:?}");
    let other = dir.path().join("other-ca");
    handover_worker::tls::throwaway(&other, 3).unwrap();
    let stranger = mixed(
        &dir.path().join("stranger"),
        &creds.join("admin"),
        &other.join("member-2"),
    );
    let cfg = TlsDir(stranger.clone()).client_config(WORKER_NAME).unwrap();
    let s = rt.block_on(status(&addr(0), Some(cfg)));
    assert!(s.is_err(), "another CA's certificate answered: {s:?}");
    assert!(
        wait_for(Duration::from_secs(3), || refused(0, "handshake")
            >= before + 3.0),
        "three handshakes refused and counted: {} before, {} after",
        before,
        refused(0, "handshake")
    );

    // The edges' certificate may watch the map but not speak Raft.
    let hb = |from: u64, to: u64| encode_message(&message(MessageType::MsgHeartbeat, from, to, 0));
    let r = rt.block_on(send(&addr(0), &creds.join("edge"), vec![hb(2, 1)]));
    let s = r.expect_err("an edge's Raft message was taken");
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
    assert_eq!(refused(0, "role"), 1.0, "counted as a role refusal");

    // Member 2's certificate speaking as member 1, to worker 3: refused.
    let r = rt.block_on(send(&addr(2), &creds.join("member-2"), vec![hb(1, 3)]));
    let s = r.expect_err("member 2 spoke as member 1");
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
    assert!(s.message().contains("another member"), "{s:?}");
    assert_eq!(refused(2, "impersonation"), 1.0);

    // Drain and fault injection are not on the cluster port at all, not
    // even for the worker's own certificate: they answer only on its
    // local admin socket, a Unix socket for its own user.
    let tls = TlsDir(creds.join("member-1"))
        .client_config(WORKER_NAME)
        .unwrap();
    let ch = rt
        .block_on(handover_worker::tls::channel(&addr(0), Some(tls)))
        .expect("the member's own certificate connects");
    let mut local = pb::local_client::LocalClient::new(ch);
    let d = rt.block_on(local.drain(pb::DrainRequest {}));
    assert_eq!(
        d.as_ref().map_err(tonic::Status::code).err(),
        Some(tonic::Code::Unimplemented),
        "drain on the cluster port: {d:?}"
    );
    let i = rt.block_on(local.isolate(pb::IsolateRequest {
        millis: 1,
        ..Default::default()
    }));
    assert_eq!(
        i.as_ref().map_err(tonic::Status::code).err(),
        Some(tonic::Code::Unimplemented),
        "fault injection on the cluster port: {i:?}"
    );
    let sock = handover_worker::local::socket_path(&data.join("worker-1"), 1);
    let m = std::fs::metadata(&sock).expect("worker 1's admin socket");
    {
        use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
        assert!(m.file_type().is_socket());
        assert_eq!(m.permissions().mode() & 0o777, 0o600, "for its owner alone");
        let me = std::fs::metadata(dir.path()).unwrap().uid();
        assert_eq!(m.uid(), me, "owned by the worker's user");
    }
    let own = fault(&data.join("worker-1"), 1, &["--isolate-ms", "1"]);
    assert!(own.status.success(), "{}", stderr(&own));

    // Member 2's own certificate, its own id, messages that would make
    // raft-rs panic: a heartbeat whose commit index is past any log's end
    // and an empty proposal. Taken at the transport, disarmed by the
    // replica (the proposal refused and counted), which lives on.
    let term = {
        let o = handover(&["status", "--grpc", &addr(0), "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("status answers");
        v["term"].as_u64().unwrap()
    };
    let mut forged = message(MessageType::MsgHeartbeat, 2, 1, term);
    forged.commit = u64::MAX;
    let empty = message(MessageType::MsgPropose, 2, 1, term);
    let before = counted(0, "handover_raft_messages_refused_total");
    rt.block_on(send(
        &addr(0),
        &creds.join("member-2"),
        vec![encode_message(&forged), encode_message(&empty)],
    ))
    .expect("a member's own messages are taken");
    assert!(
        wait_for(Duration::from_secs(3), || counted(
            0,
            "handover_raft_messages_refused_total"
        ) > before),
        "the empty proposal was refused and counted"
    );
    // A snapshot-sized message over the 64 MiB limit: refused by gRPC.
    let huge = vec![0u8; 65 << 20];
    let r = rt.block_on(send(&addr(0), &creds.join("member-2"), vec![huge]));
    assert!(r.is_err(), "a message over 64 MiB was taken");

    // Every replica still serves: three members up, and calls through
    // the cluster all complete with their BYEs at the callee.
    wait_members(&c.grpc, 3);
    for i in 0..3 {
        let o = handover(&["status", "--grpc", &addr(i), "--json"]);
        assert!(
            o.status.success(),
            "worker {} answers: {}",
            i + 1,
            stderr(&o)
        );
    }
    let edge: std::net::SocketAddr = format!("127.0.0.1:{}", c.sip).parse().unwrap();
    let (uac, stat) = sipp_uac(dir.path(), edge, 20, 20, 0);
    let r = finish_uac(uac, &stat);
    assert_eq!((r.exit, r.successful, r.failed), (Some(0), 20, 0), "{r:?}");
    uas.expect_calls(20);
}

/// The cluster's hashing key in the disk test.
const KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";

#[test]
fn a_filling_disk_under_every_worker_gives_503s_not_crashes_and_calls_resume_when_room_returns() {
    let _g = serial();
    for tool in ["unshare", "mount", "dd", "df"] {
        assert!(
            std::process::Command::new("sh")
                .args(["-c", &format!("command -v {tool} >/dev/null")])
                .status()
                .is_ok_and(|s| s.success()),
            "{tool} is missing (util-linux, coreutils)"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let uas_port = free_udp_port();
    let mut uas = sipp_uas_with(dir.path(), "uas.xml", uas_port);
    let (grpc, sip, admin) = (free_tcp_ports(3), free_tcp_ports(3), free_tcp_ports(3));
    let edge_port = free_udp_port();
    let mut edge_args = vec!["--probe-interval-ms", "0", "--hash-key", KEY];
    let clusters: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", grpc + i)).collect();
    for c in &clusters {
        edge_args.extend(["--cluster", c.as_str()]);
    }
    let edge = spawn_edge_at(&format!("127.0.0.1:{edge_port}"), &edge_args);
    // Three workers in a mount namespace of their own, their Raft logs on
    // one 64 MiB tmpfs; a filler takes all but 8 MiB of it when told
    // (`fill`), and gives it back (`free`). Each worker refuses new work
    // below 16 MiB free and takes it again at 32.
    let (mnt, ctl) = (dir.path().join("tmpfs"), dir.path().join("ctl"));
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::create_dir_all(&ctl).unwrap();
    let exe = env!("CARGO_BIN_EXE_handover");
    let peers: String = (0..3)
        .map(|k| {
            format!(
                " --peer {}=127.0.0.1:{},127.0.0.1:{}",
                k + 1,
                grpc + k,
                sip + k
            )
        })
        .collect();
    let workers: String = (0..3)
        .map(|i| {
            format!(
                "{exe} worker --id {id} {peers} --listen 127.0.0.1:{s} --admin 127.0.0.1:{a} \
                 --edge 127.0.0.1:{edge_port} --route '*=127.0.0.1:{uas_port}' --hash-key {KEY} \
                 --data {m}/w{id} --min-free-mb 16 &\n",
                id = i + 1,
                s = sip + i,
                a = admin + i,
                m = mnt.display(),
            )
        })
        .collect();
    let script = format!(
        "set -e\nmount -t tmpfs -o size=64m tmpfs {m}\n{workers}\
         while [ ! -e {c}/fill ]; do sleep 0.1; done\n\
         avail=$(df -Pk {m} | awk 'NR==2 {{print $4}}')\n\
         dd if=/dev/zero of={m}/filler bs=1M count=$((avail / 1024 - 8)) 2>/dev/null\n\
         touch {c}/filled\n\
         while [ ! -e {c}/free ]; do sleep 0.1; done\n\
         rm -f {m}/filler\ntouch {c}/freed\nwait\n",
        m = mnt.display(),
        c = ctl.display(),
    );
    // A pid namespace too: when the shell goes, its workers go with it.
    let _ns = Proc(
        std::process::Command::new("unshare")
            .args([
                "--user",
                "--map-root-user",
                "--mount",
                "--pid",
                "--fork",
                "--kill-child",
                "sh",
                "-c",
                &script,
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("unshare starts"),
    );
    let metric_of = |i: u16, series: &str| summed("127.0.0.1", admin, &[i], series);
    let ready = |i: u16| {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        agent
            .get(&format!("http://127.0.0.1:{}/readyz", admin + i))
            .call()
            .is_ok_and(|r| r.status() == 200)
    };
    assert!(
        wait_for(Duration::from_secs(20), || (0..3).all(ready)
            && http_get(&format!("{}/readyz", edge.admin)).0 == 200),
        "three workers on the tmpfs and the edge ready"
    );
    wait_all_shards_served(&clusters[0], 3);

    // Ten calls up (hung up 10 s after their answer) before the disk fills.
    let (early, early_stat) = sipp_uac(dir.path(), edge.sip, 20, 10, 10_000);
    assert!(
        wait_for(Duration::from_secs(10), || (0..3)
            .map(|i| metric_of(i, "handover_calls_active"))
            .sum::<f64>()
            >= 10.0),
        "ten calls up"
    );
    std::fs::write(ctl.join("fill"), b"").unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || ctl.join("filled").exists()),
        "the filler ran"
    );
    assert!(
        wait_for(Duration::from_secs(5), || (0..3)
            .all(|i| metric_of(i, "handover_storage_full") == 1.0)),
        "every worker saw its disk nearly full"
    );
    // New calls now: 503 from whichever worker owns them, none at the
    // callee (its count below stays at the other calls').
    let late_dir = dir.path().join("late");
    std::fs::create_dir_all(&late_dir).unwrap();
    let (late, late_stat) = sipp_uac(&late_dir, edge.sip, 20, 10, 0);
    let r = finish_uac_unchecked(late, &late_stat);
    assert_eq!((r.successful, r.failed), (0, 10), "{r:?}");
    let refused: f64 = (0..3)
        .map(|i| metric_of(i, "handover_calls_refused_total{cause=\"storage_full\"}"))
        .sum();
    assert!(refused >= 10.0, "{refused} calls refused for the disk");
    // The calls that were up go on to their BYEs; no worker died.
    let r = finish_uac(early, &early_stat);
    assert_eq!((r.exit, r.successful, r.failed), (Some(0), 10, 0), "{r:?}");
    assert!((0..3).all(ready), "every worker still up and ready");

    // Room again: served again.
    std::fs::write(ctl.join("free"), b"").unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || ctl.join("freed").exists()
            && (0..3).all(|i| metric_of(i, "handover_storage_full") == 0.0)),
        "every worker saw room again"
    );
    let again_dir = dir.path().join("again");
    std::fs::create_dir_all(&again_dir).unwrap();
    let (again, again_stat) = sipp_uac(&again_dir, edge.sip, 20, 10, 0);
    let r = finish_uac(again, &again_stat);
    assert_eq!((r.exit, r.successful, r.failed), (Some(0), 10, 0), "{r:?}");
    uas.expect_calls(20);
}

/// The resident memory of process `pid`, in KiB (0 once it is gone).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn an_invite_flood_and_an_info_flood_from_two_sources_leave_a_third_sources_calls_whole() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let uas_port = free_udp_port();
    let mut uas = sipp_uas_with(dir.path(), "uas_info.xml", uas_port);
    let c = cluster(
        &[format!("*=127.0.0.1:{uas_port}")],
        &[
            "--workers",
            "3",
            "--udp-only",
            "--new-dialogs-per-source",
            "50",
        ],
    );
    wait_members(&c.grpc, 3);
    wait_all_shards_served(&c.grpc, 3);
    let edge: std::net::SocketAddr = format!("127.0.0.1:{}", c.sip).parse().unwrap();
    let pids: Vec<u32> = (0..3).map(|i| worker_pid(c.worker + i)).collect();
    let before: Vec<u64> = pids.iter().map(|&p| rss_kib(p)).collect();
    let sub = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    let (invite_dir, info_dir, calm_dir) = (sub("invites"), sub("infos"), sub("calm"));
    // 127.0.0.2 starts 10,000 calls at 2,000 a second (40 times its
    // budget): 503s, then a ban; what is dropped fails at the caller after
    // 2 s.
    let (mut invites, invites_stat) = sipp_uac_on(
        &invite_dir,
        "127.0.0.2",
        "uac_or_503.xml",
        "b",
        edge,
        (2_000, 10_000, 0),
        // Dropped calls fail after 2 s, quietly (no CANCEL); SIPp stops
        // after 15 s whatever is left.
        &[
            "-recv_timeout",
            "2000",
            "-default_behaviors",
            "none",
            "-timeout",
            "15s",
        ],
    );
    // 127.0.0.3 floods 40 calls of its own with 400 INFOs each, back to
    // back: 16,000 in-call requests.
    let (mut infos, infos_stat) = sipp_uac_on(
        &info_dir,
        "127.0.0.3",
        "uac_info_flood.xml",
        "b",
        edge,
        (40, 40, 0),
        &[],
    );
    // 127.0.0.4 makes 60 ordinary calls meanwhile.
    let (mut calm, calm_stat) = sipp_uac_on(
        &calm_dir,
        "127.0.0.4",
        "uac.xml",
        "b",
        edge,
        (10, 60, 1_000),
        &[],
    );
    let mut peak = before.clone();
    let t0 = tokio::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(90) {
        for (k, &p) in pids.iter().enumerate() {
            peak[k] = peak[k].max(rss_kib(p));
        }
        let done = |p: &mut Proc| p.0.try_wait().ok().flatten().is_some();
        if done(&mut invites) & done(&mut infos) & done(&mut calm) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let calm_r = finish_uac(calm, &calm_stat);
    let info_r = finish_uac_unchecked(infos, &infos_stat);
    let invite_r = finish_uac_unchecked(invites, &invites_stat);
    let host = "127.0.0.1";
    let (_, wadmin) = c.worker_admin.rsplit_once(':').unwrap();
    let wadmin: u16 = wadmin.parse().unwrap();
    let in_call_refused = summed(
        host,
        wadmin,
        &[0, 1, 2],
        "handover_in_call_requests_refused_total",
    );
    let coalesced = summed(
        host,
        wadmin,
        &[0, 1, 2],
        "handover_raft_records_coalesced_total",
    );
    let edge_503 = metric(
        &http_get(&format!("http://{}/metrics", c.admin)).1,
        "handover_edge_replies_total{status=\"503\"}",
    );
    eprintln!(
        "floods: INVITE flood {invite_r:?} (edge 503s {edge_503}); INFO flood {info_r:?} \
         ({in_call_refused} INFOs refused 503 in their calls, {coalesced} records coalesced); \
         calm source {calm_r:?}; worker RSS KiB before {before:?}, peak {peak:?}"
    );
    // The calm source: every call, every BYE at the callee.
    assert_eq!(
        (calm_r.exit, calm_r.successful, calm_r.failed),
        (Some(0), 60, 0),
        "{calm_r:?}"
    );
    // The INFO flood's calls complete (each INFO answered 200 or 503) and
    // its calls hold no more than their limit: the rest were refused.
    assert_eq!((info_r.successful, info_r.failed), (40, 0), "{info_r:?}");
    assert!(
        in_call_refused >= 40.0 * (400.0 - 128.0),
        "{in_call_refused} INFOs refused"
    );
    // The INVITE flood got its budget, 503s, then silence (its script
    // counts a 503 as a success: the calls that connected are the rest).
    assert!(
        edge_503 >= 1.0 && invite_r.successful < 2_000,
        "{invite_r:?}"
    );
    let connected = invite_r.successful - edge_503 as u64;
    uas.expect_calls(60 + 40 + connected);
    // Memory: the floods leave each worker within 64 MiB of where it began.
    for k in 0..3 {
        assert!(
            peak[k] < before[k] + 64 * 1024,
            "worker {} grew from {} to {} KiB",
            k + 1,
            before[k],
            peak[k]
        );
    }
}

/// Issue 16, "the shard key in Route/Request-URI authenticated": through
/// three workers, a caller copies the `k` our Record-Route gave its call
/// into the Route of a new INVITE with another Call-ID (as a flood aimed
/// at one worker would): the edge refuses the copied token, the INVITE
/// reaches the worker its own Call-ID belongs to, and the refusal is
/// counted; the caller's own BYE with the token ends its call.
#[test]
fn a_shard_key_copied_from_one_call_does_not_aim_another_at_its_worker() {
    const KEY: &str = "00112233445566778899aabbccddeeff";
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let uas_port = free_udp_port();
    let mut uas = sipp_uas(dir.path(), uas_port);
    let c = cluster(
        &[format!("*=127.0.0.1:{uas_port}")],
        &["--workers", "3", "--udp-only", "--hash-key", KEY],
    );
    wait_members(&c.grpc, 3);
    wait_all_shards_served(&c.grpc, 3);
    let owner = call_id_owner(&c.grpc, 3, KEY);
    let owner_of = owner_of_key(&c.grpc, 3);
    // Two Call-IDs that two different workers serve.
    let (first, other) = (0..100)
        .map(|i| (format!("key-a{i}"), format!("key-b{i}")))
        .find(|(a, b)| owner(a).is_some() && owner(b).is_some() && owner(a) != owner(b))
        .expect("two Call-IDs on two workers");
    let (w_first, w_other) = (owner(&first).unwrap(), owner(&other).unwrap());
    let edge: std::net::SocketAddr = format!("127.0.0.1:{}", c.sip).parse().unwrap();
    let (host, wadmin) = c.worker_admin.rsplit_once(':').unwrap();
    let wadmin: u16 = wadmin.parse().unwrap();
    let started = |w: u16| summed(host, wadmin, &[w], "handover_calls_started_total");
    let refused = || {
        metric(
            &http_get(&format!("http://{}/metrics", c.admin)).1,
            "handover_edge_keys_refused_total",
        )
    };
    let mut a = Phone::new("127.0.0.7");
    a.edge = edge;
    let me = a.me;
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.7\r\ns=-\r\nc=IN IP4 127.0.0.7\r\nt=0 0\r\n\
m=audio 40000 RTP/AVP 0\r\n";
    let invite = |cid: &str, route: &str| {
        format!(
            "INVITE sip:b@{edge} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-{cid}-inv\r\n{route}\
Max-Forwards: 70\r\nFrom: <sip:a@{me}>;tag=a-{cid}\r\nTo: <sip:b@{edge}>\r\nCall-ID: {cid}\r\n\
CSeq: 1 INVITE\r\nContact: <sip:a@{me}>\r\nContent-Type: application/sdp\r\n\
Content-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        )
    };
    let token = |ok: &str| {
        let m = handover_sip::scan(ok.as_bytes()).unwrap();
        let rr = m.record_routes().next().unwrap();
        String::from_utf8(rr.uri().param(b"k").unwrap().to_vec()).unwrap()
    };

    // The first call, as any caller makes it.
    let ok1 = a.ask(&invite(&first, ""));
    assert!(ok1.starts_with("SIP/2.0 200"), "{ok1}");
    let d1 = Dialog::of_caller(&ok1);
    a.send(&d1.request(me, "ACK", "1", "", ""));
    let t1 = token(&ok1);
    let key1 = handover_sip::ids::key_of_token(t1.as_bytes()).unwrap();
    assert_eq!(
        owner_of(key1),
        Some(w_first),
        "the token's key is the call's"
    );
    let before: Vec<f64> = (0..3).map(started).collect();
    assert_eq!(refused(), 0.0);

    // Its token copied into a new INVITE's Route (another Call-ID): it
    // goes where that Call-ID goes, not to the token's worker.
    let forged_route = format!("Route: <sip:{edge};lr;k={t1}>\r\n");
    let ok2 = a.ask(&invite(&other, &forged_route));
    assert!(ok2.starts_with("SIP/2.0 200"), "{ok2}");
    let d2 = Dialog::of_caller(&ok2);
    a.send(&d2.request(me, "ACK", "1", "", ""));
    // (Counters are published within a second.)
    let mut after: Vec<f64> = Vec::new();
    wait_for(Duration::from_secs(5), || {
        after = (0..3).map(started).collect();
        after.iter().sum::<f64>() > before.iter().sum::<f64>()
    });
    assert_eq!(
        after[usize::from(w_other)] - before[usize::from(w_other)],
        1.0,
        "the Call-ID's worker took the call: {before:?} → {after:?}"
    );
    assert_eq!(
        after[usize::from(w_first)],
        before[usize::from(w_first)],
        "the copied token's worker did not"
    );
    wait_for(Duration::from_secs(5), || refused() >= 1.0);
    assert_eq!(refused(), 1.0, "the copied token is counted");
    // The second call's own token is another (bound to its Call-ID).
    assert_ne!(token(&ok2), t1);

    // Each caller ends its call by its own Record-Route: the tokens work.
    for d in [&d1, &d2] {
        let bye = a.ask(&d.request(me, "BYE", "2", "", ""));
        assert!(bye.starts_with("SIP/2.0 200"), "{bye}");
    }
    assert_eq!(refused(), 1.0, "good tokens are not counted");
    uas.expect_calls(2);
}

/// A spoofed INVITE (its source never hears anything and so never ACKs)
/// draws no more than RFC 3261 §13.3.1.4 allows: the 2xx and its ten
/// resends over 64·T1; then handover hangs up both legs, so the callee,
/// a strict SIPp UAS, gets a BYE in its dialog instead of holding a call
/// with nobody. Counted as `handover_calls_unacknowledged_total`.
#[test]
fn a_caller_who_never_acknowledges_draws_only_the_rfcs_resends_and_the_callee_is_hung_up() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let uas_port = free_udp_port();
    // The BYE comes after 64·T1 (32 s), past the callees' usual 30 s.
    let mut uas = sipp_uas_on(dir.path(), "uas.xml", uas_port, &["-recv_timeout", "60s"]);
    let c = cluster(&[format!("*=127.0.0.1:{uas_port}")], &["--udp-only"]);
    let edge: std::net::SocketAddr = format!("127.0.0.1:{}", c.sip).parse().unwrap();
    let (host, wadmin) = c.worker_admin.rsplit_once(':').unwrap();
    let wadmin: u16 = wadmin.parse().unwrap();
    // The victim of the spoofing: whatever reaches this address.
    let s = std::net::UdpSocket::bind("127.0.0.8:0").unwrap();
    let me = s.local_addr().unwrap();
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.8\r\ns=-\r\nc=IN IP4 127.0.0.8\r\nt=0 0\r\n\
m=audio 40000 RTP/AVP 0\r\n";
    let invite = format!(
        "INVITE sip:b@{edge} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-spoofed\r\n\
Max-Forwards: 70\r\nFrom: <sip:a@{me}>;tag=spoofer\r\nTo: <sip:b@{edge}>\r\nCall-ID: spoofed-1\r\n\
CSeq: 1 INVITE\r\nContact: <sip:a@{me}>\r\nContent-Type: application/sdp\r\n\
Content-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    s.send_to(invite.as_bytes(), edge).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let (mut oks, mut others, mut bye) = (0u32, Vec::new(), None);
    let mut buf = [0u8; 8192];
    // Everything that comes back, until the first BYE and a quiet second
    // after it, or 60 quiet seconds.
    let mut quiet = 0;
    while quiet < 60 {
        let Ok((n, _)) = s.recv_from(&mut buf) else {
            if bye.is_some() {
                break;
            }
            quiet += 1;
            continue;
        };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let first = text.lines().next().unwrap_or("").to_string();
        if first.starts_with("SIP/2.0 200") {
            assert!(bye.is_none(), "no 2xx after the BYE");
            oks += 1;
        } else if first.starts_with("BYE ") {
            assert!(text.contains("Call-ID: spoofed-1\r\n"), "{text}");
            bye.get_or_insert(text);
        } else {
            others.push(first);
        }
    }
    assert!(
        bye.is_some(),
        "no BYE within 60 s; {oks} 2xx, then {others:?}"
    );
    assert_eq!(
        oks, 11,
        "the 2xx and ten resends (T1 doubling to T2, 64·T1)"
    );
    assert!(
        others.iter().all(|l| l.starts_with("SIP/2.0 1")),
        "only provisional answers besides: {others:?}"
    );
    // The callee saw a whole call: answered, then a BYE in its dialog.
    uas.expect_calls(1);
    wait_for(Duration::from_secs(5), || {
        summed(host, wadmin, &[0], "handover_calls_unacknowledged_total") >= 1.0
    });
    assert_eq!(
        summed(host, wadmin, &[0], "handover_calls_unacknowledged_total"),
        1.0
    );
}

/// RFC 3325 with digest (issue 16, identity): bob calls from an untrusted
/// address, proves who he is to `up` (407, then credentials), and the
/// trusted PBX behind it receives `P-Asserted-Identity: <sip:bob@handover>`
/// on every call, asserted by handover, not by the caller.
#[test]
fn an_authenticated_caller_reaches_a_trusted_pbx_asserted_as_himself() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    passwd(&users, "bob", "bob-pw");
    let users_s = users.to_string_lossy().into_owned();
    let pbx_port = free_udp_port();
    let mut pbx = sipp_uas_traced(dir.path(), pbx_port);
    // The PBX (127.0.0.1) is trusted; bob's phone (127.0.0.2) is not.
    let c = cluster(
        &[format!("*=127.0.0.1:{pbx_port}")],
        &[
            "--udp-only",
            "--users",
            &users_s,
            "--trusted",
            "127.0.0.1/32",
            "--assert-identity",
        ],
    );
    let edge = format!("127.0.0.1:{}", c.sip);
    let caller_port = free_udp_port().to_string();
    let (p, stat) = sipp_run(
        dir.path(),
        "bob",
        &[
            "-sf",
            scenario("uac_auth.xml").to_str().unwrap(),
            "-s",
            "pbx",
            "-au",
            "bob",
            "-ap",
            "bob-pw",
            "-m",
            "3",
            "-r",
            "10",
            "-d",
            "200",
            "-i",
            "127.0.0.2",
            "-p",
            &caller_port,
            &edge,
        ],
    );
    let r = finish_uac_unchecked(p, &stat);
    assert_eq!((r.exit, r.successful, r.failed), (Some(0), 3, 0), "{r:?}");
    pbx.expect_calls(3);
    let pai = received_headers(
        &sipp_message_logs_of(dir.path(), "uas_"),
        "INVITE",
        "P-Asserted-Identity",
    );
    assert_eq!(
        pai,
        vec![Some("<sip:bob@handover>".to_string()); 3],
        "each call's INVITE at the PBX"
    );
}

/// Issue 16's extreme numbers, sent inside a live call through `up`
/// between two hand-made phones while SIPp calls run beside it: an INVITE
/// whose Expires, Session-Expires and Min-SE are u64::MAX; a 200 with
/// Session-Expires u64::MAX; in-dialog INFOs with Expires u64::MAX
/// (relayed, 200) and with a CSeq past 2^31-1, a Content-Length and a
/// Max-Forwards past u64 (each 400, never reaching the callee); a REFER
/// whose NOTIFYs say `expires=` u64::MAX and more digits than a u64
/// holds; a BYE with CSeq 2^31-1, RFC 3261's largest. The call goes on
/// to that BYE at the callee, the worker is the same process throughout,
/// and every SIPp call beside it succeeds.
#[test]
fn extreme_numbers_inside_live_calls_crash_nothing_and_the_calls_go_on() {
    const HUGE: &str = "18446744073709551615";
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let uas_port = free_udp_port();
    let mut uas = sipp_uas(dir.path(), uas_port);
    let (mut a, mut b) = (Phone::new("127.0.0.9"), Phone::new("127.0.0.10"));
    let c = cluster(
        &[format!("b=127.0.0.1:{uas_port}"), format!("x={}", b.me)],
        &["--udp-only"],
    );
    let edge: std::net::SocketAddr = format!("127.0.0.1:{}", c.sip).parse().unwrap();
    (a.edge, b.edge) = (edge, edge);
    let worker = worker_pid(c.worker);
    // SIPp calls beside it, from another source, over the whole test.
    let (uac, stat) = sipp_uac(dir.path(), edge, 5, 60, 4000);
    let sdp = |ip: &str| {
        format!(
            "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n"
        )
    };
    // A NOTIFY of the REFER's subscription: its headers and sipfrag.
    let frag = |state: &str, status: &str| {
        (
            format!(
                "Event: refer\r\nSubscription-State: {state}\r\nContent-Type: message/sipfrag;version=2.0\r\n"
            ),
            format!("SIP/2.0 {status}\r\n"),
        )
    };

    // The callee in its own thread: answers with a session timer of
    // u64::MAX seconds, takes the INFO, and once told transfers the call
    // by REFER; every request it gets must be in its dialog.
    let (go, told) = std::sync::mpsc::channel::<()>();
    let callee = std::thread::spawn(move || -> Vec<String> {
        let invite = b.request("INVITE");
        b.answer(&invite, "180 Ringing", "callee", "", "");
        b.answer(
            &invite,
            "200 OK",
            "callee",
            &format!(
                "Session-Expires: {HUGE};refresher=uac\r\nRequire: timer\r\nContent-Type: application/sdp\r\n"
            ),
            &sdp("127.0.0.10"),
        );
        let d = Dialog::of_callee(&invite, "callee");
        let mut seen = vec![invite];
        let mut take = |method: &str, status: &str| {
            let req = b.request(method);
            assert!(d.owns(&req), "not the callee's dialog (481):\n{req}");
            // (An ACK is not answered.)
            if !status.is_empty() {
                b.answer(&req, status, "", "", "");
            }
            seen.push(req);
        };
        take("ACK", "");
        take("INFO", "200 OK");
        told.recv_timeout(Duration::from_secs(60)).unwrap();
        let refer = d.request(
            b.me,
            "REFER",
            "1",
            &format!(
                "Refer-To: <sip:c@127.0.0.1:9>\r\nReferred-By: <sip:x@{}>\r\n",
                b.me
            ),
            "",
        );
        let accepted = b.ask(&refer);
        assert!(accepted.starts_with("SIP/2.0 202"), "{accepted}");
        for _ in 0..3 {
            take("NOTIFY", "200 OK");
        }
        take("BYE", "200 OK");
        seen
    });

    let invite = format!(
        "INVITE sip:x@{edge} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-extreme-inv;rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:a@{me}>;tag=caller\r\nTo: <sip:x@{edge}>\r\nCall-ID: extreme-1\r\n\
CSeq: 1 INVITE\r\nContact: <sip:a@{me}>\r\nExpires: {HUGE}\r\nSupported: timer\r\n\
Session-Expires: {HUGE}\r\nMin-SE: {HUGE}\r\nContent-Type: application/sdp\r\n\
Content-Length: {}\r\n\r\n{}",
        sdp("127.0.0.9").len(),
        sdp("127.0.0.9"),
        me = a.me,
    );
    let ok = a.ask(&invite);
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    let d = Dialog::of_caller(&ok);
    a.send(&d.request(a.me, "ACK", "1", "", ""));
    let info = a.ask(&d.request(a.me, "INFO", "2", &format!("Expires: {HUGE}\r\n"), ""));
    assert!(
        info.starts_with("SIP/2.0 200"),
        "relayed and answered: {info}"
    );
    for (cseq, extra) in [
        ("2147483648", ""),
        ("3", "Content-Length: 18446744073709551616\r\n"),
        ("3", "Max-Forwards: 18446744073709551616\r\n"),
    ] {
        let r = a.ask(&d.request(a.me, "INFO", cseq, extra, ""));
        assert!(r.starts_with("SIP/2.0 400 "), "CSeq {cseq}, {extra:?}: {r}");
    }
    go.send(()).unwrap();
    let refer = a.request("REFER");
    assert!(d.owns(&refer), "not the caller's dialog (481):\n{refer}");
    a.answer(&refer, "202 Accepted", "", "", "");
    for (cseq, (head, body)) in [
        ("3", frag(&format!("active;expires={HUGE}"), "100 Trying")),
        (
            "4",
            frag("active;expires=99999999999999999999999", "180 Ringing"),
        ),
        (
            "5",
            frag("terminated;reason=noresource", "503 Service Unavailable"),
        ),
    ] {
        let r = a.ask(&d.request(a.me, "NOTIFY", cseq, &head, &body));
        assert!(r.starts_with("SIP/2.0 200"), "NOTIFY {cseq}: {r}");
    }
    let bye = a.ask(&d.request(a.me, "BYE", "2147483647", "", ""));
    assert!(bye.starts_with("SIP/2.0 200"), "{bye}");
    let seen = callee.join().expect("the callee saw its call through");
    let methods: Vec<&str> = seen
        .iter()
        .map(|m| m.split(' ').next().unwrap_or(""))
        .collect();
    assert_eq!(
        methods,
        ["INVITE", "ACK", "INFO", "NOTIFY", "NOTIFY", "NOTIFY", "BYE"],
        "what the callee received: none of the refused INFOs"
    );

    let r = finish_uac(uac, &stat);
    assert_eq!((r.exit, r.successful, r.failed), (Some(0), 60, 0), "{r:?}");
    uas.expect_calls(60);
    assert_eq!(worker_pid(c.worker), worker, "the worker never restarted");
}
