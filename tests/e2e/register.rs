//! Phones that register (issue 17): SIPp phones register with digest
//! authentication at `handover up --workers 3`, are called by their
//! address-of-record, and stay reachable when the worker owning their AOR
//! is killed.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

/// `metric` summed over the workers of `worker_admin`'s cluster in `which`.
fn summed_metric(worker_admin: &str, which: &[u16], series: &str) -> f64 {
    let (host, port) = worker_admin.rsplit_once(':').unwrap();
    summed(host, port.parse().unwrap(), which, series)
}

#[test]
fn phones_register_with_digest_are_called_by_aor_and_survive_the_owners_death() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    passwd(&users, "alice", "alice-pw");
    passwd(&users, "bob", "bob-pw");
    let text = std::fs::read_to_string(&users).unwrap();
    assert!(!text.contains("alice-pw"), "no password is stored: {text}");
    let users_s = users.to_string_lossy().into_owned();
    // No route at all: a call reaches a phone only through its binding.
    let c = cluster(&[], &["--workers", "3", "--users", &users_s]);
    wait_members(&c.grpc, 3);
    wait_all_shards_served(&c.grpc, 3);
    let edge = format!("127.0.0.1:{}", c.sip);

    // Alice's phone registers (401, then credentials) and answers calls.
    let alice_port = free_udp_port().to_string();
    let ooc = scenario("uas.xml");
    let reg = scenario("register.xml");
    let (alice, alice_stat) = sipp_run(
        dir.path(),
        "alice",
        &[
            "-sf",
            reg.to_str().unwrap(),
            "-oocsf",
            ooc.to_str().unwrap(),
            "-s",
            "alice",
            "-au",
            "alice",
            "-ap",
            "alice-pw",
            "-d",
            "40000",
            "-m",
            "1",
            "-i",
            "127.0.0.1",
            "-p",
            &alice_port,
            &edge,
        ],
    );
    let registered = wait_for(Duration::from_secs(10), || {
        summed_metric(
            &c.worker_admin,
            &[0, 1, 2],
            "handover_bindings_total{event=\"created\"}",
        ) == 1.0
    });
    assert!(
        registered,
        "alice's binding was created by one worker (its AOR's owner)"
    );
    // Every worker holds the replicated binding.
    let everywhere = wait_for(Duration::from_secs(5), || {
        summed_metric(&c.worker_admin, &[0, 1, 2], "handover_registrations_active") == 3.0
    });
    assert!(everywhere, "every worker reads alice's binding");
    // `handover status` shows it, on the worker that owns the AOR's shard.
    let o = admin_cmd("status", &c.grpc, &["--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["aors"].as_u64(), v["bindings"].as_u64()),
        (Some(1), Some(1)),
        "{v}"
    );
    let per = v["bindings_per_worker"].as_object().unwrap();
    assert_eq!(
        per.values()
            .filter_map(serde_json::Value::as_u64)
            .sum::<u64>(),
        1,
        "{v}"
    );

    // Bob calls alice by her AOR: 407, then credentials, then her phone.
    let call_alice = |name: &str, password: &str, calls: &str| {
        sipp_run(
            dir.path(),
            name,
            &[
                "-sf",
                scenario("uac_auth.xml").to_str().unwrap(),
                "-s",
                "alice",
                "-au",
                "bob",
                "-ap",
                password,
                "-m",
                calls,
                "-r",
                "10",
                "-d",
                "200",
                "-i",
                "127.0.0.1",
                "-p",
                &free_udp_port().to_string(),
                &edge,
            ],
        )
    };
    let (p, stat) = call_alice("bob", "bob-pw", "5");
    let r = finish_uac_unchecked(p, &stat);
    assert_eq!((r.exit, r.successful, r.failed), (Some(0), 5, 0), "{r:?}");
    // kill -9 the worker that owns alice's AOR: the acknowledged
    // registration still routes calls.
    let (host, port) = c.worker_admin.rsplit_once(':').unwrap();
    let port: u16 = port.parse().unwrap();
    let owner = (0..3u16)
        .find(|i| {
            let text = http_get(&format!("http://{host}:{}/metrics", port + i)).1;
            metric(&text, "handover_bindings_total{event=\"created\"}") == 1.0
        })
        .expect("one worker created the binding");
    assert!(
        sigkill_worker(c.worker + owner),
        "worker {} killed",
        owner + 1
    );
    let (ghost, gport) = c.grpc.rsplit_once(':').unwrap();
    let survivor = format!(
        "{ghost}:{}",
        gport.parse::<u16>().unwrap() + (owner + 1) % 3
    );
    wait_members(&survivor, 2);
    let live: Vec<u16> = (0..3).filter(|&i| i != owner).collect();
    let (p, stat) = call_alice("bob-after", "bob-pw", "3");
    let r = finish_uac_unchecked(p, &stat);
    assert_eq!(
        (r.exit, r.successful, r.failed),
        (Some(0), 3, 0),
        "{r:?} {}",
        std::fs::read_to_string(dir.path().join("bob-after.err")).unwrap_or_default()
    );

    // A wrong password is challenged again, never connected.
    let (p, stat) = call_alice("mallory", "guess", "1");
    let r = finish_uac_unchecked(p, &stat);
    assert_eq!((r.successful, r.failed), (0, 1), "{r:?}");
    assert!(
        summed_metric(
            &c.worker_admin,
            &live,
            "handover_auth_failures_total{reason=\"wrong_password\"}"
        ) >= 1.0
    );
    // Too brief a registration: 423 with Min-Expires (checked by the scenario).
    let (p, stat) = sipp_run(
        dir.path(),
        "brief",
        &[
            "-sf",
            scenario("register_brief.xml").to_str().unwrap(),
            "-s",
            "alice",
            "-au",
            "alice",
            "-ap",
            "alice-pw",
            "-m",
            "1",
            "-i",
            "127.0.0.1",
            "-p",
            &free_udp_port().to_string(),
            &edge,
        ],
    );
    let r = finish_uac_unchecked(p, &stat);
    assert_eq!((r.exit, r.successful), (Some(0), 1), "{r:?}");

    // Alice unregisters (Expires: 0) at the new owner.
    let r = finish_uac_unchecked(alice, &alice_stat);
    assert_eq!((r.exit, r.successful, r.failed), (Some(0), 1, 0), "{r:?}");
    let gone = wait_for(Duration::from_secs(5), || {
        summed_metric(&c.worker_admin, &live, "handover_registrations_active") == 0.0
    });
    assert!(gone, "alice's binding is gone on the surviving workers");
}

#[test]
fn an_aor_with_two_phones_rings_both_the_one_that_answers_wins_and_star_removes_all() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    for (u, p) in [("dave", "d-pw"), ("erin", "e-pw"), ("bob", "bob-pw")] {
        passwd(&users, u, p);
    }
    let users_s = users.to_string_lossy().into_owned();
    // One worker, no replication: its registrar applies writes at once.
    let c = cluster(&[], &["--users", &users_s]);
    let edge = format!("127.0.0.1:{}", c.sip);
    // Two phones of dave's: one busy, one that answers.
    let reg = scenario("register.xml");
    let mut phones = Vec::new();
    for (name, ooc) in [("desk", "uas_busy.xml"), ("mobile", "uas.xml")] {
        let home = dir.path().join(name);
        std::fs::create_dir_all(&home).unwrap();
        let port = free_udp_port().to_string();
        phones.push((
            home.clone(),
            sipp_run(
                &home,
                name,
                &[
                    "-sf",
                    reg.to_str().unwrap(),
                    "-oocsf",
                    scenario(ooc).to_str().unwrap(),
                    "-s",
                    "dave",
                    "-au",
                    "dave",
                    "-ap",
                    "d-pw",
                    "-d",
                    "15000",
                    "-m",
                    "1",
                    "-i",
                    "127.0.0.1",
                    "-p",
                    &port,
                    &edge,
                ],
            ),
        ));
    }
    let both = wait_for(Duration::from_secs(10), || {
        summed_metric(&c.worker_admin, &[0], "handover_registrations_active") == 2.0
    });
    assert!(both, "dave has two bindings");
    let (p, stat) = sipp_run(
        dir.path(),
        "bob",
        &[
            "-sf",
            scenario("uac_auth.xml").to_str().unwrap(),
            "-s",
            "dave",
            "-au",
            "bob",
            "-ap",
            "bob-pw",
            "-m",
            "2",
            "-r",
            "5",
            "-d",
            "200",
            "-i",
            "127.0.0.1",
            "-p",
            &free_udp_port().to_string(),
            &edge,
        ],
    );
    let r = finish_uac_unchecked(p, &stat);
    assert_eq!((r.exit, r.successful, r.failed), (Some(0), 2, 0), "{r:?}");
    // Several contacts for erin, then `*` removes them all (the scenario
    // checks both 200s).
    let (p, stat) = sipp_run(
        dir.path(),
        "erin",
        &[
            "-sf",
            scenario("register_wildcard.xml").to_str().unwrap(),
            "-s",
            "erin",
            "-au",
            "erin",
            "-ap",
            "e-pw",
            "-m",
            "1",
            "-i",
            "127.0.0.1",
            "-p",
            &free_udp_port().to_string(),
            &edge,
        ],
    );
    let r = finish_uac_unchecked(p, &stat);
    assert_eq!((r.exit, r.successful, r.failed), (Some(0), 1, 0), "{r:?}");
    for (home, (p, stat)) in phones {
        let r = finish_uac_unchecked(p, &stat);
        let name = home.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(
            (r.exit, r.successful),
            (Some(0), 1),
            "{name}: {r:?} {}",
            std::fs::read_to_string(home.join(format!("{name}.err"))).unwrap_or_default()
        );
        // Both phones rang for both calls: the busy one answered 486 (or
        // was cancelled once the other answered).
        let invites = sipp_message_logs(&home).matches("INVITE sip:dave@").count();
        assert!(invites >= 2, "{}: {invites} INVITEs", home.display());
    }
}

#[test]
fn a_thousand_registered_phones_stay_reachable_when_a_worker_is_killed() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(&[], &["--workers", "3"]);
    wait_members(&c.grpc, 3);
    wait_all_shards_served(&c.grpc, 3);
    let edge = format!("127.0.0.1:{}", c.sip);
    // 1,000 phones (u1…u1000) on one SIPp, answering calls meanwhile.
    let phones = dir.path().join("phones");
    std::fs::create_dir_all(&phones).unwrap();
    let (registrar, _) = sipp_run(
        &phones,
        "phones",
        &[
            "-sf",
            scenario("register_many.xml").to_str().unwrap(),
            "-oocsf",
            scenario("uas.xml").to_str().unwrap(),
            "-r",
            "500",
            "-m",
            "1000",
            "-d",
            "60000",
            "-i",
            "127.0.0.1",
            "-p",
            &free_udp_port().to_string(),
            &edge,
        ],
    );
    let all = [0u16, 1, 2];
    let registered = wait_for(Duration::from_secs(20), || {
        summed_metric(&c.worker_admin, &all, "handover_registrations_active") == 3000.0
    });
    assert!(
        registered,
        "every worker holds the 1,000 bindings: {}",
        summed_metric(&c.worker_admin, &all, "handover_registrations_active")
    );
    // The three workers each own some of the AORs; kill one.
    let (host, port) = c.worker_admin.rsplit_once(':').unwrap();
    let port: u16 = port.parse().unwrap();
    let created: Vec<f64> = all
        .iter()
        .map(|i| {
            metric(
                &http_get(&format!("http://{host}:{}/metrics", port + i)).1,
                "handover_bindings_total{event=\"created\"}",
            )
        })
        .collect();
    assert!(
        created.iter().all(|&n| n > 100.0),
        "the AORs are spread: {created:?}"
    );
    assert!(sigkill_worker(c.worker), "worker 1 killed");
    let (ghost, gport) = c.grpc.rsplit_once(':').unwrap();
    wait_members(&format!("{ghost}:{}", gport.parse::<u16>().unwrap() + 1), 2);
    // Every one of them is called, and answers.
    let (p, stat) = sipp_run(
        dir.path(),
        "callers",
        &[
            "-sf",
            scenario("uac_many.xml").to_str().unwrap(),
            "-r",
            "200",
            "-m",
            "1000",
            "-d",
            "100",
            "-i",
            "127.0.0.1",
            "-p",
            &free_udp_port().to_string(),
            &edge,
        ],
    );
    let r = finish_uac_unchecked(p, &stat);
    assert_eq!(
        (r.exit, r.successful, r.failed),
        (Some(0), 1000, 0),
        "{r:?} {}",
        std::fs::read_to_string(dir.path().join("callers.err")).unwrap_or_default()
    );
    drop(registrar);
}

/// Kamailio as the registrar (relay mode): `registrar`, `usrloc` (in
/// memory) and `path`; REGISTERs saved with their Path, INVITEs looked up
/// and relayed along it.
fn kamailio_registrar(dir: &Path, port: u16) -> Kamailio {
    let ok = Command::new("kamailio").arg("-v").output().is_ok();
    assert!(
        ok,
        "kamailio is not installed: run scripts/install-deps.sh (Debian package kamailio)"
    );
    let cfg = dir.join("kamailio.cfg");
    std::fs::write(
        &cfg,
        format!(
            r#"#!KAMAILIO
debug=2
log_stderror=yes
fork=yes
children=1
listen=udp:127.0.0.1:{port}
disable_tcp=yes
auto_aliases=no
mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"
loadmodule "pv.so"
loadmodule "sl.so"
loadmodule "tm.so"
loadmodule "siputils.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "path.so"
modparam("usrloc", "db_mode", 0)
modparam("registrar", "use_path", 1)
modparam("registrar", "path_mode", 2)
request_route {{
    if (method == "REGISTER") {{
        if (!save("location")) {{ sl_reply_error(); }}
        exit;
    }}
    # In-dialog requests (the caller's ACK and BYE, sent here by SIPp):
    # to their Request-URI, the B2BUA's Contact at the edge.
    if (has_totag()) {{
        t_relay();
        exit;
    }}
    if (method == "INVITE") {{
        if (!lookup("location")) {{ sl_send_reply("404", "Not Found"); exit; }}
        t_relay();
        exit;
    }}
    sl_send_reply("404", "Not Here");
}}
"#
        ),
    )
    .unwrap();
    let p = Kamailio::start(dir, &cfg, &dir.join("kamailio.log"));
    std::thread::sleep(Duration::from_millis(1500));
    p
}

/// Kamailio's main process: stopped with SIGTERM, on which it stops the
/// children it forked (a SIGKILL would leave them holding the port).
pub(crate) struct Kamailio(std::process::Child);

impl Kamailio {
    /// Runs `kamailio -f cfg` in the foreground of its own process group
    /// (`-DD`), its run and temporary files in `dir`, logging to `log`.
    pub(crate) fn start(dir: &Path, cfg: &Path, log: &Path) -> Self {
        Kamailio(
            Command::new("kamailio")
                .arg("-f")
                .arg(cfg)
                .args(["-DD", "-E", "-m", "64", "-M", "8", "-w"])
                .arg(dir)
                .arg("-Y")
                .arg(dir)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(log).unwrap())
                .spawn()
                .expect("kamailio starts"),
        )
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let stopped = wait_for(Duration::from_secs(5), || {
            self.0.try_wait().ok().flatten().is_some()
        });
        if !stopped {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn relay_mode_registers_phones_at_kamailio_with_a_path_and_kamailio_calls_them_back_through_it() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let kam_port = free_udp_port();
    let _kam = kamailio_registrar(dir.path(), kam_port);
    let upstream = format!("127.0.0.1:{kam_port}");
    let c = cluster(&[], &["--workers", "3", "--registrar-upstream", &upstream]);
    wait_members(&c.grpc, 3);
    wait_all_shards_served(&c.grpc, 3);
    let edge = format!("127.0.0.1:{}", c.sip);
    // A phone (u1) registers through handover; Kamailio answers 200.
    let phone = dir.path().join("phone");
    std::fs::create_dir_all(&phone).unwrap();
    let phone_port = free_udp_port().to_string();
    let (registered, reg_stat) = sipp_run(
        &phone,
        "phone",
        &[
            "-sf",
            scenario("register_many.xml").to_str().unwrap(),
            "-oocsf",
            scenario("uas.xml").to_str().unwrap(),
            "-m",
            "1",
            "-d",
            "8000",
            "-i",
            "127.0.0.1",
            "-p",
            &phone_port,
            &edge,
        ],
    );
    let relayed = wait_for(Duration::from_secs(10), || {
        summed_metric(
            &c.worker_admin,
            &[0, 1, 2],
            "handover_registers_relayed_total",
        ) >= 1.0
    });
    assert!(relayed, "the REGISTER was relayed to Kamailio");
    std::thread::sleep(Duration::from_millis(500));
    // Nothing is stored in handover's own registrar.
    assert_eq!(
        summed_metric(&c.worker_admin, &[0, 1, 2], "handover_registrations_active"),
        0.0
    );
    // A caller at Kamailio calls u1: Kamailio's INVITE follows the Path
    // to the edge, and handover calls the phone on its flow.
    let (p, stat) = sipp_run(
        dir.path(),
        "caller",
        &[
            "-sf",
            scenario("uac_many.xml").to_str().unwrap(),
            "-m",
            "1",
            "-d",
            "200",
            "-i",
            "127.0.0.1",
            "-p",
            &free_udp_port().to_string(),
            &upstream,
        ],
    );
    let r = finish_uac_unchecked(p, &stat);
    assert_eq!(
        (r.exit, r.successful, r.failed),
        (Some(0), 1, 0),
        "{r:?} {} kamailio: {}",
        std::fs::read_to_string(dir.path().join("caller.err")).unwrap_or_default(),
        std::fs::read_to_string(dir.path().join("kamailio.log")).unwrap_or_default()
    );
    let r = finish_uac_unchecked(registered, &reg_stat);
    assert_eq!((r.exit, r.successful), (Some(0), 1), "{r:?}");
    let log = sipp_message_logs(&phone);
    assert!(
        log.contains(&format!("INVITE sip:u1@127.0.0.1:{phone_port} SIP/2.0")),
        "the phone was called at its Contact: {log}"
    );
    assert!(
        !log.contains(&format!("127.0.0.1:{kam_port}")),
        "the phone sees only the edge, never Kamailio's address"
    );
}

#[test]
fn a_phone_on_a_stale_nonce_is_challenged_again_with_stale_true_and_registers() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    passwd(&users, "frank", "f-pw");
    let users_s = users.to_string_lossy().into_owned();
    // Nonces live 2 s here (300 s by default).
    let c = cluster(&[], &["--users", &users_s, "--nonce-ttl-s", "2"]);
    let edge = format!("127.0.0.1:{}", c.sip);
    let (p, stat) = sipp_run(
        dir.path(),
        "frank",
        &[
            "-sf",
            scenario("register_stale.xml").to_str().unwrap(),
            "-s",
            "frank",
            "-au",
            "frank",
            "-ap",
            "f-pw",
            "-d",
            "3500",
            "-m",
            "1",
            "-i",
            "127.0.0.1",
            "-p",
            &free_udp_port().to_string(),
            &edge,
        ],
    );
    let r = finish_uac_unchecked(p, &stat);
    assert_eq!(
        (r.exit, r.successful, r.failed),
        (Some(0), 1, 0),
        "{r:?} {}",
        std::fs::read_to_string(dir.path().join("frank.err")).unwrap_or_default()
    );
    // A stale nonce with the right password is no failure.
    let failures = summed_metric(
        &c.worker_admin,
        &[0],
        "handover_auth_failures_total{reason=\"wrong_password\"}",
    );
    assert_eq!(failures, 0.0);
}

/// Issue 19's bound on the Raft log's memory: under a sustained load of
/// registrations (20,000 new AORs, about 2.4 MB of log entries) the log
/// each worker keeps in memory never holds more than `--raft-log-mb` (1)
/// plus one batch, because it is compacted into a snapshot of the table;
/// nothing registered is lost by the compactions.
#[test]
fn the_raft_logs_memory_stays_within_its_configured_bound_under_sustained_registrations() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(&[], &["--workers", "3", "--raft-log-mb", "1"]);
    wait_members(&c.grpc, 3);
    wait_all_shards_served(&c.grpc, 3);
    let edge = format!("127.0.0.1:{}", c.sip);
    let (mut p, stat) = sipp_run(
        dir.path(),
        "phones",
        &[
            "-sf",
            scenario("register_bench.xml").to_str().unwrap(),
            "-r",
            "2000",
            "-m",
            "20000",
            "-i",
            "127.0.0.1",
            "-p",
            &free_udp_port().to_string(),
            &edge,
        ],
    );
    let (host, port) = c.worker_admin.rsplit_once(':').unwrap();
    let port: u16 = port.parse().unwrap();
    let gauge = |i: u16, series: &str| {
        metric(
            &http_get(&format!("http://{host}:{}/metrics", port + i)).1,
            series,
        )
    };
    // Sampled while the load runs (the gauges follow the status tick).
    let mut most = 0.0f64;
    let mut samples = 0;
    while p.0.try_wait().unwrap().is_none() && samples < 600 {
        for i in 0..3 {
            most = most.max(gauge(i, "handover_raft_log_bytes"));
        }
        samples += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = finish_uac_unchecked(p, &stat);
    assert_eq!(
        (r.exit, r.successful, r.failed),
        (Some(0), 20000, 0),
        "{r:?}"
    );
    let all = [0u16, 1, 2];
    let registered = wait_for(Duration::from_secs(20), || {
        summed_metric(&c.worker_admin, &all, "handover_registrations_active") == 60000.0
    });
    assert!(
        registered,
        "every worker holds the 20,000 bindings: {}",
        summed_metric(&c.worker_admin, &all, "handover_registrations_active")
    );
    for i in all {
        most = most.max(gauge(i, "handover_raft_log_bytes"));
        let snap = gauge(i, "handover_raft_snapshot_bytes");
        // 20,000 bindings encode to about 1.9 MB: the log was compacted
        // into a snapshot holding them.
        assert!(snap > 1_000_000.0, "worker {i}: snapshot of {snap} bytes");
        eprintln!("worker {i}: snapshot {snap} bytes");
    }
    eprintln!("in-memory log at most {most} bytes over {samples} samples");
    assert!(samples > 10, "the load was sampled ({samples} times)");
    // One batch over the bound at most (512 commands of ~130 bytes).
    assert!(
        most <= f64::from((1u32 << 20) + (256 << 10)),
        "the in-memory log held {most} bytes"
    );
    assert!(
        most > 100_000.0,
        "the log held entries between compactions: {most}"
    );
}
