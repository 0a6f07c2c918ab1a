"""Checks that a rendered handover deployment hangs together, which no
schema or policy scan can: usage `consistency.py DIR RENDERED.yaml`.

- the worker StatefulSet's --peer list has one entry per replica, ids 1..N,
  each naming pod handover-worker-(id-1) under the StatefulSet's headless
  Service, on the container's grpc and sip ports;
- pods take their id from their host name (--id-from-hostname) and bind
  gRPC where the peers say;
- the edges' --cluster list names the same gRPC addresses;
- the headless Service publishes not-ready addresses (Raft peers find each
  other before they are ready) and has the ports; the config's worker.edge
  names a Service with that UDP port.
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
    peers = [a.split("=", 1)[1] for a in args if a.startswith("--peer=")]
    if len(peers) != n:
        fail(f"{len(peers)} --peer entries for {n} replicas")
    grpc_addrs = []
    for want_id, p in enumerate(sorted(peers, key=lambda p: int(p.split("=")[0])), start=1):
        m = re.fullmatch(r"(\d+)=([^:,]+):(\d+),([^:,]+):(\d+)", p)
        if not m:
            fail(f"--peer {p} is not ID=HOST:PORT,HOST:PORT")
        pid, ghost, gport, shost, sport = m.groups()
        host = f"{sts['metadata']['name']}-{want_id - 1}.{svc_name}"
        if int(pid) != want_id or ghost != host or shost != host:
            fail(f"--peer {p}: peer {want_id} must be pod {host}")
        if int(gport) != ports.get("grpc") or int(sport) != ports.get("sip"):
            fail(f"--peer {p}: ports must be the container's grpc {ports.get('grpc')} and sip {ports.get('sip')}")
        grpc_addrs.append(f"{ghost}:{gport}")
    if f"--grpc-listen=0.0.0.0:{ports['grpc']}" not in args:
        fail(f"workers must bind gRPC on 0.0.0.0:{ports['grpc']} (--grpc-listen)")
    svc_ports = {p["name"]: (p["port"], p.get("protocol", "TCP")) for p in svc["spec"]["ports"]}
    if svc_ports.get("grpc") != (ports["grpc"], "TCP") or svc_ports.get("sip") != (ports["sip"], "UDP"):
        fail(f"Service {svc_name} must carry grpc/TCP {ports['grpc']} and sip/UDP {ports['sip']}")
    e = dep["spec"]["template"]["spec"]["containers"][0]
    clusters = [a.split("=", 1)[1] for a in e["args"] if a.startswith("--cluster=")]
    if sorted(clusters) != sorted(grpc_addrs):
        fail(f"the edges' --cluster {clusters} must be the workers' gRPC addresses {grpc_addrs}")
    cms = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("handover-config")]
    if len(cms) != 1:
        fail("one ConfigMap handover-config expected")
    cfg = tomllib.loads(cms[0]["data"]["handover.toml"])
    edge = cfg.get("worker", {}).get("edge", "")
    host, _, port = edge.rpartition(":")
    target = by.get(("Service", host)) or fail(f"worker.edge {edge}: no Service {host}")
    if not any(p["port"] == int(port) and p.get("protocol") == "UDP" for p in target["spec"]["ports"]):
        fail(f"worker.edge {edge}: Service {host} has no UDP port {port}")
    print(f"peers: {directory}: {n} workers, peers, edges' --cluster, Services and config agree")


main()
