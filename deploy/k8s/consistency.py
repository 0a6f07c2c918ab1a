"""Checks that a rendered handover deployment hangs together, which no
schema or policy scan can: usage `consistency.py DIR RENDERED.yaml`.

- the workers carry no peer list (the StatefulSet scales): pods take
  their id from their host name (--id-from-hostname), name their peers by
  --peer-template (pod handover-worker-{ordinal} under the headless
  Service, on the container's grpc and sip ports), the first --founders
  (no more than the replicas) start the cluster, every pod has --join
  through the headless Service and --remove-down-after-s (a scaled-down
  pod leaves Raft), and binds gRPC on all addresses;
- the edges' --cluster is the headless Service's name on the grpc port;
- a HorizontalPodAutoscaler of the StatefulSet keeps minReplicas at least
  --founders and maxReplicas within the member certificates;
- the headless Service publishes not-ready addresses (Raft peers find each
  other before they are ready) and has the ports; the config's worker.edge
  names a Service with that UDP port;
- the cluster port runs mutual TLS: a cert-manager Certificate per worker
  id (1..M, M at least the replicas) naming member-ID.handover and
  worker.handover, its Secret mounted as
  member-ID/ and chosen by --cluster-tls=.../member-{id}; the edges' own
  (edge.handover) mounted where their --cluster-tls points.
Prints one line; exits non-zero naming the first problem.
"""
import re
import sys
import tomllib

import yaml


def fail(msg):
    sys.exit(f"consistency: {sys.argv[1]}: {msg}")


def main():
    directory, rendered = sys.argv[1], sys.argv[2]
    docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    sts = by.get(("StatefulSet", "handover-worker")) or fail("no StatefulSet handover-worker")
    dep = by.get(("Deployment", "handover-edge")) or fail("no Deployment handover-edge")
    svc_name = sts["spec"]["serviceName"]
    svc = by.get(("Service", svc_name)) or fail(f"no Service {svc_name} (the StatefulSet's serviceName)")
    if svc["spec"].get("clusterIP") != "None":
        fail(f"Service {svc_name} must be headless (clusterIP: None)")
    if not svc["spec"].get("publishNotReadyAddresses"):
        fail(f"Service {svc_name} must publish not-ready addresses (Raft peers)")
    n = sts["spec"]["replicas"]
    w = sts["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in w["ports"]}
    args = w["args"]
    if "--id-from-hostname" not in args:
        fail("workers must take their id from the pod name (--id-from-hostname)")
    def flag(name, a=args):
        got = [x.split("=", 1)[1] for x in a if x.startswith(f"--{name}=")]
        return got[0] if len(got) == 1 else None
    if any(a.startswith("--peer=") for a in args):
        fail("workers must not list --peer (it would have to change with replicas): use --peer-template")
    founders = int(flag("founders") or 0)
    if not 1 <= founders <= n:
        fail(f"--founders={flag('founders')} must be 1 to the replicas ({n})")
    host = f"{sts['metadata']['name']}-{{ordinal}}.{svc_name}"
    want = f"{host}:{ports.get('grpc')},{host}:{ports.get('sip')}"
    if flag("peer-template") != want:
        fail(f"--peer-template must be {want} (the pods under the headless Service, the container's ports)")
    join = f"{svc_name}:{ports.get('grpc')}"
    if flag("join") != join:
        fail(f"every worker needs --join={join} (the headless Service)")
    if int(flag("remove-down-after-s") or 0) <= 0:
        fail("workers need --remove-down-after-s (a scaled-down pod must leave Raft)")
    if f"--grpc-listen=0.0.0.0:{ports['grpc']}" not in args:
        fail(f"workers must bind gRPC on 0.0.0.0:{ports['grpc']} (--grpc-listen)")
    svc_ports = {p["name"]: (p["port"], p.get("protocol", "TCP")) for p in svc["spec"]["ports"]}
    if svc_ports.get("grpc") != (ports["grpc"], "TCP") or svc_ports.get("sip") != (ports["sip"], "UDP"):
        fail(f"Service {svc_name} must carry grpc/TCP {ports['grpc']} and sip/UDP {ports['sip']}")
    e = dep["spec"]["template"]["spec"]["containers"][0]
    clusters = [a.split("=", 1)[1] for a in e["args"] if a.startswith("--cluster=")]
    if clusters != [join]:
        fail(f"the edges' --cluster {clusters} must be the headless Service {join}")
    tls_arg = [a.split("=", 1)[1] for a in args if a.startswith("--cluster-tls=")]
    if len(tls_arg) != 1 or not tls_arg[0].endswith("/member-{id}"):
        fail("workers need --cluster-tls=DIR/member-{id} (mutual TLS on the cluster port)")
    tls_root = tls_arg[0].rsplit("/", 1)[0]
    mounts = {m["mountPath"]: m["name"] for m in w.get("volumeMounts", [])}
    vols = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    vol = vols.get(mounts.get(tls_root, ""), {})
    paths = {}
    for src in vol.get("projected", {}).get("sources", []):
        sec = src.get("secret", {})
        for it in sec.get("items", []):
            paths[it["path"]] = sec["name"]
    members = 0
    while ("Certificate", f"handover-member-{members + 1}") in by:
        members += 1
    if members < n:
        fail(f"{members} member Certificates for {n} replicas")
    for h in [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]:
        ref = h["spec"]["scaleTargetRef"]
        if (ref["kind"], ref["name"]) != ("StatefulSet", sts["metadata"]["name"]):
            continue
        lo, hi = h["spec"].get("minReplicas", 1), h["spec"]["maxReplicas"]
        if lo < founders or hi > members:
            fail(f"HorizontalPodAutoscaler {h['metadata']['name']}: replicas {lo}..{hi} must stay within --founders {founders} and the {members} member certificates")
    for i in range(1, members + 1):
        cert = by.get(("Certificate", f"handover-member-{i}")) or fail(f"no Certificate handover-member-{i} for worker {i}")
        names = cert["spec"].get("dnsNames", [])
        if f"member-{i}.handover" not in names or "worker.handover" not in names:
            fail(f"Certificate handover-member-{i} must name member-{i}.handover and worker.handover")
        for f in ("ca.crt", "tls.crt", "tls.key"):
            if paths.get(f"member-{i}/{f}") != cert["spec"]["secretName"]:
                fail(f"worker {i}'s {f} must be mounted at {tls_root}/member-{i}/{f} from Secret {cert['spec']['secretName']}")
    # Edges share the public address; each names its pod IP beside the
    # flows (connections) it holds, so workers reach the right pod.
    env = {v["name"]: v.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for v in e.get("env", [])}
    if "--internal-advertise=$(POD_IP)" not in e["args"] or env.get("POD_IP") != "status.podIP":
        fail("edges need --internal-advertise=$(POD_IP) with env POD_IP from status.podIP (several edges share one address)")
    etls = [a.split("=", 1)[1] for a in e["args"] if a.startswith("--cluster-tls=")]
    ecert = by.get(("Certificate", "handover-edge-cluster")) or fail("no Certificate handover-edge-cluster")
    if ecert["spec"].get("dnsNames") != ["edge.handover"]:
        fail("Certificate handover-edge-cluster must name edge.handover only")
    emounts = {m["mountPath"]: m["name"] for m in e.get("volumeMounts", [])}
    evols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    if len(etls) != 1 or evols.get(emounts.get(etls[0], ""), {}).get("secret", {}).get("secretName") != ecert["spec"]["secretName"]:
        fail("the edges need --cluster-tls=DIR with Secret handover-edge-cluster mounted at DIR")
    cms = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("handover-config")]
    if len(cms) != 1:
        fail("one ConfigMap handover-config expected")
    cfg = tomllib.loads(cms[0]["data"]["handover.toml"])
    edge = cfg.get("worker", {}).get("edge", "")
    host, _, port = edge.rpartition(":")
    target = by.get(("Service", host)) or fail(f"worker.edge {edge}: no Service {host}")
    if not any(p["port"] == int(port) and p.get("protocol") == "UDP" for p in target["spec"]["ports"]):
        fail(f"worker.edge {edge}: Service {host} has no UDP port {port}")
    # Every route target is a destination the edges send workers' requests to.
    import ipaddress
    ed = cfg.get("edge", {})
    private = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"]
    never = ["0.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "255.255.255.255/32", "::/128", "fe80::/10", "ff00::/8"]
    deny = [ipaddress.ip_network(c) for c in never + ed.get("deny_destinations", private)]
    allow = [ipaddress.ip_network(c) for c in ed.get("allow_destinations", [])]
    for r in cfg.get("worker", {}).get("routes", []):
        for t in r.get("targets", []):
            host = t.split("*")[0].rsplit(":", 1)[0].strip("[]")
            ip = ipaddress.ip_address(host)
            if any(ip in n for n in deny) and not any(ip in n for n in allow):
                fail(f"route target {t} is in a network the edges deny (edge.deny_destinations, default the private ranges): add it to edge.allow_destinations")
    print(f"peers: {directory}: {n} workers ({founders} founders, {members} member certificates), peer template, joins, edges' --cluster, Services and config agree")


main()
