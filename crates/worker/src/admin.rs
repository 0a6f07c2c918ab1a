//! The admin port every handover process serves: `/metrics` (Prometheus
//! text), `/healthz` (the process runs) and `/readyz` (it can take traffic).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

/// Installs the Prometheus recorder for this process and sets
/// `handover_build_info`. Only the binary installs a recorder.
pub fn install_recorder(role: &'static str) -> anyhow::Result<PrometheusHandle> {
    // Call-setup latency: a local answer takes milliseconds, a PSTN
    // post-dial delay seconds, and an answer waits on a person (up to
    // tens of seconds). Without buckets the exporter would render
    // summaries, which cannot be aggregated across workers.
    let setup_buckets = [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Prefix("handover_invite_".into()), &setup_buckets)
        .map_err(|e| anyhow::anyhow!("metric buckets: {e}"))?
        .set_buckets_for_metric(
            Matcher::Full("handover_transfer_seconds".into()),
            &setup_buckets,
        )
        .map_err(|e| anyhow::anyhow!("metric buckets: {e}"))?
        .set_buckets_for_metric(
            Matcher::Full("handover_raft_commit_seconds".into()),
            &[
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ],
        )
        .map_err(|e| anyhow::anyhow!("metric buckets: {e}"))?
        .set_buckets_for_metric(
            Matcher::Full("handover_raft_batch_commands".into()),
            &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
        )
        .map_err(|e| anyhow::anyhow!("metric buckets: {e}"))?
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))?;
    metrics::gauge!("handover_build_info", "version" => env!("CARGO_PKG_VERSION"), "role" => role)
        .set(1.0);
    Ok(handle)
}

/// Whether /readyz answers 200.
pub type Ready = Arc<dyn Fn() -> bool + Send + Sync>;

/// Binds the admin port; fails with a clear message when it is taken.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!("admin address {addr} is already in use: pick another with --admin")
        } else {
            anyhow::anyhow!("cannot listen on admin address {addr}: {e}")
        }
    })
}

/// Serves the admin endpoints until the task is dropped. Runs upkeep of the
/// metrics recorder every 5 s (histograms keep raw samples until then).
pub async fn serve(listener: TcpListener, handle: PrometheusHandle, ready: Ready) {
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut t = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            t.tick().await;
            upkeep.run_upkeep();
        }
    });
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let handle = handle.clone();
        let ready = Arc::clone(&ready);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let handle = handle.clone();
                let ready = Arc::clone(&ready);
                async move { Ok::<_, Infallible>(route(&req, &handle, &*ready)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn route(
    req: &Request<Incoming>,
    handle: &PrometheusHandle,
    ready: &(dyn Fn() -> bool + Send + Sync),
) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match req.uri().path() {
        "/metrics" => (StatusCode::OK, "text/plain; version=0.0.4", handle.render()),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" if ready() => (StatusCode::OK, "text/plain", "ready\n".to_string()),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /healthz or /readyz\n".to_string(),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ctype),
    );
    r
}
