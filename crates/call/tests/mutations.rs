//! Bad input through whole calls: seeded runs of a call's messages (A's
//! INVITE, B's answers, ACK, re-INVITE, REFER with and without Replaces,
//! NOTIFY, BYE, CANCEL and a few strays), where any message may be
//! damaged (a header's value replaced by a hostile one, a line dropped or
//! doubled, the message cut short, a byte flipped), every request the
//! B2BUA sends is answered with a random status or not at all, the clock
//! jumps, and the call may be handed over to a second B2BUA mid-way
//! (`hand_over` then `adopt`, as a shard move does). The B2BUA must never
//! panic, and everything it sends must scan: a worker that panics drops
//! every call it holds. `MUTATION_SEEDS=n MUTATION_FIRST=m` searches
//! longer (with `--release`).

use handover_call::{B2bua, CallRecord, Config, Replication, TransferMode};
use handover_sip::{Message, Method, scan};

mod common;
use common::{SDP_A, SDP_B, Seq, a_invite, at, b_resp, from_a, from_b};

/// A small deterministic generator for the run's choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// Values a hostile or broken peer puts in headers.
fn nasty(r: &mut Rng) -> Vec<u8> {
    const V: &[&str] = &[
        "",
        " ",
        "0",
        "-1",
        "4294967295",
        "4294967296",
        "18446744073709551615",
        "18446744073709551616",
        "99999999999999999999999999",
        "<>",
        "<sip:>",
        "sip:",
        ";",
        ";;;=;=",
        "\"",
        "<sip:x@[::1>",
        "1 INVITE",
        "x INVITE",
        "4294967296 INVITE",
        "1 XYZ",
        "<sip:c@127.0.0.1:5072?Replaces=a-call%3Bto-tag%3Dbt%3Bfrom-tag%3Dat>",
        "<sip:c@127.0.0.1:5072?Replaces=nope%3Bto-tag%3D%3Bfrom-tag%3D>",
        "<sip:c@127.0.0.1:5072?Replaces=%",
        "a-call;to-tag=;from-tag=",
        "a-call;to-tag=bt;from-tag=at;early-only",
        "terminated;reason=noresource",
        "active;expires=99999999999999999999",
        "refer;id=99999999999999999999",
        "refer;id=",
        "message/sipfrag",
        "application/sdp",
        "SIP/2.0 200 OK",
        "90;refresher=uac",
        "18446744073709551616;refresher=uas",
        "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-x;k=",
        "SIP/2.0/UDP 127.0.0.1:5060;branch=;k=zz;received=;rport=x",
        "SIP/2.0/TCP [::1]:99999",
        "*",
        "<sip:a@127.0.0.1:5061>;expires=99999999999999999999;q=7.5",
        "Digest username=\"a\", realm=\"r\", nonce=\"\", uri=\"\", response=\"\"",
        "<sip:127.0.0.1:5060;lr;k=1>, <sip:x;lr>",
    ];
    match r.below(V.len() + 3) {
        i if i < V.len() => V[i].as_bytes().to_vec(),
        i if i == V.len() => vec![b'a'; 1 + r.below(5000)],
        i if i == V.len() + 1 => (0..1 + r.below(40)).map(|_| r.next() as u8).collect(),
        _ => format!("{}", r.next()).into_bytes(),
    }
}

/// Headers a peer may add, whatever the request.
const HEADERS: &[&str] = &[
    "Session-Expires",
    "Min-SE",
    "Replaces",
    "Refer-To",
    "Referred-By",
    "Expires",
    "RSeq",
    "RAck",
    "Event",
    "Subscription-State",
    "Max-Forwards",
    "Authorization",
    "Proxy-Authorization",
    "Contact",
    "Record-Route",
    "Route",
    "Via",
    "CSeq",
    "Call-ID",
    "From",
    "To",
    "Content-Length",
    "Content-Type",
    "Require",
    "Supported",
    "P-Asserted-Identity",
];

/// `msg`, damaged one way.
fn mutate(r: &mut Rng, msg: &[u8]) -> Vec<u8> {
    let head_end = memchr(msg).unwrap_or(msg.len());
    let (head, body) = msg.split_at(head_end);
    let mut lines: Vec<Vec<u8>> = head.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    let n = lines.len();
    match r.below(8) {
        // A header's value replaced.
        0 | 1 if n > 1 => {
            let i = 1 + r.below(n - 1);
            let colon = lines[i].iter().position(|&b| b == b':').unwrap_or(0);
            let mut l = lines[i][..=colon.min(lines[i].len().saturating_sub(1))].to_vec();
            l.push(b' ');
            l.extend(nasty(r));
            l.push(b'\r');
            lines[i] = l;
        }
        // A line dropped or doubled.
        2 if n > 1 => {
            let i = 1 + r.below(n - 1);
            if r.chance(50) {
                lines.remove(i);
            } else {
                let l = lines[i].clone();
                lines.insert(i, l);
            }
        }
        // A header added.
        3 => {
            let mut l = HEADERS[r.below(HEADERS.len())].as_bytes().to_vec();
            l.extend_from_slice(b": ");
            l.extend(nasty(r));
            l.push(b'\r');
            lines.insert(1.min(n), l);
        }
        // The start line.
        4 => {
            let mut l = lines[0].clone();
            let cut = r.below(l.len().max(1));
            l.truncate(cut);
            l.extend(nasty(r));
            l.push(b'\r');
            lines[0] = l;
        }
        // Cut short, or a byte flipped.
        5 => return msg[..r.below(msg.len().max(1))].to_vec(),
        6 if !msg.is_empty() => {
            let mut m = msg.to_vec();
            let i = r.below(m.len());
            m[i] ^= 1 << r.below(8);
            return m;
        }
        _ => {
            return msg.to_vec();
        }
    }
    let mut out = lines.join(&b'\n');
    out.extend_from_slice(body);
    out
}

fn memchr(m: &[u8]) -> Option<usize> {
    m.windows(4).position(|w| w == b"\r\n\r\n")
}

/// `registered`: B is a registered user (no route names it), reached on
/// its bindings' flows, forked when it has several.
fn config(mode: TransferMode, registered: bool) -> Config {
    let specs: &[&str] = if registered {
        &["c=127.0.0.1:5072"]
    } else {
        &["b=127.0.0.1:5071", "c=127.0.0.1:5072", "*=127.0.0.1:5073"]
    };
    Config {
        transfer_mode: mode,
        ..common::config(specs, Default::default(), 64)
    }
}

/// What the run knows of the call from what the B2BUA sent.
#[derive(Default)]
struct Seen {
    /// Our INVITE to B (the first one on leg B).
    b_invite: Option<Vec<u8>>,
    /// A's tag, from our first answer to A that has one.
    a_tag: Option<String>,
    /// Requests the B2BUA sent, not yet answered by this run.
    requests: Vec<Vec<u8>>,
}

/// A response to `req` with `status`, as its receiver sends it.
fn answer(req: &Message<'_>, status: u16, sdp: bool) -> String {
    let text = handover_sip::build::reason_phrase(status);
    b_resp(req, &format!("{status} {text}"), "bt", sdp.then_some(SDP_B))
}

/// What the runs reached, summed.
#[derive(Default, Debug)]
struct Reached {
    sent: u64,
    replaces_elsewhere: u64,
    answered: u64,
    hung_up: u64,
    adopted: u64,
    transfers: u64,
}

/// B's phone registering binding `n` (its own flow) as the edge forwards it.
fn register(n: u32, cseq: u32) -> String {
    format!(
        "REGISTER sip:127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-hxr{n}x{cseq};k=1\r\n\
Via: SIP/2.0/UDP 192.168.1.{n}:5060;branch=z9hG4bKr{n}x{cseq};received=203.0.113.{n};rport=4000{n}\r\n\
Max-Forwards: 69\r\nFrom: <sip:b@127.0.0.1>;tag=r{n}\r\nTo: <sip:b@127.0.0.1>\r\n\
Call-ID: reg-b-{n}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:b@192.168.1.{n}:5060>\r\n\
Expires: 600\r\nContent-Length: 0\r\n\r\n"
    )
}

/// Another worker's confirmed call (`r-call`: the transferor's call with
/// the target, for an attended transfer across workers), and how its
/// parties name its dialogs.
struct Remote {
    record: CallRecord,
    /// Our tag on its leg A (the transferor's To tag).
    a_tag: String,
    /// Its leg B's Call-ID and our tag there (the target's view).
    b_call_id: String,
    b_tag: String,
}

/// Sets up `r-call` on a B2BUA of its own and takes its committed record.
fn remote_call(seed: u64) -> Option<Remote> {
    let mut o = B2bua::new(config(TransferMode::Passthrough, false), Seq(seed ^ 0x5555));
    o.set_replication(true);
    o.set_member(3);
    o.handle_datagram(at(0), a_invite().replace("a-call", "r-call").as_bytes());
    let sent: Vec<Vec<u8>> = std::iter::from_fn(|| o.poll_transmit())
        .map(|(_, b)| b)
        .collect();
    let bi_bytes = sent.into_iter().find(|b| b.starts_with(b"INVITE "))?;
    let bi = scan(&bi_bytes).ok()?;
    o.handle_datagram(at(10), b_resp(&bi, "200 OK", "bt", Some(SDP_B)).as_bytes());
    let mut record = None;
    while let Some(r) = o.poll_replication() {
        if let Replication::Upsert(rec) = r {
            o.stored(&rec.id, rec.version);
            o.committed(at(20), &rec.id);
            record = Some(*rec);
        }
    }
    let ok = std::iter::from_fn(|| o.poll_transmit())
        .map(|(_, b)| b)
        .find(|b| b.starts_with(b"SIP/2.0 200"))?;
    let a_tag = String::from_utf8_lossy(scan(&ok).ok()?.to_tag()?).into_owned();
    Some(Remote {
        record: record?,
        a_tag,
        b_call_id: String::from_utf8_lossy(bi.call_id()).into_owned(),
        b_tag: String::from_utf8_lossy(bi.from_tag()?).into_owned(),
    })
}

struct Run {
    remote: Option<Remote>,
    registered: bool,
    transfers: u64,
    b: B2bua<Seq>,
    r: Rng,
    now: u64,
    seen: Seen,
    mode: TransferMode,
    sent: u64,
}

impl Run {
    fn new(seed: u64) -> Self {
        let mut r = Rng(seed);
        let mode = if r.chance(50) {
            TransferMode::Local
        } else {
            TransferMode::Passthrough
        };
        let registered = r.chance(30);
        let mut b = B2bua::new(config(mode, registered), Seq(seed));
        let replicate = r.chance(75);
        b.set_replication(replicate);
        if replicate {
            b.set_member(1);
        }
        b.set_records(r.chance(50));
        let remote = if r.chance(40) {
            remote_call(seed)
        } else {
            None
        };
        Self {
            remote,
            registered,
            transfers: 0,
            b,
            r,
            now: 0,
            seen: Seen::default(),
            mode,
            sent: 0,
        }
    }

    /// Feeds one message (damaged 30% of the time), then drains.
    fn feed(&mut self, msg: &[u8]) {
        let m = if self.r.chance(30) {
            mutate(&mut self.r, msg)
        } else {
            msg.to_vec()
        };
        self.now += self.r.below(300) as u64;
        // A Replaces naming the other worker's call: its record is read
        // for this datagram, as the worker's shell does.
        let learned = match (&self.remote, scan(&m)) {
            (Some(r), Ok(mm)) => match self.b.named_elsewhere(&mm) {
                Some(id) if id == r.record.a_call_id || id == r.record.b_call_id => {
                    self.b.learn_remote(r.record.clone());
                    true
                }
                _ => false,
            },
            _ => false,
        };
        self.b.handle_datagram(at(self.now), &m);
        if learned {
            self.b.forget_remote();
        }
        // An answer to what does not scan copies what it can: it may
        // lack a header the input lacked (a message cut short).
        let whole = scan(&m).is_ok();
        self.drain_checked(whole);
    }

    fn drain(&mut self) {
        self.drain_checked(true);
    }

    fn drain_checked(&mut self, whole: bool) {
        while let Some((_, bytes)) = self.b.poll_transmit() {
            self.sent += 1;
            if !whole && (bytes.starts_with(b"SIP/2.0 4") || bytes.starts_with(b"SIP/2.0 5")) {
                continue;
            }
            let m = scan(&bytes).unwrap_or_else(|e| {
                panic!(
                    "the B2BUA sent what does not scan ({e:?}):\n{}",
                    String::from_utf8_lossy(&bytes)
                )
            });
            if m.is_request() {
                if m.method() == Some(Method::Invite)
                    && m.call_id() != b"a-call"
                    && self.seen.b_invite.is_none()
                {
                    self.seen.b_invite = Some(bytes.clone());
                }
                if !matches!(m.method(), Some(Method::Ack)) && self.seen.requests.len() < 64 {
                    self.seen.requests.push(bytes.clone());
                }
            } else if m.call_id() == b"a-call"
                && self.seen.a_tag.is_none()
                && let Some(t) = m.to_tag()
            {
                self.seen.a_tag = Some(String::from_utf8_lossy(t).into_owned());
            }
        }
        // What the shell would do with the replication queue: commit
        // most records, refuse a few.
        while let Some(rep) = self.b.poll_replication() {
            if let Replication::Upsert(rec) = rep {
                let now = at(self.now);
                match self.r.below(10) {
                    0 => self.b.refused(now, &rec.id),
                    1 => {}
                    _ => {
                        self.b.stored(&rec.id, rec.version);
                        self.b.committed(now, &rec.id);
                    }
                }
            }
        }
        while self.b.poll_record().is_some() {}
        while self.b.poll_transfer().is_some() {
            self.transfers += 1;
        }
        while self.b.poll_latency().is_some() {}
    }

    /// Answers (or drops) the requests the B2BUA sent so far.
    fn answer_requests(&mut self) {
        const STATUS: &[u16] = &[
            100, 180, 183, 200, 202, 400, 401, 407, 408, 481, 486, 487, 488, 491, 500, 503, 603,
        ];
        for req in std::mem::take(&mut self.seen.requests) {
            if self.r.chance(20) {
                continue;
            }
            let Ok(m) = scan(&req) else { continue };
            let status = STATUS[self.r.below(STATUS.len())];
            let sdp = m.method() == Some(Method::Invite) && self.r.chance(70);
            let resp = answer(&m, status, sdp);
            self.feed(resp.as_bytes());
        }
    }

    fn tick(&mut self) {
        let jump = match self.r.below(4) {
            0 => 40_000,
            _ => self.r.below(2_000) as u64,
        };
        self.now += jump;
        self.b.handle_timeout(at(self.now));
        self.drain();
    }

    /// Hands every call over to a fresh B2BUA, as a shard move does.
    fn move_calls(&mut self, seed: u64, reached: &mut Reached) {
        self.count(reached);
        let (_, last) = self.b.hand_over(|_| true);
        let mut next = B2bua::new(config(self.mode, self.registered), Seq(seed ^ 0xabcdef));
        next.set_replication(true);
        next.set_member(2);
        for rec in last {
            next.adopt(at(self.now), rec);
        }
        self.b = next;
        self.drain();
    }

    /// Adds this B2BUA's counts to `reached`.
    fn count(&self, reached: &mut Reached) {
        let st = self.b.stats();
        reached.answered += st.answered;
        reached.hung_up += st.hung_up;
        reached.adopted += st.adopted;
        reached.replaces_elsewhere += st.replaces_elsewhere;
    }

    fn a_tag(&self) -> String {
        self.seen.a_tag.clone().unwrap_or_else(|| "none".into())
    }

    fn b_invite(&self) -> Vec<u8> {
        self.seen
            .b_invite
            .clone()
            .unwrap_or_else(|| a_invite().into_bytes())
    }
}

/// `extra` headers put into `msg` before its Content-Length.
fn with_headers(msg: &str, extra: &[(&str, String)]) -> String {
    let mut add = String::new();
    for (n, v) in extra {
        add.push_str(&format!("{n}: {v}\r\n"));
    }
    msg.replacen("Content-Length:", &format!("{add}Content-Length:"), 1)
}

fn one_call(seed: u64, reached: &mut Reached) {
    let mut run = Run::new(seed);
    if run.registered {
        for n in 1..=1 + run.r.below(3) as u32 {
            run.feed(register(n, 1).as_bytes());
        }
    }
    run.feed(a_invite().as_bytes());
    // Most runs first get the call answered and acknowledged, so that
    // what follows reaches the in-dialog code.
    if run.r.chance(70) {
        let bi_bytes = run.b_invite();
        if let Ok(bi) = scan(&bi_bytes) {
            run.feed(b_resp(&bi, "180 Ringing", "bt", None).as_bytes());
            run.feed(b_resp(&bi, "200 OK", "bt", Some(SDP_B)).as_bytes());
            let a_tag = run.a_tag();
            run.feed(from_a("ACK", 1, &format!("s{seed}ack"), &a_tag, None).as_bytes());
        }
    }
    let steps = 6 + run.r.below(20);
    let mut cseq_a = 1u32;
    let mut cseq_b = 1u32;
    for step in 0..steps {
        let bi_bytes = run.b_invite();
        let Ok(bi) = scan(&bi_bytes) else { break };
        let a_tag = run.a_tag();
        let branch = format!("s{seed}x{step}");
        let msg = match run.r.below(18) {
            0 => b_resp(&bi, "180 Ringing", "bt", None),
            1 | 2 => b_resp(&bi, "200 OK", "bt", Some(SDP_B)),
            3 => from_a("ACK", cseq_a, &branch, &a_tag, None),
            4 => {
                cseq_a += 1;
                from_a("INVITE", cseq_a, &branch, &a_tag, Some(SDP_A))
            }
            5 => {
                cseq_b += 1;
                let refer_to = match (run.r.below(3), &run.remote) {
                    (0, _) => "<sip:c@127.0.0.1:5072>".to_string(),
                    (1, Some(r)) => format!(
                        "<sip:c@127.0.0.1:5072?Replaces=r-call%3Bto-tag%3D{}%3Bfrom-tag%3Dat>",
                        r.a_tag
                    ),
                    _ => "<sip:c@127.0.0.1:5072?Replaces=a-call%3Bto-tag%3Dbt%3Bfrom-tag%3Dat>"
                        .to_string(),
                };
                with_headers(
                    &from_b(&bi, "REFER", cseq_b, &branch),
                    &[
                        ("Refer-To", refer_to),
                        ("Referred-By", "<sip:b@127.0.0.1:5071>".into()),
                    ],
                )
            }
            6 => {
                cseq_a += 1;
                let body = "SIP/2.0 200 OK\r\n";
                from_a("NOTIFY", cseq_a, &branch, &a_tag, None)
                    .replacen(
                        "Content-Length: 0\r\n\r\n",
                        &format!(
                            "Event: refer;id={cseq_b}\r\nSubscription-State: terminated;reason=noresource\r\n\
Content-Type: message/sipfrag\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        ),
                        1,
                    )
            }
            7 => {
                cseq_a += 1;
                from_a("BYE", cseq_a, &branch, &a_tag, None)
            }
            8 => {
                cseq_b += 1;
                from_b(&bi, "BYE", cseq_b, &branch)
            }
            9 => a_invite().replacen("INVITE sip", "CANCEL sip", 1).replacen(
                "CSeq: 1 INVITE",
                "CSeq: 1 CANCEL",
                1,
            ),
            10 => {
                cseq_b += 1;
                let m = ["INFO", "UPDATE", "OPTIONS", "MESSAGE", "SUBSCRIBE", "PRACK"];
                from_b(&bi, m[run.r.below(m.len())], cseq_b, &branch)
            }
            11 => {
                cseq_a += 1;
                with_headers(
                    &from_a("INVITE", cseq_a, &branch, &a_tag, Some(SDP_A)),
                    &[("Session-Expires", "90;refresher=uac".into())],
                )
            }
            12 => {
                // A new call that replaces leg B's dialog (attended
                // transfer's INVITE with Replaces), from C.
                let replaces = match &run.remote {
                    Some(r) if run.r.chance(50) => {
                        format!("{};to-tag={};from-tag=bt", r.b_call_id, r.b_tag)
                    }
                    _ => format!(
                        "{};to-tag=bt;from-tag=at",
                        String::from_utf8_lossy(bi.call_id())
                    ),
                };
                with_headers(
                    &a_invite().replace("a-call", &format!("c-{seed}")),
                    &[("Replaces", replaces)],
                )
            }
            13 => {
                run.answer_requests();
                continue;
            }
            16 if run.registered => register(1 + run.r.below(3) as u32, 2 + step as u32),
            14 => {
                run.tick();
                continue;
            }
            _ => {
                run.move_calls(seed, reached);
                continue;
            }
        };
        run.feed(msg.as_bytes());
    }
    // Whatever is left runs out.
    for _ in 0..4 {
        run.answer_requests();
        run.tick();
    }
    run.count(reached);
    reached.sent += run.sent;
    reached.transfers += run.transfers;
}

#[test]
fn damaged_messages_through_whole_calls_never_panic_and_what_goes_out_scans() {
    // MUTATION_SEEDS=n for a longer search (release build advised).
    let seeds: u64 = std::env::var("MUTATION_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3_000);
    let first: u64 = std::env::var("MUTATION_FIRST")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut reached = Reached::default();
    for seed in first..first + seeds {
        one_call(seed, &mut reached);
    }
    eprintln!("{seeds} seeds: {reached:?}");
    // The runs got somewhere: calls were answered, hung up, handed over
    // and transferred, not refused at the first damaged byte.
    assert!(reached.answered > seeds / 10, "{reached:?}");
    assert!(reached.hung_up > seeds / 10, "{reached:?}");
    assert!(reached.transfers > seeds / 100, "{reached:?}");
    assert!(reached.adopted > seeds / 200, "{reached:?}");
    assert!(reached.replaces_elsewhere > seeds / 200, "{reached:?}");
}
