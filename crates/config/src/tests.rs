use super::*;

fn parse(s: &str) -> Result<Config, String> {
    Config::parse(Path::new("t.toml"), s).map_err(|e| e.to_string())
}

#[test]
fn empty_file_gives_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c.sip.max_message_bytes, 65_535);
    assert_eq!(c.cluster.hash_key, "default");
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let e = parse("[sip]\nmax_message_bytes = 4000\nmax_uri_byte = 100\n").unwrap_err();
    assert!(e.starts_with("t.toml:3:1: "), "{e}");
    assert!(e.contains("unknown field `max_uri_byte`"), "{e}");
    assert!(e.contains("max_uri_bytes"), "suggests the right key: {e}");
}

#[test]
fn out_of_range_value_is_named_with_key_and_line() {
    let e = parse("\n[sip]\n\nmax_message_bytes = 70000\n").unwrap_err();
    assert!(
        e.starts_with("t.toml:4:21: key `sip.max_message_bytes`: 70000 is out of range"),
        "{e}"
    );
    let e = parse("[sip]\nmax_message_bytes = 1000\nmax_uri_bytes = 2000\n").unwrap_err();
    assert!(e.contains("t.toml:3:17: key `sip.max_uri_bytes`"), "{e}");
}

#[test]
fn an_edges_internal_address_takes_a_bare_ip_on_the_listen_port() {
    let c =
        parse("[edge]\nlisten = \"0.0.0.0:5070\"\ninternal_advertise = \"10.1.2.3\"\n").unwrap();
    assert_eq!(c.edge.internal_advertise.as_deref(), Some("10.1.2.3:5070"));
    let c = parse("[edge]\ninternal_advertise = \"fd00::1\"\n").unwrap();
    assert_eq!(c.edge.internal_advertise.as_deref(), Some("[fd00::1]:5060"));
    let c = parse("[edge]\ninternal_advertise = \"10.1.2.3:6000\"\n").unwrap();
    assert_eq!(c.edge.internal_advertise.as_deref(), Some("10.1.2.3:6000"));
    let e = parse("[edge]\n\ninternal_advertise = \"0.0.0.0\"\n").unwrap_err();
    assert!(e.starts_with("t.toml:3:"), "{e}");
    assert!(e.contains("edge.internal_advertise"), "{e}");
    let e = parse("[edge]\ninternal_advertise = \"edge-0\"\n").unwrap_err();
    assert!(e.contains("host names are not resolved"), "{e}");
}

#[test]
fn wrong_type_and_syntax_errors_have_lines() {
    let e = parse("[sip]\nmax_message_bytes = \"big\"\n").unwrap_err();
    assert!(e.starts_with("t.toml:2:"), "{e}");
    let e = parse("[sip\n").unwrap_err();
    assert!(e.starts_with("t.toml:1:"), "{e}");
}

#[test]
fn hash_key() {
    let c = parse("[cluster]\nhash_key = \"000102030405060708090a0b0c0d0e0f\"\n").unwrap();
    assert_eq!(
        c.cluster.hash_key_value,
        Some((0x0001020304050607, 0x08090a0b0c0d0e0f))
    );
    assert!(!c.to_toml().contains("0001"), "the secret is never printed");
    let e = parse("[cluster]\nhash_key = \"xyz\"\n").unwrap_err();
    assert!(
        e.contains("t.toml:2:12: key `cluster.hash_key`: must be exactly 32 hex digits"),
        "{e}"
    );
}

#[test]
fn every_worker_and_edge_flag_has_a_key() {
    let c = parse(
        "[edge]\ncluster = [\"handover-worker-0.handover-worker:7001\", \"127.0.0.1:7002\"]\ndrain_s = 9\n\
         [worker]\ntrusted = [\"10.0.0.0/8\", \"192.0.2.7\"]\n\
         identity_headers = [\"Diversion\"]\nassert_identity = true\n\
         [worker.replication]\nid = 2\npeers = [\"1=127.0.0.1:7001,127.0.0.1:5081\", \"2=127.0.0.1:7002,127.0.0.1:5082\"]\n\
         grpc_listen = \"0.0.0.0:7002\"\ncommit_window_ms = 0\ndata = \"/var/lib/handover\"\n",
    )
    .unwrap();
    assert_eq!(c.edge.cluster.len(), 2);
    assert_eq!(c.edge.drain_s, 9);
    assert_eq!(c.edge.new_dialogs_per_source, 0, "off unless set");
    assert_eq!(c.worker.trusted, ["10.0.0.0/8", "192.0.2.7"]);
    assert_eq!(c.worker.identity_headers, ["Diversion"]);
    assert!(c.worker.assert_identity);
    let r = &c.worker.replication;
    assert_eq!((r.id, r.peers.len(), r.commit_window_ms), (Some(2), 2, 0));
    assert_eq!(r.grpc_listen.as_deref(), Some("0.0.0.0:7002"));
    assert_eq!(r.data, "/var/lib/handover");
    // Defaults, written once here.
    let d = parse("").unwrap();
    assert_eq!(d.worker.replication.commit_window_ms, 40);
    assert_eq!(d.worker.replication.data, "handover-data");
    assert_eq!(d.edge.drain_s, 5);
    assert!(
        d.to_toml().contains("[worker.replication]"),
        "{}",
        d.to_toml()
    );
}

#[test]
fn stream_keys_and_their_rules() {
    let c = parse(
        "[edge]\nlisten_tcp = \"0.0.0.0:5060\"\nlisten_tls = \"0.0.0.0:5061\"\n\
         tls_cert = \"/tls/tls.crt\"\ntls_key = \"/tls/tls.key\"\ntls_client_ca = \"/tls/ca.crt\"\ntls_upstream_ca = \"/trunks/ca.crt\"\n\
         max_connections = 1000\nmax_connections_per_source = 8\nstream_idle_s = 120\n\
         stream_message_timeout_ms = 5000\nproxy_protocol_from = [\"10.0.0.0/8\"]\n",
    )
    .unwrap();
    let e = &c.edge;
    assert_eq!(
        (e.listen_tcp.as_deref(), e.listen_tls.as_deref()),
        (Some("0.0.0.0:5060"), Some("0.0.0.0:5061"))
    );
    assert_eq!((e.max_connections, e.max_connections_per_source), (1000, 8));
    assert_eq!((e.stream_idle_s, e.stream_message_timeout_ms), (120, 5000));
    assert_eq!(e.proxy_protocol_from, ["10.0.0.0/8"]);
    assert_eq!(e.tls_upstream_ca.as_deref(), Some("/trunks/ca.crt"));
    let d = parse("").unwrap();
    assert_eq!(d.edge.listen_tcp, None, "no stream listener unless asked");
    assert_eq!(
        (d.edge.max_connections_per_source, d.edge.stream_idle_s),
        (64, 300)
    );
    let e = parse("[edge]\nlisten_tls = \"127.0.0.1:5061\"\n").unwrap_err();
    assert!(e.contains("needs tls_cert and tls_key"), "{e}");
    let e = parse("[edge]\nstream_message_timeout_ms = 5\n").unwrap_err();
    assert!(e.contains("out of range"), "{e}");
    let e = parse("[edge]\nproxy_protocol_from = [\"10.0.0.0/33\"]\n").unwrap_err();
    assert!(e.contains("prefix length"), "{e}");
}

#[test]
fn trust_keys_and_their_rules() {
    let c = parse(
        "[edge]\ncluster_tls = \"/etc/handover-cluster\"\ndeny_destinations = []\n\
         allow_destinations = [\"10.20.0.0/24\"]\n\
         [worker.replication]\ntls_dir = \"/etc/c/member-{id}\"\ninsecure = true\nmin_free_mb = 128\n",
    )
    .unwrap();
    assert_eq!(c.edge.cluster_tls.as_deref(), Some("/etc/handover-cluster"));
    assert_eq!(c.edge.deny_destinations.as_deref(), Some(&[][..]));
    assert_eq!(c.edge.allow_destinations, ["10.20.0.0/24"]);
    let r = &c.worker.replication;
    assert_eq!(
        (r.tls_dir.as_deref(), r.insecure, r.min_free_mb),
        (Some("/etc/c/member-{id}"), true, 128)
    );
    let d = parse("").unwrap();
    assert_eq!(
        d.edge.deny_destinations, None,
        "the private ranges by default"
    );
    assert_eq!(d.worker.replication.min_free_mb, 64);
    let e = parse("[edge]\ndeny_destinations = [\"10.0.0.0/8\", \"x\"]\n").unwrap_err();
    assert!(e.contains("edge.deny_destinations"), "{e}");
}

#[test]
fn registrar_keys_and_their_rules() {
    let c = parse(
        "[worker.registrar]\nmin_expires = 30\nmax_contacts = 3\ndomains = [\"example.com\"]\n\
         users = \"/etc/handover/users\"\nrealm = \"example.com\"\nalgorithms = [\"SHA-256\"]\n\
         upstream = [\"pbx.example.com=192.0.2.10:5060,192.0.2.11:5060\"]\n",
    )
    .unwrap();
    let r = &c.worker.registrar;
    assert_eq!(
        (r.min_expires, r.max_contacts, r.max_expires),
        (30, 3, 3600)
    );
    assert_eq!(
        (r.users.as_deref(), r.realm.as_str()),
        (Some("/etc/handover/users"), "example.com")
    );
    assert_eq!(
        (r.algorithms.as_slice(), r.upstream.len()),
        (&["SHA-256".to_string()][..], 1)
    );
    let d = parse("").unwrap().worker.registrar;
    assert_eq!(d.algorithms, ["MD5", "SHA-256"], "MD5 first by default");
    assert_eq!((d.nonce_ttl_s, d.max_failures, d.ban_s), (300, 10, 60));
    let e = parse("[worker.registrar]\nalgorithms = [\"SHA-1\"]\n").unwrap_err();
    assert!(e.contains("key `worker.registrar.algorithms`"), "{e}");
    let e = parse("[worker.registrar]\nupstream = [\"pbx=nowhere\"]\n").unwrap_err();
    assert!(e.contains("key `worker.registrar.upstream`"), "{e}");
}

#[test]
fn replication_keys_name_the_rule_broken() {
    let e = parse("[worker.replication]\npeers = [\"1=localhost:7001\"]\n").unwrap_err();
    assert!(e.contains("key `worker.replication.peers`"), "{e}");
    assert!(e.contains("expected ID=GRPC_ADDR,SIP_ADDR"), "{e}");
    let e = parse("[worker.replication]\ncommit_window_ms = 5000\n").unwrap_err();
    assert!(
        e.contains("t.toml:2:20: key `worker.replication.commit_window_ms`: 5000 is out of range"),
        "{e}"
    );
    let e = parse("[worker.replication]\nid = 1\nid_from_hostname = true\n").unwrap_err();
    assert!(e.contains("set id or id_from_hostname, not both"), "{e}");
    let e = parse("[worker]\ntrusted = [\"10.0.0.0/33\"]\n").unwrap_err();
    assert!(e.contains("key `worker.trusted`"), "{e}");
    let e = parse("[worker]\nidentity_headers = [\"Bad Header\"]\n").unwrap_err();
    assert!(e.contains("key `worker.identity_headers`"), "{e}");
    let e = parse("[edge]\ncluster = [\"not an address\"]\n").unwrap_err();
    assert!(e.contains("key `edge.cluster`"), "{e}");
}

#[test]
fn edge_section() {
    let c = parse("[edge]\nlisten = \"127.0.0.1:5080\"\nbackends = [\"127.0.0.1:5070\"]\nio = \"epoll\"\n[edge.health]\ninterval_ms = 200\ntimeout_ms = 100\n").unwrap();
    assert_eq!(c.edge.listen, "127.0.0.1:5080");
    assert_eq!(c.edge.backends, vec!["127.0.0.1:5070".to_string()]);
    assert_eq!(c.edge.health.interval_ms, 200);
    let e = parse("[edge]\nbackends = [\"pbx.example:5060\"]\n").unwrap_err();
    assert!(
        e.contains("t.toml:2:12: key `edge.backends`: `pbx.example:5060` is not an IP:PORT"),
        "{e}"
    );
    let e = parse("[edge]\nio = \"kqueue\"\n").unwrap_err();
    assert!(
        e.contains("key `edge.io`: `kqueue` is not one of auto, uring, epoll"),
        "{e}"
    );
    let e = parse("[edge.health]\ninterval_ms = 100\ntimeout_ms = 500\n").unwrap_err();
    assert!(
        e.contains("t.toml:3:14: key `edge.health.timeout_ms`"),
        "{e}"
    );
    let e = parse("[edge]\nlisten_on = \"x\"\n").unwrap_err();
    assert!(e.contains("t.toml:2:1: unknown field `listen_on`"), "{e}");
}

#[test]
fn worker_edge_may_be_a_name() {
    let c = parse("[worker]\nedge = \"handover-edge-internal:5060\"\n").unwrap();
    assert_eq!(c.worker.edge, "handover-edge-internal:5060");
    let e = parse("[worker]\nedge = \"handover edge\"\n").unwrap_err();
    assert!(
        e.contains("t.toml:2:8: key `worker.edge`: `handover edge` is not an IP:PORT or HOST:PORT"),
        "{e}"
    );
}

#[test]
fn worker_section_and_routes() {
    let c = parse("[worker]\nmax_call_age_s = 60\n[[worker.routes]]\nuser = \"b\"\ntargets = [\"127.0.0.1:5071*2\", \"127.0.0.1:5072\"]\n[[worker.routes]]\ntargets = [\"127.0.0.1:5079\"]\n").unwrap();
    assert_eq!(
        c.worker.routes,
        vec![
            "b=127.0.0.1:5071*2,127.0.0.1:5072".to_string(),
            "*=127.0.0.1:5079".to_string()
        ]
    );
    assert_eq!(c.worker.max_call_age_s, 60);
    let e = parse("[[worker.routes]]\nprefix = \"+44\"\ntargets = [\"pbx:5060\"]\n").unwrap_err();
    assert!(
        e.contains("t.toml:3:11: key `worker.routes.targets`: route 1:"),
        "{e}"
    );
    let e = parse("[[worker.routes]]\nuser = \"a\"\ndomain = \"x\"\ntargets = [\"127.0.0.1:1\"]\n")
        .unwrap_err();
    assert!(e.contains("more than one of user, prefix, domain"), "{e}");
    let e = parse("[[worker.routes]]\nusr = \"a\"\ntargets = [\"127.0.0.1:1\"]\n").unwrap_err();
    assert!(e.contains("unknown field `usr`"), "{e}");
    let c = parse("[[worker.routes]]\nuser = \"carrier\"\ntargets = [\"203.0.113.5:5061\"]\ntransport = \"tls\"\ntls_name = \"sip.carrier.example\"\n").unwrap();
    assert_eq!(
        c.worker.routes,
        ["carrier=203.0.113.5:5061;transport=tls;tls_name=sip.carrier.example"]
    );
    let c = parse(
        "[[worker.routes]]\nuser = \"pbx\"\ntargets = [\"192.0.2.7:5060\"]\ntcp_above = 1300\n",
    )
    .unwrap();
    assert_eq!(c.worker.routes, ["pbx=192.0.2.7:5060;tcp_above=1300"]);
    let e = parse("[[worker.routes]]\nuser = \"c\"\ntargets = [\"203.0.113.5:5061\"]\ntls_name = \"x.example\"\n").unwrap_err();
    assert!(e.contains("needs `;transport=tls`"), "{e}");
    let e = parse("[worker]\nt1_ms = 0\n").unwrap_err();
    assert!(e.contains("key `worker.t1_ms`"), "{e}");
    let e = parse("[worker]\ntransfer_mode = \"magic\"\n").unwrap_err();
    assert!(
        e.contains(
            "key `worker.transfer_mode`: transfer mode `magic` is not one of: passthrough, local"
        ),
        "{e}"
    );
    let e = parse("[[worker.routes]]\ntargets = [\"127.0.0.1:1\"]\ntransfer = \"lokal\"\n")
        .unwrap_err();
    assert!(e.contains("key `worker.routes.transfer`"), "{e}");
    let c = parse("[worker]\ntransfer_mode = \"local\"\n[[worker.routes]]\nuser = \"b\"\ntargets = [\"127.0.0.1:1\"]\ntransfer = \"passthrough\"\n").unwrap();
    assert_eq!(c.worker.transfer_mode, handover_call::TransferMode::Local);
    assert_eq!(c.worker.routes, ["b=127.0.0.1:1;transfer=passthrough"]);
    let e = parse("[worker]\nring_timeout_s = 0\n").unwrap_err();
    assert!(
        e.contains("t.toml:2:18: key `worker.ring_timeout_s`: 0 is out of range"),
        "{e}"
    );
    let c = parse("[worker]\n").unwrap();
    assert_eq!(c.worker.bundle_bytes, 8_192, "bundles on by default");
    assert_eq!(
        parse("[worker]\nbundle_bytes = 0\n")
            .unwrap()
            .worker
            .bundle_bytes,
        0
    );
    let e = parse("[worker]\nbundle_bytes = 100\n").unwrap_err();
    assert!(
        e.contains("key `worker.bundle_bytes`: 100 is out of range"),
        "{e}"
    );
}

#[test]
fn hash_key_bad() {
    let e = parse("[cluster]\nhash_key = \"xyz\"\n").unwrap_err();
    assert!(
        e.contains("t.toml:2:12: key `cluster.hash_key`: must be exactly 32 hex digits"),
        "{e}"
    );
}

#[test]
fn the_raft_log_bound_is_a_key_with_a_default_and_a_range() {
    assert_eq!(parse("").unwrap().worker.replication.raft_log_mb, 32);
    let c = parse("[worker.replication]\nraft_log_mb = 4\n").unwrap();
    assert_eq!(c.worker.replication.raft_log_mb, 4);
    let e = parse("[worker.replication]\nraft_log_mb = 0\n").unwrap_err();
    assert!(
        e.contains("key `worker.replication.raft_log_mb`: 0 is out of range"),
        "{e}"
    );
}
