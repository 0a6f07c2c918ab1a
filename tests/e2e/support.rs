//! Helpers shared by the end-to-end tests: processes that are killed when
//! dropped, free loopback ports, SIPp, metrics scraping.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use tokio::time::Instant;

/// Runs the handover binary with `args` and returns what it did.
pub(crate) fn handover(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_handover"))
        .args(args)
        .output()
        .expect("the handover binary runs")
}

/// Writes `text` to `name` inside `dir` and returns the path as a string.
pub(crate) fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

/// Standard output as text.
pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Standard error as text.
pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The next port to try for a listener: ports are taken from 20000..32000,
/// below the kernel's ephemeral range (32768 and up), so a connection's
/// local port cannot take a port between the test choosing it and a
/// process binding it (seen: `up`'s own gRPC clients took its edge's SIP
/// port), and never the same one twice in this process.
fn next_port() -> u16 {
    next_ports(1)
}

/// The first of `n` consecutive ports taken at once (see [`next_port`]):
/// one atomic step, so a test on another thread cannot be handed one of
/// them between the first and the rest (seen: a CLI test's worker took
/// the browser test's worker 2 port). A block that would run past 32000
/// is skipped whole.
fn next_ports(n: u16) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let seed = (std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos()))
        % 12_000;
    let _ = NEXT.compare_exchange(u32::MAX, seed, Ordering::Relaxed, Ordering::Relaxed);
    loop {
        let i = NEXT.fetch_add(u32::from(n), Ordering::Relaxed) % 12_000;
        if i + u32::from(n) <= 12_000 {
            return 20_000 + u16::try_from(i).unwrap_or(0);
        }
    }
}

/// The first of `n` consecutive TCP ports on 127.0.0.1 that were free a
/// moment ago.
pub(crate) fn free_tcp_ports(n: u16) -> u16 {
    for _ in 0..12_000 {
        // The whole block is taken: no later pick overlaps it.
        let base = next_ports(n);
        if (0..n).all(|k| std::net::TcpListener::bind(("127.0.0.1", base + k)).is_ok()) {
            return base;
        }
    }
    panic!("no {n} consecutive free TCP ports in 20000..32000");
}

/// The first of `n` consecutive UDP ports on 127.0.0.1 that were free a
/// moment ago (worker i of a cluster listens on the first + i).
pub(crate) fn free_udp_ports(n: u16) -> u16 {
    for _ in 0..12_000 {
        // The whole block is taken: no later pick overlaps it.
        let base = next_ports(n);
        if (0..n).all(|k| UdpSocket::bind(("127.0.0.1", base + k)).is_ok()) {
            return base;
        }
    }
    panic!("no {n} consecutive free UDP ports in 20000..32000");
}

/// A TCP port on 127.0.0.1 that was free a moment ago (for HTTP listeners:
/// a UDP-free port may be taken for TCP).
pub(crate) fn free_tcp_port() -> u16 {
    free_tcp_ports(1)
}

/// A port on 127.0.0.1 free for both UDP and TCP a moment ago (SIP uses
/// one port for both: `handover up` listens on each).
pub(crate) fn free_sip_port() -> u16 {
    for _ in 0..12_000 {
        let p = next_port();
        if UdpSocket::bind(("127.0.0.1", p)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
        {
            return p;
        }
    }
    panic!("no port free for both UDP and TCP in 20000..32000");
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
pub(crate) fn free_udp_port() -> u16 {
    for _ in 0..12_000 {
        let p = next_port();
        if UdpSocket::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    panic!("no free UDP port in 20000..32000");
}

/// The SIPp scenarios in `tests/sipp` (copied from the project's shared set).
pub(crate) fn scenario(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/sipp")
        .join(name);
    assert!(p.exists(), "missing SIPp scenario {}", p.display());
    p
}

/// Fails the test with what to install when `sipp` is missing.
pub(crate) fn require_sipp() {
    let ok = Command::new("sipp").arg("-v").output().is_ok();
    assert!(
        ok,
        "sipp is not installed: run scripts/install-deps.sh (Debian package sip-tester)"
    );
}

/// Starts a SIPp UAS on `port` answering calls with `uas.xml`. Errors go
/// to `dir/uas-PORT.err`, statistics to `dir/uas-PORT.csv`; the test must
/// account for its calls ([`Uas::expect_calls`]).
pub(crate) fn sipp_uas(dir: &Path, port: u16) -> Uas {
    uas(dir, "uas.xml", port, false)
}

/// A SIPp callee that must be accounted for: dropping it without a call to
/// [`Uas::expect_calls`] (or [`expect_calls_total`]) fails the test, so no
/// test can start a callee and forget to ask what it saw.
pub(crate) struct Uas {
    proc: Proc,
    pub(crate) port: u16,
    stat: PathBuf,
    err: PathBuf,
    scenario: String,
    accounted: bool,
}

impl Drop for Uas {
    fn drop(&mut self) {
        let _ = self.proc.0.kill();
        let _ = self.proc.0.wait();
        if !self.accounted && !std::thread::panicking() {
            panic!(
                "the callee {} on port {} was never asked how many calls it saw (Uas::expect_calls)",
                self.scenario, self.port
            );
        }
    }
}

impl Uas {
    /// (successful, failed) calls from the latest statistics dump (SIPp
    /// writes one a second, and one when it stops).
    pub(crate) fn counts(&self) -> (u64, u64) {
        let (s, f, _) = read_sipp_stats(&self.stat);
        (s, f)
    }

    /// Waits (up to 45 s) until this callee has finished exactly `n`
    /// calls as its scenario says, BYE or CANCEL included, with none
    /// failed, and its error log holds no unexpected, automatic-response,
    /// discarded or dead-call event. A call whose BYE never came stays
    /// open (or fails at the receive timeout) and fails the test, naming
    /// this callee.
    pub(crate) fn expect_calls(&mut self, n: u64) {
        expect_calls_total(&mut [self], n);
    }

    /// For the one test whose callees are meant to see unexpected
    /// messages (a backend killed under the edge): the test reads their
    /// logs itself; `why` says what it checks instead.
    pub(crate) fn checked_by_test(&mut self, why: &str) {
        assert!(!why.is_empty());
        self.accounted = true;
    }

    /// Marks this callee as one that must see no call at all, checked.
    pub(crate) fn expect_no_calls(&mut self) {
        self.expect_calls(0);
    }
}

/// Waits (up to 45 s) until `callees` together finished exactly `n` calls
/// with none failed (for calls spread over several callees), then checks
/// each one's error log as [`Uas::expect_calls`] does.
pub(crate) fn expect_calls_total(callees: &mut [&mut Uas], n: u64) {
    let total = |cs: &[&mut Uas]| {
        cs.iter().fold((0, 0), |(s, f), c| {
            let (a, b) = c.counts();
            (s + a, f + b)
        })
    };
    wait_for(Duration::from_secs(45), || {
        let (s, f) = total(callees);
        s + f >= n
    });
    // One more statistics dump: a call beyond `n` shows up too.
    std::thread::sleep(Duration::from_millis(1100));
    let (s, f) = total(callees);
    let names: Vec<String> = callees
        .iter()
        .map(|c| {
            let (a, b) = c.counts();
            format!("{} on {}: {a} ok, {b} failed", c.scenario, c.port)
        })
        .collect();
    for c in callees.iter_mut() {
        c.accounted = true;
    }
    assert_eq!(
        (s, f),
        (n, 0),
        "the callees should have finished exactly {n} calls as their scenarios expect (BYE included): {names:?}"
    );
    for c in callees.iter() {
        let errs = error_lines(&c.err);
        assert!(
            errs.is_empty(),
            "the callee {} on port {} saw: {errs:#?}",
            c.scenario,
            c.port
        );
    }
}

/// (SuccessfulCall, FailedCall, CurrentCall) of a SIPp statistics file's
/// last line (all 0 when it has none yet).
pub(crate) fn read_sipp_stats(stat: &Path) -> (u64, u64, u64) {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(';').collect();
    let last: Vec<&str> = lines.last().unwrap_or("").split(';').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .and_then(|i| last.get(i))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (
        col("SuccessfulCall(C)"),
        col("FailedCall(C)"),
        col("CurrentCall"),
    )
}

/// One SIPp UAS: `scenario` (in `tests/sipp`) on `port`, errors in
/// `dir/uas-PORT.err`, statistics every second in `dir/uas-PORT.csv`, every
/// message logged if `trace`. A request it waits for that does not come
/// within 30 s fails the call (`-recv_timeout`). No `-aa`: an INFO, NOTIFY,
/// OPTIONS or UPDATE the scenario does not expect is an unexpected message,
/// not a silent 200 (only the edge's own tests, whose backends get the
/// edge's OPTIONS health probes, use [`sipp_uas_probed`]).
fn uas(dir: &Path, scenario_file: &str, port: u16, trace: bool) -> Uas {
    uas_with(dir, scenario_file, port, trace, false)
}

/// A SIPp UAS that answers the edge's OPTIONS health probes (`-aa`: the
/// probes are out-of-dialog OPTIONS; [`error_lines`] accepts the automatic
/// answer only for a probe's Call-ID).
pub(crate) fn sipp_uas_probed(dir: &Path, port: u16) -> Uas {
    uas_with(dir, "uas.xml", port, false, true)
}

fn uas_with(dir: &Path, scenario_file: &str, port: u16, trace: bool, probed: bool) -> Uas {
    uas_flags(dir, scenario_file, port, (trace, probed), &[])
}

/// A SIPp callee running `scenario_file` with SIPp flags added (`-t t1`:
/// it listens on TCP and takes every call on the connections made to it).
pub(crate) fn sipp_uas_on(dir: &Path, scenario_file: &str, port: u16, flags: &[&str]) -> Uas {
    uas_flags(dir, scenario_file, port, (false, false), flags)
}

fn uas_flags(
    dir: &Path,
    scenario_file: &str,
    port: u16,
    (trace, probed): (bool, bool),
    flags: &[&str],
) -> Uas {
    require_sipp();
    let err = dir.join(format!("uas-{port}.err"));
    let stat = dir.join(format!("uas-{port}.csv"));
    let mut cmd = Command::new("sipp");
    cmd.args(["-sf"])
        .arg(scenario(scenario_file))
        .args([
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-nostdin",
            "-recv_timeout",
            "30s",
            "-trace_stat",
            "-fd",
            "1",
            "-stf",
        ])
        .arg(&stat)
        .args(["-trace_err", "-error_file"])
        .arg(&err);
    if probed {
        cmd.arg("-aa");
    }
    if trace {
        cmd.arg("-trace_msg");
    }
    cmd.args(flags);
    let child = cmd
        .env("TZ", "UTC")
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sipp starts");
    Uas {
        proc: Proc(child),
        port,
        stat,
        err,
        scenario: scenario_file.to_string(),
        accounted: false,
    }
}

/// Result of a SIPp UAC run.
#[derive(Debug)]
pub(crate) struct UacResult {
    pub(crate) exit: Option<i32>,
    pub(crate) successful: u64,
    pub(crate) failed: u64,
}

impl UacResult {
    /// Asserts the caller's error log (`uac-PORT.err` beside `stat`) holds
    /// no unexpected, discarded or dead-call event: a response or request
    /// with a wrong Call-ID or tag, which SIPp otherwise only logs.
    pub(crate) fn assert_clean(&self, stat: &Path) {
        let err = stat.with_extension("err");
        let errs = error_lines(&err);
        assert!(
            errs.is_empty(),
            "the caller ({}) saw: {errs:#?}",
            err.display()
        );
    }
}

/// Starts a SIPp UAC (`uac.xml`) calling user `b` through `target`.
pub(crate) fn sipp_uac(
    dir: &Path,
    target: SocketAddr,
    rate: u32,
    calls: u32,
    pause_ms: u32,
) -> (Proc, PathBuf) {
    sipp_uac_with(dir, "uac.xml", "b", target, rate, calls, pause_ms)
}

/// Starts a SIPp UAC running `scenario` (in `tests/sipp`) calling `user`.
pub(crate) fn sipp_uac_with(
    dir: &Path,
    scenario_file: &str,
    user: &str,
    target: SocketAddr,
    rate: u32,
    calls: u32,
    pause_ms: u32,
) -> (Proc, PathBuf) {
    sipp_uac_at(
        dir,
        "127.0.0.1",
        scenario_file,
        user,
        target,
        (rate, calls, pause_ms),
    )
}

/// [`sipp_uac_with`] from the loopback address `ip` (127.0.0.0/8: another
/// source as the edge sees it).
pub(crate) fn sipp_uac_at(
    dir: &Path,
    ip: &str,
    scenario_file: &str,
    user: &str,
    target: SocketAddr,
    load: (u32, u32, u32),
) -> (Proc, PathBuf) {
    sipp_uac_on(dir, ip, scenario_file, user, target, load, &[])
}

/// [`sipp_uac_at`] with SIPp flags added (`-t t1`: every call over one
/// TCP connection, `-t tn`: one connection per call).
pub(crate) fn sipp_uac_on(
    dir: &Path,
    ip: &str,
    scenario_file: &str,
    user: &str,
    target: SocketAddr,
    (rate, calls, pause_ms): (u32, u32, u32),
    flags: &[&str],
) -> (Proc, PathBuf) {
    require_sipp();
    let port = free_sip_port();
    let stat = dir.join(format!("uac-{port}.csv"));
    let child = Command::new("sipp")
        .args(["-sf"])
        .arg(scenario(scenario_file))
        .args(["-i", ip, "-p", &port.to_string(), "-s", user])
        .args([
            "-r",
            &rate.to_string(),
            "-m",
            &calls.to_string(),
            "-d",
            &pause_ms.to_string(),
        ])
        .args([
            "-nostdin",
            "-timeout",
            "60s",
            "-trace_msg",
            "-trace_stat",
            "-trace_logs",
            "-fd",
            "1",
            "-stf",
        ])
        .arg(&stat)
        .args(["-trace_err", "-error_file"])
        .arg(dir.join(format!("uac-{port}.err")))
        .args(flags)
        .arg(target.to_string())
        .env("TZ", "UTC")
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sipp starts");
    (Proc(child), stat)
}

/// Starts a SIPp UAS running `scenario` (in `tests/sipp`) on `port`.
pub(crate) fn sipp_uas_with(dir: &Path, scenario_file: &str, port: u16) -> Uas {
    uas(dir, scenario_file, port, false)
}

/// Waits for a UAC to finish, reads its final counts, and asserts its
/// error log is clean ([`UacResult::assert_clean`]).
///
/// Bounded: a UAC still running after 150 s (SIPp's own `-timeout` does not
/// end a call stuck waiting for a request) is killed, and its exit is then
/// `None`.
pub(crate) fn finish_uac(p: Proc, stat: &Path) -> UacResult {
    let r = finish_uac_unchecked(p, stat);
    r.assert_clean(stat);
    r
}

/// [`finish_uac`] without the error-log check, for tests that read the log
/// themselves.
pub(crate) fn finish_uac_unchecked(mut p: Proc, stat: &Path) -> UacResult {
    let end = std::time::SystemTime::now() + Duration::from_secs(150);
    let status = loop {
        if let Some(s) = p.0.try_wait().expect("sipp runs") {
            break s;
        }
        if std::time::SystemTime::now() > end {
            let _ = p.0.kill();
            break p.0.wait().expect("sipp runs");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        stat.exists(),
        "SIPp wrote no statistics file {}: its counts cannot be read",
        stat.display()
    );
    let (successful, failed, _) = read_sipp_stats(stat);
    UacResult {
        exit: status.code(),
        successful,
        failed,
    }
}

/// A running `handover edge`.
pub(crate) struct EdgeProc {
    pub(crate) _proc: Proc,
    pub(crate) sip: SocketAddr,
    pub(crate) admin: String,
    /// The TCP and TLS listeners, when asked for.
    pub(crate) tcp: Option<SocketAddr>,
    pub(crate) tls: Option<SocketAddr>,
}

/// Starts `handover edge` on free ports with `args` added; waits until it
/// prints its addresses.
pub(crate) fn spawn_edge(args: &[&str]) -> EdgeProc {
    spawn_edge_at("127.0.0.1:0", args)
}

/// [`spawn_edge`] with its UDP listener on `listen` (`[::1]:0` for IPv6).
pub(crate) fn spawn_edge_at(listen: &str, args: &[&str]) -> EdgeProc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_handover"))
        .args(["edge", "--listen", listen, "--admin", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("handover edge starts");
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    let mut sip = None;
    let mut admin = None;
    let (mut tcp, mut tls) = (None, None);
    while sip.is_none() || admin.is_none() {
        let line = lines.next().expect("edge prints its addresses").unwrap();
        if let Some(rest) = line.strip_prefix("handover edge listening on udp ") {
            sip = rest.split_whitespace().next().map(|a| a.parse().unwrap());
        }
        if let Some(rest) = line.strip_prefix("handover edge listening on tcp ") {
            tcp = rest.trim().parse().ok();
        }
        if let Some(rest) = line.strip_prefix("handover edge listening on tls ") {
            tls = rest.trim().parse().ok();
        }
        if let Some(rest) = line.strip_prefix("metrics: ") {
            admin = Some(rest.trim_end_matches("/metrics").to_string());
        }
    }
    // Keep reading: an edge that prints more (a cluster's map, a drain)
    // must not die of a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    EdgeProc {
        _proc: Proc(child),
        sip: sip.unwrap(),
        admin: admin.unwrap(),
        tcp,
        tls,
    }
}

/// GETs `url` and returns (status, body).
pub(crate) fn http_get(url: &str) -> (u16, String) {
    http_try(url).expect("admin port answers")
}

/// GETs `url`: (status, body), or the error (nothing listens yet, or
/// any more).
pub(crate) fn http_try(url: &str) -> Result<(u16, String), ureq::Error> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent.get(url).call()?;
    let status = r.status().as_u16();
    Ok((status, r.body_mut().read_to_string().unwrap_or_default()))
}

/// The value of one Prometheus sample, e.g. `metric(&text, "x_total{a=\"b\"}")`.
pub(crate) fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Scrapes the edge's metrics.
pub(crate) fn scrape(e: &EdgeProc) -> String {
    http_get(&format!("{}/metrics", e.admin)).1
}

/// `metric` summed over the workers in `which` (worker i's admin port is
/// `port` + i; a worker that does not answer, or does not listen yet,
/// counts 0).
pub(crate) fn summed(host: &str, port: u16, which: &[u16], series: &str) -> f64 {
    which
        .iter()
        .map(
            |&i| match http_try(&format!("http://{host}:{}/metrics", port + i)) {
                Ok((200, text)) => metric(&text, series),
                _ => 0.0,
            },
        )
        .sum()
}

/// SIGKILLs the worker whose SIP port is `port` (no drain, no goodbye);
/// true when one was found.
pub(crate) fn sigkill_worker(port: u16) -> bool {
    Command::new("pkill")
        .args([
            "-9",
            "-f",
            "--",
            &format!("worker --listen 127.0.0.1:{port}"),
        ])
        .status()
        .is_ok_and(|s| s.success())
}

/// Waits up to `limit` for `f` to hold.
pub(crate) fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// Every event in a SIPp error log (absent file = none) except the
/// automatic 200 to one of the edge's OPTIONS health probes (Call-ID
/// `probe-…`, under `-aa`). SIPp writes an entry per event, each starting
/// with a date; any other entry is a finding: a call aborted on an
/// unexpected message, an automatic answer to an INFO, NOTIFY, OPTIONS or
/// UPDATE the scenario did not expect, a message it could not map to a
/// call (wrong Call-ID), a dead call that got a message, a timeout, or a
/// `check_it` regexp that did not match.
pub(crate) fn error_lines(p: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(p).unwrap_or_default();
    sipp_error_entries(&text)
}

/// The entries of a SIPp error log's text that are findings (see
/// [`error_lines`]).
pub(crate) fn sipp_error_entries(text: &str) -> Vec<String> {
    // SIPp writes "YYYY-MM-DD\tHH:MM:SS.micros\tEPOCH: message", often
    // with no line feed between two entries: split at every date stamp.
    let b = text.as_bytes();
    let stamp_at = |i: usize| {
        b.len() > i + 11
            && b[i..i + 4].iter().all(u8::is_ascii_digit)
            && b[i + 4] == b'-'
            && b[i + 5..i + 7].iter().all(u8::is_ascii_digit)
            && b[i + 7] == b'-'
            && b[i + 8..i + 10].iter().all(u8::is_ascii_digit)
            && b[i + 10] == b'\t'
    };
    let starts: Vec<usize> = (0..b.len()).filter(|&i| stamp_at(i)).collect();
    let rest = text
        .trim()
        .trim_start_matches("The following events occurred:")
        .trim();
    if starts.is_empty() && !rest.is_empty() {
        // Not the format we know: a finding as it stands, not a pass.
        return vec![rest.chars().take(600).collect()];
    }
    let mut entries: Vec<&str> = Vec::new();
    for (k, &i) in starts.iter().enumerate() {
        let end = starts.get(k + 1).copied().unwrap_or(b.len());
        entries.push(&text[i..end]);
    }
    entries
        .into_iter()
        .filter(|e| {
            !e.contains(
                "Automatic response mode for an unexpected INFO, NOTIFY, OPTIONS or UPDATE for call: probe-",
            )
        })
        .filter(|e| !absorbed_by_timer_k(e))
        .map(|e| e.trim().chars().take(600).collect())
        .collect()
}

/// A final response to a non-INVITE request (a BYE's 200) arriving after
/// SIPp finished the call successfully: the answer to a retransmission of
/// that request that crossed the first answer. A real user agent's client
/// transaction absorbs it in its Completed state (RFC 3261 §17.1.2.2,
/// Timer K); SIPp, whose scenario ends at the first answer, logs it as a
/// dead call. Anything else at a dead call stays a finding.
fn absorbed_by_timer_k(entry: &str) -> bool {
    let Some((head, msg)) = entry.split_once("received '") else {
        return false;
    };
    if !head.contains("Dead call") || !head.contains("(successful)") {
        return false;
    }
    let Some(status) = msg
        .strip_prefix("SIP/2.0 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse::<u16>().ok())
    else {
        return false;
    };
    let cseq = msg
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(n, _)| n.trim().eq_ignore_ascii_case("CSeq"))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let method = cseq.split_whitespace().nth(1).unwrap_or("");
    status >= 200 && !method.is_empty() && method != "INVITE"
}

/// Every SIPp error log in `dir` (`*.err`, and `*_errors.log` of processes
/// started with [`sipp`]) with its findings; asserts there are none.
pub(crate) fn assert_sipp_logs_clean(dir: &Path) {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".err") || name.ends_with("_errors.log") {
            for x in error_lines(&p) {
                found.push(format!("{name}: {x}"));
            }
        }
    }
    assert!(found.is_empty(), "SIPp peers saw: {found:#?}");
}

/// SIPp load tests share two cores: run them one at a time.
pub(crate) fn serial() -> std::sync::MutexGuard<'static, ()> {
    #[expect(
        clippy::disallowed_types,
        reason = "test-only lock serialising SIPp runs; no async here"
    )]
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A `handover up` cluster; stopped with SIGTERM (so it stops its children)
/// when dropped.
pub(crate) struct UpProc {
    pub(crate) child: Child,
}

impl Drop for UpProc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let end = std::time::SystemTime::now() + Duration::from_secs(5);
        let mut exited = false;
        while !exited && std::time::SystemTime::now() < end {
            exited = matches!(self.child.try_wait(), Ok(Some(_)));
            if !exited {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // Whatever of its process group is left goes too: `up` killed
        // while its workers drained (a drain that waits for a quorum its
        // test already killed) left them running, and a later test's
        // cluster met one (seen in CI: a worker of the scale test's
        // voters [1,2,4,5] answering a registrar test's status).
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        if !exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A running `handover up` on free ports: SIP port, worker port, admin
/// addresses of edge and worker.
pub(crate) struct Cluster {
    _up: UpProc,
    pub(crate) sip: u16,
    /// The edge's TLS port (TCP is on `sip`).
    pub(crate) tls: u16,
    /// The edge's secure WebSocket port.
    pub(crate) wss: u16,
    pub(crate) worker: u16,
    pub(crate) admin: String,
    pub(crate) worker_admin: String,
    /// The first worker's gRPC address (replicated clusters).
    pub(crate) grpc: String,
}

/// Starts `handover up` with these `--route`s and `extra` flags on free
/// ports; returns once its edge is ready.
pub(crate) fn cluster(routes: &[String], extra: &[&str]) -> Cluster {
    cluster_logged(routes, extra, None)
}

/// [`cluster`] with `RUST_LOG` set to `log.0` and the cluster's log (its
/// stderr, every process's) written to the file `log.1`.
pub(crate) fn cluster_logged(
    routes: &[String],
    extra: &[&str],
    log: Option<(&str, &Path)>,
) -> Cluster {
    // Worker i listens on the first port + i: consecutive ports free for
    // UDP, kept from later picks (a single free one let a test's next
    // pick fall on worker 2's; ports checked for TCP only let worker 2
    // meet a UDP port in use). Five: `handover scale` may add two.
    let (sip, worker) = (free_sip_port(), free_udp_ports(5));
    let (tls, wss) = (free_tcp_port(), free_tcp_port());
    let (tls_listen, wss_listen) = (format!("127.0.0.1:{tls}"), format!("127.0.0.1:{wss}"));
    // Worker i's admin and gRPC ports are the first's + i.
    let (admin, worker_admin) = (
        format!("127.0.0.1:{}", free_tcp_port()),
        format!("127.0.0.1:{}", free_tcp_ports(5)),
    );
    let grpc = format!("127.0.0.1:{}", free_tcp_ports(5));
    let (listen, worker_listen) = (format!("127.0.0.1:{sip}"), format!("127.0.0.1:{worker}"));
    let mut args: Vec<&str> = vec![
        "--listen",
        &listen,
        "--worker-listen",
        &worker_listen,
        "--admin",
        &admin,
        "--worker-admin",
        &worker_admin,
    ];
    for r in routes {
        args.extend(["--route", r.as_str()]);
    }
    let grpc = match extra.iter().position(|a| *a == "--worker-grpc") {
        Some(i) => extra[i + 1].to_string(),
        None => {
            args.extend(["--worker-grpc", grpc.as_str()]);
            grpc.clone()
        }
    };
    if !extra.contains(&"--udp-only") && !extra.contains(&"--listen-tls") {
        args.extend(["--listen-tls", tls_listen.as_str()]);
    }
    if !extra.contains(&"--udp-only") && !extra.contains(&"--listen-wss") {
        args.extend(["--listen-wss", wss_listen.as_str()]);
    }
    args.extend_from_slice(extra);
    if let Some(p) = grpc
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
    {
        forget_creds(p..p.saturating_add(4));
    }
    let up = spawn_up(&args, &admin, log);
    Cluster {
        _up: up,
        sip,
        tls,
        wss,
        worker,
        admin,
        worker_admin,
        grpc,
    }
}

/// Cluster credentials of test clusters started without `up`
/// ([`crate::kube::by_name`]), by gRPC port: each worker's own directory
/// (`up` leaves credentials where `handover status` finds them itself).
#[expect(
    clippy::disallowed_types,
    reason = "test-only map of credentials; no async here"
)]
static CREDS: std::sync::Mutex<std::collections::BTreeMap<u16, PathBuf>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Remembers worker credentials `dir` for the gRPC port `port`.
pub(crate) fn register_creds(port: u16, dir: PathBuf) {
    CREDS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(port, dir);
}

/// Forgets the credentials of gRPC ports `ports`: a cluster that ended
/// leaves none behind for a later cluster that draws the same port
/// (which would then be asked with a dead cluster's certificates).
pub(crate) fn forget_creds(ports: std::ops::Range<u16>) {
    let mut creds = CREDS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for p in ports {
        creds.remove(&p);
    }
}

/// `handover fault --data DATA --id ID ARGS…`: fault injection over a
/// worker's local admin socket. Fails the test, naming the cause, when
/// the binary was built without the cargo feature `fault-injection`.
pub(crate) fn fault(data: &std::path::Path, id: u16, args: &[&str]) -> Output {
    let d = data.to_string_lossy().into_owned();
    let id = id.to_string();
    let mut all = vec!["fault", "--data", d.as_str(), "--id", id.as_str()];
    all.extend_from_slice(args);
    let o = handover(&all);
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("unrecognized subcommand"),
        "this handover binary has no fault injection: build the tests with \
         --features handover/fault-injection (scripts/test.sh does)"
    );
    o
}

/// `handover CMD --grpc GRPC ARGS…` (`status`), with the worker's
/// own credentials when the test cluster has some.
pub(crate) fn admin_cmd(cmd: &str, grpc: &str, args: &[&str]) -> Output {
    let port: u16 = grpc
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(0);
    let creds = CREDS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&port)
        .cloned();
    let mut all = vec![cmd, "--grpc", grpc];
    let dir = creds.map(|d| d.to_string_lossy().into_owned());
    if let Some(d) = &dir {
        all.extend(["--cluster-tls", d.as_str()]);
    }
    all.extend_from_slice(args);
    handover(&all)
}

/// Waits until a replicated cluster's shard map has `n` members up (so no
/// shard moves while a test's calls are set up).
pub(crate) fn wait_members(grpc: &str, n: usize) {
    let mut last = String::new();
    let ok = wait_for(Duration::from_secs(15), || {
        let o = admin_cmd("status", grpc, &["--json"]);
        last = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&o.stdout)
            .is_ok_and(|v| v["members_up"].as_array().is_some_and(|m| m.len() == n))
    });
    assert!(
        ok,
        "{n} workers in the shard map within 15 s; status last said: {last}"
    );
}

/// The cluster hashing of `--hash-key key` (32 hex digits).
pub(crate) fn hashing_of(key: &str) -> handover_sip::ids::Hashing {
    handover_sip::ids::Hashing::with_key(
        u64::from_str_radix(&key[..16], 16).unwrap(),
        u64::from_str_radix(&key[16..], 16).unwrap(),
    )
}

/// Which of `n` workers (gRPC on `grpc`'s port + i) serves the shard of
/// a Call-ID (or of an affinity key, [`owner_of_key`]), from their status
/// answers, in a cluster started with `--hash-key key`.
pub(crate) fn call_id_owner(grpc: &str, n: u16, key: &str) -> impl Fn(&str) -> Option<u16> {
    let by_key = owner_of_key(grpc, n);
    let hashing = hashing_of(key);
    move |cid| by_key(hashing.affinity_key(cid.as_bytes()))
}

/// See [`call_id_owner`]: the worker serving an affinity key's shard.
pub(crate) fn owner_of_key(grpc: &str, n: u16) -> impl Fn(u64) -> Option<u16> {
    let (host, gport) = grpc.rsplit_once(':').unwrap();
    let gport: u16 = gport.parse().unwrap();
    let maps: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let o = admin_cmd("status", &format!("{host}:{}", gport + i), &["--json"]);
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            let hex = v["serving_map"].as_str().unwrap().to_string();
            (0..hex.len() / 2)
                .map(|k| u8::from_str_radix(&hex[2 * k..2 * k + 2], 16).unwrap())
                .collect()
        })
        .collect();
    move |key| {
        let shard = handover_sip::ids::shard_of(key, handover_sip::ids::SHARDS);
        (0..n).find(|&w| maps[w as usize][shard / 8] & (1 << (shard % 8)) != 0)
    }
}

/// Waits until `n` workers (gRPC on `grpc`'s port + i) serve every shard
/// between them: past the handover wait that follows a start, so no
/// request of a test is dropped for a shard nobody serves yet.
pub(crate) fn wait_all_shards_served(grpc: &str, n: u16) {
    let (host, port) = grpc.rsplit_once(':').unwrap();
    let port: u16 = port.parse().unwrap();
    let ok = wait_for(Duration::from_secs(15), || {
        (0..n)
            .map(|i| {
                let o = admin_cmd("status", &format!("{host}:{}", port + i), &["--json"]);
                serde_json::from_slice::<serde_json::Value>(&o.stdout)
                    .ok()
                    .and_then(|v| v["serving_shards"].as_u64())
                    .unwrap_or(0)
            })
            .sum::<u64>()
            == 4096
    });
    assert!(ok, "the {n} workers serve all 4096 shards within 15 s");
}

/// Starts `handover up` with `args`; returns once its edge is ready.
///
/// With `log`: `RUST_LOG` and the log in a file (see [`cluster_logged`]).
fn spawn_up(args: &[&str], edge_admin: &str, log: Option<(&str, &Path)>) -> UpProc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_handover"));
    // Its own process group, so that dropping it can end every process
    // it started (see `UpProc`'s drop).
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.arg("up").args(args).stdout(Stdio::null());
    match log {
        Some((filter, path)) => {
            cmd.env("RUST_LOG", filter)
                .stderr(std::fs::File::create(path).expect("the log file"));
        }
        None => {
            cmd.stderr(Stdio::inherit());
        }
    }
    let child = cmd.spawn().expect("handover up starts");
    let mut up = UpProc { child };
    let ready = wait_for(Duration::from_secs(10), || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        agent
            .get(&format!("http://{edge_admin}/readyz"))
            .call()
            .is_ok_and(|r| r.status().as_u16() == 200)
    });
    let exited = up.child.try_wait().ok().flatten();
    assert!(
        ready,
        "the cluster became ready (handover up exited: {exited:?}; its stderr is above)"
    );
    up
}

/// Starts a SIPp UAS (`uas.xml`) that also logs every message (`-trace_msg`).
pub(crate) fn sipp_uas_traced(dir: &Path, port: u16) -> Uas {
    uas(dir, "uas.xml", port, true)
}

/// Starts a SIPp UAS running `scenario` that logs every message.
pub(crate) fn sipp_uas_traced_with(dir: &Path, scenario_file: &str, port: u16) -> Uas {
    uas(dir, scenario_file, port, true)
}

/// Every SIPp message log (`*_messages.log`) in `dir`, concatenated.
pub(crate) fn sipp_message_logs(dir: &Path) -> String {
    sipp_message_logs_of(dir, "")
}

/// The SIPp message logs in `dir` whose file name starts with `prefix`
/// (SIPp names them after the scenario: `uas_`, `transfer_b_…`),
/// concatenated.
pub(crate) fn sipp_message_logs_of(dir: &Path, prefix: &str) -> String {
    let mut all = String::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with(prefix) && name.ends_with("_messages.log") {
            all += &std::fs::read_to_string(&p).unwrap_or_default();
        }
    }
    all
}

/// Starts SIPp with `args` in `dir`, logging every message and error
/// (`-trace_msg`, `-trace_err`; the message log's times in UTC).
pub(crate) fn sipp(dir: &Path, args: &[&str]) -> Proc {
    require_sipp();
    Proc(
        Command::new("sipp")
            .args(args)
            .env("TZ", "UTC")
            .args(["-nostdin", "-trace_msg", "-trace_err"])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sipp starts"),
    )
}

/// From a SIPp `-trace_msg` log: for each Call-ID that received a BYE, the
/// set of top-Via branches of the BYEs it received (one per transaction;
/// retransmissions repeat their branch).
pub(crate) fn bye_branches_per_call(
    log: &str,
) -> std::collections::HashMap<String, std::collections::HashSet<String>> {
    let mut per: std::collections::HashMap<String, std::collections::HashSet<String>> =
        Default::default();
    for block in log
        .split("----------------------------------------------- ")
        .skip(1)
    {
        let mut lines = block.lines();
        let _stamp = lines.next();
        let what = lines.next().unwrap_or("");
        if !what.contains("received") {
            continue;
        }
        let body: Vec<&str> = lines.skip_while(|l| l.is_empty()).collect();
        if !body.first().is_some_and(|l| l.starts_with("BYE ")) {
            continue;
        }
        let header = |name: &str| {
            body.iter()
                .find_map(|l| {
                    l.split_once(':')
                        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.trim().to_string())
                })
                .unwrap_or_default()
        };
        let via = header("Via");
        let branch = via
            .split(';')
            .find_map(|p| p.trim().strip_prefix("branch="))
            .unwrap_or("")
            .to_string();
        per.entry(header("Call-ID")).or_default().insert(branch);
    }
    per
}

#[test]
fn sipp_error_logs_are_split_into_entries_and_only_absorbed_answers_pass() {
    let probe = "2026-12-03\t09:07:51.785498\t1796288871.785498: Automatic response mode for an unexpected INFO, NOTIFY, OPTIONS or UPDATE for call: probe-0-3-5060";
    let bye = "2026-12-03\t09:07:51.881513\t1796288871.881513: Aborting call on an unexpected BYE for call: 2-1@127.0.0.1";
    // Entries glued together without a line feed, as SIPp writes them.
    let text = format!("The following events occurred:\n{probe}{bye}\n{probe}\n");
    let found = sipp_error_entries(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("unexpected BYE"));
    assert!(sipp_error_entries(&format!("The following events occurred:\n{probe}\n")).is_empty());
    assert!(sipp_error_entries("").is_empty());
    assert_eq!(sipp_error_entries("something else entirely").len(), 1);
    // A BYE's 200 after the call: the answer to a crossed retransmission,
    // absorbed (Timer K); an INVITE's 200 or a request there is a finding.
    let dead = |what: &str| {
        format!(
            "2026-12-07\t12:21:26.177130\t1796646086.177130: Dead call 1676-25722@127.0.0.1 (successful), received '{what}'"
        )
    };
    let bye_ok = dead(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-1-6\r\nCall-ID: 1676-25722@127.0.0.1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
    );
    let invite_ok =
        dead("SIP/2.0 200 OK\r\nCall-ID: 1676-25722@127.0.0.1\r\nCSeq: 1 INVITE\r\n\r\n");
    let bye = dead("BYE sip:uac@127.0.0.1:5060 SIP/2.0\r\nCSeq: 1 BYE\r\n\r\n");
    assert!(sipp_error_entries(&bye_ok).is_empty());
    assert_eq!(
        sipp_error_entries(&format!("{invite_ok}\n{bye}\n{bye_ok}")).len(),
        2
    );
}

/// `handover passwd FILE USER` with `password` on standard input (a users
/// file of digest authentication).
pub(crate) fn passwd(file: &Path, user: &str, password: &str) {
    use std::io::Write as _;
    let mut p = Command::new(env!("CARGO_BIN_EXE_handover"))
        .arg("passwd")
        .arg(file)
        .arg(user)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin
        .take()
        .unwrap()
        .write_all(password.as_bytes())
        .unwrap();
    assert!(p.wait().unwrap().success(), "handover passwd {user}");
}

/// Sends `sig` (as `kill` names it: "TERM", "9", "STOP") to `pid`.
pub(crate) fn signal(pid: u32, sig: &str) {
    let sent = std::process::Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{sig} {pid}");
}

/// Whether process `pid` has exited: gone, or a zombie its parent (this
/// test) has not reaped yet.
pub(crate) fn exited(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
        || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

/// The pid of the worker listening for SIP on `port`.
pub(crate) fn worker_pid(port: u16) -> u32 {
    let o = std::process::Command::new("pgrep")
        .args(["-f", "--", &format!("worker --listen 127.0.0.1:{port} ")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("a worker on port {port}"))
}

/// SIPp with `args` and a statistics file; the caller waits with
/// `finish_uac_unchecked`.
pub(crate) fn sipp_run(dir: &Path, name: &str, args: &[&str]) -> (Proc, PathBuf) {
    let stat = dir.join(format!("{name}.csv"));
    let err = dir.join(format!("{name}.err"));
    let mut all: Vec<&str> = args.to_vec();
    let (stat_s, err_s) = (
        stat.to_string_lossy().into_owned(),
        err.to_string_lossy().into_owned(),
    );
    all.extend([
        "-timeout",
        "60s",
        "-trace_stat",
        "-fd",
        "1",
        "-stf",
        &stat_s,
        "-error_file",
        &err_s,
    ]);
    (sipp(dir, &all), stat)
}

/// For every `method` request a SIPp message log shows as received, the
/// value of its header `name` (None when it has none).
pub(crate) fn received_headers(log: &str, method: &str, name: &str) -> Vec<Option<String>> {
    log.split("----------------------------------------------- ")
        .skip(1)
        .filter_map(|block| {
            let mut lines = block.lines();
            let _stamp = lines.next();
            if !lines.next().is_some_and(|w| w.contains("received")) {
                return None;
            }
            let body: Vec<&str> = lines.skip_while(|l| l.is_empty()).collect();
            if !body
                .first()
                .is_some_and(|l| l.starts_with(&format!("{method} ")))
            {
                return None;
            }
            Some(
                body.iter()
                    .take_while(|l| !l.is_empty())
                    .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                    .map(str::to_string),
            )
        })
        .collect()
}
