//! The replica's gRPC services on the cluster port: `Raft` (peers'
//! messages in) and `Admin` (`handover status`, the edges' map watch).
//! With cluster TLS each call checks its caller's certificate
//! ([`crate::tls`]): Raft messages only from the member each claims to
//! be, the map and status for any cluster party. Drain and fault
//! injection are not here but on the local admin socket
//! ([`crate::local`]).

use std::time::Duration;

use handover_cluster::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt as _;

use crate::fault::Faults;
use crate::replica::Shared;
use crate::rpc::pb;
use crate::tls::{Caller, REFUSED, member_name};

#[derive(Clone)]
pub(crate) struct Services {
    /// Questions for the replica's thread (calls, hang-ups).
    pub(crate) ask: mpsc::Sender<crate::replica::Ask>,
    pub(crate) inbox: mpsc::UnboundedSender<Message>,
    pub(crate) shared: watch::Receiver<Shared>,
    /// A partition by fault injection drops what comes in.
    pub(crate) faults: Faults,
    /// The port runs mutual TLS: callers are checked.
    pub(crate) tls: bool,
    /// Reads the configuration file again (`Admin.Reload`).
    pub(crate) reload: Option<crate::replica::Reloader>,
    /// This worker's Raft id.
    pub(crate) id: u64,
}

impl Services {
    /// Refuses (and counts) a call whose caller may not make it.
    fn allow(&self, ok: bool, reason: &'static str, what: &str) -> Result<(), tonic::Status> {
        if ok {
            return Ok(());
        }
        metrics::counter!(REFUSED, "reason" => reason).increment(1);
        tracing::warn!(reason, what, "cluster call refused");
        Err(tonic::Status::permission_denied(format!(
            "{what}: not allowed for this certificate"
        )))
    }
}

#[tonic::async_trait]
impl pb::raft_server::Raft for Services {
    async fn send(
        &self,
        request: tonic::Request<tonic::Streaming<pb::RaftBatch>>,
    ) -> Result<tonic::Response<pb::Ack>, tonic::Status> {
        let caller = Caller::of(&request, self.tls);
        self.allow(caller.is(crate::tls::WORKER_NAME), "role", "Raft.Send")?;
        // The member this stream's sender was shown to be.
        let mut shown: Option<u64> = None;
        let mut stream = request.into_inner();
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            if batch.group != 1 {
                return Err(tonic::Status::invalid_argument(format!(
                    "unknown Raft group {}",
                    batch.group
                )));
            }
            if self.faults.isolated() {
                continue;
            }
            for bytes in &batch.messages {
                match handover_cluster::decode_message(bytes) {
                    Some(m) => {
                        if shown != Some(m.from) {
                            self.allow(
                                caller.is(&member_name(m.from)),
                                "impersonation",
                                "Raft.Send (a message from another member)",
                            )?;
                            shown = Some(m.from);
                        }
                        if self.inbox.send(m).is_err() {
                            return Err(tonic::Status::unavailable("replica stopped"));
                        }
                    }
                    None => {
                        return Err(tonic::Status::invalid_argument("undecodable raft message"));
                    }
                }
            }
        }
        Ok(tonic::Response::new(pb::Ack {}))
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for Services {
    async fn status(
        &self,
        req: tonic::Request<pb::StatusRequest>,
    ) -> Result<tonic::Response<pb::ClusterStatus>, tonic::Status> {
        self.allow(
            Caller::of(&req, self.tls).may_watch(),
            "role",
            "Admin.Status",
        )?;
        Ok(tonic::Response::new(self.shared.borrow().status.clone()))
    }

    type WatchMapStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::MapView, tonic::Status>> + Send>,
    >;

    async fn watch_map(
        &self,
        req: tonic::Request<pb::WatchRequest>,
    ) -> Result<tonic::Response<Self::WatchMapStream>, tonic::Status> {
        self.allow(
            Caller::of(&req, self.tls).may_watch(),
            "role",
            "Admin.WatchMap",
        )?;
        let mut rx = self.shared.clone();
        let stream = async_stream(move |tx| async move {
            let mut last = None;
            loop {
                let view = rx.borrow_and_update().map.clone();
                let epoch = view.map.as_ref().map(|m| m.epoch);
                if epoch != last && epoch.is_some_and(|e| e > 0) {
                    last = epoch;
                    if tx.send(Ok(view)).await.is_err() {
                        return;
                    }
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(tonic::Response::new(stream))
    }

    async fn calls(
        &self,
        req: tonic::Request<pb::CallsRequest>,
    ) -> Result<tonic::Response<pb::CallList>, tonic::Status> {
        self.allow(
            Caller::of(&req, self.tls).may_control(),
            "role",
            "Admin.Calls",
        )?;
        let req = req.into_inner();
        let list = self
            .ask(|reply| crate::replica::Ask::Calls { req, reply })
            .await?;
        Ok(tonic::Response::new(list))
    }

    async fn hangup(
        &self,
        req: tonic::Request<pb::HangupRequest>,
    ) -> Result<tonic::Response<pb::HangupReply>, tonic::Status> {
        self.allow(
            Caller::of(&req, self.tls).may_control(),
            "role",
            "Admin.Hangup",
        )?;
        let call_id = req.into_inner().call_id;
        if call_id.is_empty() || call_id.len() > 1024 {
            return Err(tonic::Status::invalid_argument(
                "a Call-ID of 1 to 1024 bytes",
            ));
        }
        let owner = self
            .ask(|reply| crate::replica::Ask::Hangup { call_id, reply })
            .await?;
        match owner {
            Some(owner) => Ok(tonic::Response::new(pb::HangupReply { owner })),
            None => Err(tonic::Status::not_found(
                "no confirmed call with that Call-ID (either leg's) in the replicated table",
            )),
        }
    }

    async fn reload(
        &self,
        req: tonic::Request<pb::ReloadRequest>,
    ) -> Result<tonic::Response<pb::ReloadReply>, tonic::Status> {
        self.allow(
            Caller::of(&req, self.tls).may_control(),
            "role",
            "Admin.Reload",
        )?;
        self.reload_file().await.map(tonic::Response::new)
    }

    async fn join(
        &self,
        req: tonic::Request<pb::JoinRequest>,
    ) -> Result<tonic::Response<pb::JoinReply>, tonic::Status> {
        let caller = Caller::of(&req, self.tls);
        let r = req.into_inner();
        // Only the joiner itself, with the member certificate of its id.
        self.allow(
            caller.is(crate::tls::WORKER_NAME) && caller.is(&member_name(r.id)),
            "impersonation",
            "Admin.Join (a join for another member)",
        )?;
        let ok = |s: &str| crate::peers::host_port(s).is_some();
        if r.id == 0 || !ok(&r.grpc) || !ok(&r.sip) {
            return Err(tonic::Status::invalid_argument(
                "a join needs an id (not 0) and its gRPC and SIP addresses as HOST:PORT",
            ));
        }
        let join = handover_cluster::pb::MemberJoin {
            node: r.id,
            grpc: r.grpc,
            sip: r.sip,
            incarnation: r.incarnation,
        };
        let answer = self
            .ask(|reply| crate::replica::Ask::Join { join, reply })
            .await?;
        Ok(tonic::Response::new(answer))
    }

    async fn leave(
        &self,
        req: tonic::Request<pb::LeaveRequest>,
    ) -> Result<tonic::Response<pb::LeaveReply>, tonic::Status> {
        self.allow(
            Caller::of(&req, self.tls).may_control(),
            "role",
            "Admin.Leave",
        )?;
        let id = req.into_inner().id;
        if id == 0 {
            return Err(tonic::Status::invalid_argument(
                "which worker: an id, not 0",
            ));
        }
        let voters = tokio::time::timeout(
            Duration::from_secs(30),
            self.ask(|reply| crate::replica::Ask::Leave { id, reply }),
        )
        .await
        .map_err(|_| {
            tonic::Status::unavailable(
                "the worker was not removed within 30 s: is it still in the shard map (draining), \
                 or is a majority of the workers down?",
            )
        })??;
        Ok(tonic::Response::new(pb::LeaveReply { voters }))
    }
}

impl Services {
    /// Reads the file, has the replica propose its settings and waits (at
    /// most 10 s) until they are applied here.
    async fn reload_file(&self) -> Result<pb::ReloadReply, tonic::Status> {
        let Some(reload) = &self.reload else {
            return Err(tonic::Status::failed_precondition(
                "this worker was started without --config: it has no file to reload",
            ));
        };
        let settings = reload.read(self.id).map_err(|e| {
            tracing::warn!(error = %e, "reload refused: the configuration does not check; the settings in use stay");
            metrics::counter!(crate::reload::RELOADS, "result" => "refused").increment(1);
            tonic::Status::invalid_argument(e)
        })?;
        let (routes, trusted) = (
            u32::try_from(settings.routes.len()).unwrap_or(u32::MAX),
            u32::try_from(settings.trusted.len()).unwrap_or(u32::MAX),
        );
        let settings = Box::new(settings);
        let generation = tokio::time::timeout(
            Duration::from_secs(10),
            self.ask(|reply| crate::replica::Ask::Reload { settings, reply }),
        )
        .await
        .map_err(|_| {
            tonic::Status::unavailable(
                "the reload was not committed within 10 s: is a majority of the workers up?",
            )
        })??;
        Ok(pb::ReloadReply {
            id: self.id,
            generation,
            routes,
            trusted,
        })
    }

    /// Asks the replica's thread; UNAVAILABLE when it is gone or busy
    /// with 16 questions already.
    async fn ask<T>(
        &self,
        ask: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> crate::replica::Ask,
    ) -> Result<T, tonic::Status> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.ask
            .try_send(ask(tx))
            .map_err(|_| tonic::Status::unavailable("the replica is busy or stopped"))?;
        rx.await
            .map_err(|_| tonic::Status::unavailable("the replica stopped"))
    }
}

/// A stream fed by a task through a channel (what `async-stream` would
/// do, with what tokio already gives).
fn async_stream<T, F, Fut>(f: F) -> std::pin::Pin<Box<dyn tokio_stream::Stream<Item = T> + Send>>
where
    T: Send + 'static,
    F: FnOnce(mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// `served` as a bitmap: bit s of byte s/8, least significant first.
pub(crate) fn serving_map(served: &[bool]) -> Vec<u8> {
    let mut m = vec![0u8; served.len().div_ceil(8)];
    for (s, _) in served.iter().enumerate().filter(|(_, on)| **on) {
        m[s / 8] |= 1 << (s % 8);
    }
    m
}

/// Milliseconds since the Unix epoch (0 for a time before it).
pub(crate) fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_serving_map_has_one_bit_per_shard_least_significant_first() {
        let mut served = vec![false; 16];
        served[0] = true;
        served[9] = true;
        served[15] = true;
        assert_eq!(serving_map(&served), [0b0000_0001, 0b1000_0010]);
        assert_eq!(serving_map(&[false; 4096]).len(), 512);
    }
}
