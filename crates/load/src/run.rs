//! The socket shell: one engine per thread behind the edge's socket
//! loops, and the run that starts them and adds their counts up.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use handover_txn::{Instant, TimerConfig};

use crate::report::percentiles;
use crate::{Engine, EngineConfig, IoMode, Mix, Progress, Report};

/// What a run is told.
#[derive(Debug, Clone)]
pub struct Options {
    /// Our UDP address; the system under test routes `b`, `xb`, `ab`, `c`
    /// here.
    pub listen: SocketAddr,
    /// The system under test.
    pub target: SocketAddr,
    /// New calls per second.
    pub rate: f64,
    /// Calls in all (the run stops starting calls after this many).
    pub calls: u64,
    /// Or after this long, whichever comes first.
    pub duration: Option<Duration>,
    /// How long each call stays up.
    pub hold: Duration,
    /// At most this many calls at once.
    pub max_concurrent: u64,
    /// The scenario mix.
    pub mix: Mix,
    /// The user basic and hold calls call (see [`EngineConfig::callee`]).
    pub callee: String,
    /// Threads, each with its own socket (`listen` port + i) and an equal
    /// share of the rate and calls. Above 1 only basic and hold calls can
    /// be played (a transfer's parties must share one engine).
    pub threads: usize,
    /// SIP timer T1.
    pub t1: Duration,
    /// The socket loop: io_uring or epoll + recvmmsg/sendmmsg (the
    /// edge's own loops; `Auto` is epoll, see `run_one`).
    pub io: IoMode,
}

/// One thread's run: the engine behind the edge's socket loop.
// The shell runs inside a blocking socket loop on one thread (no runtime:
// fewer wake-ups per datagram than an async one), so it reads the wall
// clock itself; the engine still takes `now` as an argument.
#[expect(
    clippy::disallowed_types,
    reason = "a blocking socket loop with no runtime reads the wall clock itself"
)]
struct Shell<'a, P> {
    opts: &'a Options,
    stop: &'a std::sync::atomic::AtomicBool,
    progress: P,
    e: Engine<rand_chacha::ChaCha12Rng>,
    out: VecDeque<Vec<u8>>,
    t0: std::time::Instant,
    /// Seconds the start schedule was moved back (see `starts_skipped`).
    lag: f64,
    started: u64,
    skipped: u64,
    sent: u64,
    received: u64,
    send_errors: u64,
    /// Datagrams handled since the last tick.
    since_tick: u32,
    last_tick: std::time::Instant,
    last_started: u64,
    sweep_at: std::time::Instant,
    start_deadline: Option<std::time::Instant>,
    starting_ended: Option<std::time::Instant>,
    final_deadline: Option<std::time::Instant>,
}

impl<P: FnMut(&Progress)> Shell<'_, P> {
    fn now(&self) -> Instant {
        Instant::from_epoch(self.t0.elapsed())
    }

    fn take_output(&mut self) {
        self.out.extend(self.e.drain_transmit());
    }
}

#[expect(
    clippy::disallowed_types,
    reason = "a blocking socket loop with no runtime reads the wall clock itself"
)]
impl<P: FnMut(&Progress)> handover_io::Handler for Shell<'_, P> {
    fn datagram(
        &mut self,
        _: SocketAddr,
        data: &[u8],
        _: &mut [u8],
    ) -> Option<(SocketAddr, usize)> {
        self.received += 1;
        self.since_tick += 1;
        let now = self.now();
        self.e.handle_datagram(now, data);
        self.take_output();
        None
    }

    fn poll_transmit(&mut self, out: &mut [u8]) -> Option<(SocketAddr, usize)> {
        loop {
            let d = self.out.pop_front()?;
            if d.len() <= out.len() {
                out[..d.len()].copy_from_slice(&d);
                self.sent += 1;
                return Some((self.opts.target, d.len()));
            }
            self.send_errors += 1;
        }
    }

    fn tick_interval(&self) -> Duration {
        Duration::from_millis(1)
    }

    fn tick(&mut self) -> bool {
        use std::sync::atomic::Ordering;
        let opts = self.opts;
        let wall = std::time::Instant::now();
        // Input first: a round that brought many datagrams means answers
        // are queued; new calls wait for the next round.
        let behind = std::mem::take(&mut self.since_tick) >= 256;
        if self.starting_ended.is_none() {
            // Start what is due. When the loop is behind (its input comes
            // first), at most 50 ms of calls are owed: the schedule moves
            // back instead of bursting, and the report says by how much.
            let cap = (opts.rate * 0.05).max(1.0);
            let mut due = ((wall - self.t0).as_secs_f64() - self.lag) * opts.rate;
            let owed = due - self.started as f64;
            if owed > cap {
                self.lag += (owed - cap) / opts.rate;
                self.skipped += (owed - cap) as u64;
                due = self.started as f64 + cap;
            }
            // And at most a quarter second of calls (256 at least) wait
            // for their answer: past that the answers are queued behind
            // new calls (ours or the system's), and retransmissions would
            // follow.
            let window = ((opts.rate * 0.25) as u64).max(256);
            while self.started < opts.calls
                && (self.started as f64) < due
                && self.e.active() < opts.max_concurrent
                && self.e.setting_up() < window
                && !behind
            {
                let now = self.now();
                self.e.start_call(now, opts.mix.pick(self.started));
                self.started += 1;
            }
            if self.started >= opts.calls
                || self.start_deadline.is_some_and(|d| wall >= d)
                || self.stop.load(Ordering::Relaxed)
            {
                self.starting_ended = Some(wall);
                self.final_deadline = Some(wall + opts.hold * 3 + Duration::from_secs(40));
            }
        }
        let now = self.now();
        self.e.handle_timeout(now);
        self.take_output();
        if wall.duration_since(self.last_tick) >= Duration::from_secs(1) {
            let c = self.e.counts();
            (self.progress)(&Progress {
                elapsed_s: (wall - self.t0).as_secs_f64(),
                counts: c,
                active: self.e.active(),
                rate: (c.started - self.last_started) as f64
                    / (wall - self.last_tick).as_secs_f64(),
            });
            self.last_started = c.started;
            self.last_tick = wall;
        }
        if wall.duration_since(self.sweep_at) >= Duration::from_secs(1) {
            self.e.expire(now);
            self.e.sweep();
            self.sweep_at = wall;
        }
        if self.starting_ended.is_some() && self.e.active() == 0 && self.out.is_empty() {
            return false;
        }
        if self.final_deadline.is_some_and(|d| wall >= d)
            || (self.stop.load(Ordering::Relaxed)
                && self
                    .starting_ended
                    .is_some_and(|s| wall >= s + Duration::from_secs(2)))
        {
            self.e.abandon("unfinished at the end of the run");
            return false;
        }
        true
    }

    fn rx_dropped(&mut self, _: u32) {}

    fn send_failed(&mut self) {
        self.send_errors += 1;
    }

    fn enobufs(&mut self) {}

    fn truncated(&mut self) {}
}

/// One thread's run (see [`run`]).
#[expect(
    clippy::disallowed_types,
    reason = "a blocking socket loop with no runtime reads the wall clock itself"
)]
fn run_one(
    opts: &Options,
    stop: &std::sync::atomic::AtomicBool,
    progress: impl FnMut(&Progress),
) -> std::io::Result<(Report, Vec<u32>)> {
    // Large socket buffers (the kernel caps them at net.core.rmem_max /
    // wmem_max): a burst of answers must not be dropped while the loop
    // is busy, or the generator measures its own losses.
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(opts.listen),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    let _ = sock.set_recv_buffer_size(8 << 20);
    let _ = sock.set_send_buffer_size(8 << 20);
    sock.bind(&opts.listen.into())?;
    let local = sock
        .local_addr()?
        .as_socket()
        .ok_or_else(|| std::io::Error::other("not an IP socket"))?;
    let timers = TimerConfig {
        t1: opts.t1,
        ..TimerConfig::default()
    };
    let e = Engine::new(
        EngineConfig {
            local,
            target: opts.target,
            hold: opts.hold,
            timers,
            callee: opts.callee.clone(),
        },
        // Seeded by the OS once: no getrandom system call per id.
        <rand_chacha::ChaCha12Rng as rand_core::SeedableRng>::try_from_os_rng()?,
    );
    // `Auto` is epoll here: measured side by side (docs/benchmarks.md),
    // both loops cost the same CPU per call below saturation, and past it
    // epoll's input-first loop (timers and new calls only once the socket
    // is drained) plateaus where io_uring's bounded send slots let the
    // generator's own queue grow until retransmissions take over.
    let mode = match opts.io {
        IoMode::Auto => IoMode::Epoll,
        m => m,
    };
    let t0 = std::time::Instant::now();
    let mut sh = Shell {
        opts,
        stop,
        progress,
        e,
        out: VecDeque::new(),
        t0,
        lag: 0.0,
        started: 0,
        skipped: 0,
        sent: 0,
        received: 0,
        send_errors: 0,
        since_tick: 0,
        last_tick: t0,
        last_started: 0,
        sweep_at: t0,
        start_deadline: opts.duration.map(|d| t0 + d),
        starting_ended: None,
        final_deadline: None,
    };
    handover_io::run(&sock, mode, &mut sh)?;
    let elapsed = t0.elapsed();
    let start_period = sh.starting_ended.map_or(elapsed, |s| s - t0);
    let e = &sh.e;
    let c = e.counts();
    let lat = e.setup_latencies().to_vec();
    let mut sorted = lat.clone();
    Ok((
        Report {
            offered_rate: opts.rate,
            achieved_rate: c.started as f64 / start_period.as_secs_f64().max(1e-9),
            elapsed_s: elapsed.as_secs_f64(),
            counts: c,
            setup_latency: percentiles(&mut sorted),
            failures: e.failures().clone(),
            datagrams_sent: sh.sent.saturating_sub(sh.send_errors),
            datagrams_received: sh.received,
            by_scenario: e
                .by_scenario()
                .iter()
                .map(|(k, v)| (k.name().to_string(), *v))
                .collect(),
            send_errors: sh.send_errors,
            io_mode: mode.as_str().to_string(),
            starts_skipped: sh.skipped,
        },
        lat,
    ))
}

/// Runs a load: binds `listen` (and the next ports, one per thread),
/// starts calls at the rate until the count or the duration is reached,
/// waits for every call to end (at most three hold times + 128*T1 more),
/// and reports. `progress` is called about once a second with the sum
/// over threads; `stop` ends the run early (calls still up count failed).
pub fn run(
    opts: &Options,
    stop: &std::sync::atomic::AtomicBool,
    mut progress: impl FnMut(&Progress),
) -> std::io::Result<Report> {
    let n = opts.threads.max(1);
    if n == 1 {
        return run_one(opts, stop, progress).map(|r| r.0);
    }
    let shares: Vec<Options> = (0..n)
        .map(|i| {
            let mut o = opts.clone();
            o.threads = 1;
            o.listen.set_port(opts.listen.port().wrapping_add(i as u16));
            if opts.target == opts.listen {
                o.target = o.listen; // calling itself
            }
            o.rate = opts.rate / n as f64;
            o.calls = opts.calls / n as u64 + u64::from((i as u64) < opts.calls % n as u64);
            o.max_concurrent = (opts.max_concurrent / n as u64).max(1);
            o
        })
        .collect();
    // Each thread sends its progress here; thread 0's reports pace the
    // summed line.
    let (tx, rx) = std::sync::mpsc::channel::<(usize, Progress)>();
    let mut latest = vec![None::<Progress>; n];
    let results = std::thread::scope(|sc| {
        let handles: Vec<_> = shares
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let tx = tx.clone();
                sc.spawn(move || {
                    run_one(o, stop, |p| {
                        let _ = tx.send((i, *p));
                    })
                })
            })
            .collect();
        while handles.iter().any(|h| !h.is_finished()) {
            let Ok((i, p)) = rx.recv_timeout(Duration::from_millis(100)) else {
                continue;
            };
            latest[i] = Some(p);
            if i == 0 {
                let l = &latest;
                let mut sum = p;
                for p in l.iter().skip(1).flatten() {
                    sum.counts.add(&p.counts);
                    sum.active += p.active;
                    sum.rate += p.rate;
                }
                progress(&sum);
            }
        }
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("a load thread panicked")))
            })
            .collect::<Vec<_>>()
    });
    let mut total: Option<Report> = None;
    let mut lat = Vec::new();
    for r in results {
        let (r, l) = r?;
        lat.extend(l);
        total = Some(match total {
            None => r,
            Some(mut t) => {
                t.achieved_rate += r.achieved_rate;
                t.elapsed_s = t.elapsed_s.max(r.elapsed_s);
                t.counts.add(&r.counts);
                t.datagrams_sent += r.datagrams_sent;
                t.datagrams_received += r.datagrams_received;
                t.send_errors += r.send_errors;
                t.starts_skipped += r.starts_skipped;
                for (k, v) in r.failures {
                    *t.failures.entry(k).or_default() += v;
                }
                for (k, (a, b)) in r.by_scenario {
                    let e = t.by_scenario.entry(k).or_default();
                    e.0 += a;
                    e.1 += b;
                }
                t
            }
        });
    }
    let mut t = total.ok_or_else(|| std::io::Error::other("no load thread ran"))?;
    t.offered_rate = opts.rate;
    t.setup_latency = percentiles(&mut lat);
    Ok(t)
}
