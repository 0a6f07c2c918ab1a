//! The Raft transport out: a replica's messages, batched per peer, over
//! one gRPC client stream per peer (mutual TLS as that member).

use std::collections::BTreeMap;
use std::time::Duration;

use handover_cluster::{Message, Node};
use tokio::sync::mpsc;

use crate::rpc::pb;
use crate::tls::{TlsDir, channel, member_name};

/// Hands the node's messages to the peers' senders, one batch per peer
/// (nothing while isolated by fault injection).
pub(super) fn send_out(
    node: &mut Node,
    outs: &BTreeMap<u64, mpsc::UnboundedSender<Vec<Message>>>,
    isolated: bool,
) {
    let mut per: BTreeMap<u64, Vec<Message>> = BTreeMap::new();
    for m in node.take_messages() {
        per.entry(m.to).or_default().push(m);
    }
    if isolated {
        return;
    }
    for (to, msgs) in per {
        if let Some(tx) = outs.get(&to) {
            let _ = tx.send(msgs);
        }
    }
}

/// Sends raft messages to one peer over a client stream, reconnecting
/// whenever it breaks. Messages that find no connection are dropped: raft
/// resends what matters.
pub(super) async fn sender(
    to: String,
    id: u64,
    tls: Option<TlsDir>,
    mut rx: mpsc::UnboundedReceiver<Vec<Message>>,
) {
    loop {
        let channel = match &tls {
            None => channel(&to, None).await,
            // Read at each connection: a renewed certificate is used from
            // the next one on.
            Some(d) => match d.client_config(&member_name(id)) {
                Ok(cfg) => channel(&to, Some(cfg)).await,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster TLS");
                    Err(e)
                }
            },
        };
        let client = match channel {
            Ok(ch) => pb::raft_client::RaftClient::new(ch).max_encoding_message_size(64 << 20),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                // Drop what queued while the peer was away; stop once the
                // member is gone (removed from the cluster).
                loop {
                    match rx.try_recv() {
                        Ok(_) => {}
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => return,
                    }
                }
                continue;
            }
        };
        let (tx, srx) = mpsc::channel::<pb::RaftBatch>(1024);
        let mut client = client;
        let mut call = Box::pin(async move {
            client
                .send(tokio_stream::wrappers::ReceiverStream::new(srx))
                .await
        });
        loop {
            tokio::select! {
                batch = rx.recv() => {
                    let Some(msgs) = batch else { return };
                    let batch = pb::RaftBatch {
                        group: 1,
                        messages: msgs.iter().map(handover_cluster::encode_message).collect(),
                    };
                    if tx.send(batch).await.is_err() {
                        break;
                    }
                }
                _ = &mut call => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
