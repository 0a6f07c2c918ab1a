//! The shell of membership changes: `--join` asks a member until this
//! worker is in Raft's configuration; `Admin.Leave` callers hear of the
//! removal; this worker's own leave drains it (see `handover_cluster`'s
//! membership for what the leader does).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use handover_cluster::Message;
use tokio::sync::mpsc;

use super::{Ask, Replica, sender};
use crate::peers::Peer;
use crate::rpc::pb;
use crate::tls::{TlsDir, WORKER_NAME, channel};

/// Asks the member at `via` to take this worker in, every 2 s until it is
/// a learner or a voter here (`in_conf`), handing the members each answer
/// names to the replica (`learnt`).
pub(super) async fn join(
    via: String,
    me: Peer,
    tls: Option<TlsDir>,
    learnt: mpsc::UnboundedSender<Vec<pb::Member>>,
    in_conf: Arc<AtomicBool>,
) {
    // Random per start: a late copy of an earlier start's join, applied
    // after that start was removed, is ignored (see MemberJoin).
    let incarnation = rand_core::TryRngCore::try_next_u64(&mut rand_core::OsRng).unwrap_or(1);
    let mut every = tokio::time::interval(Duration::from_secs(2));
    while !in_conf.load(Ordering::Relaxed) {
        every.tick().await;
        let ch = match &tls {
            None => channel(&via, None).await,
            Some(d) => match d.client_config(WORKER_NAME) {
                Ok(cfg) => channel(&via, Some(cfg)).await,
                Err(e) => Err(e),
            },
        };
        let mut client = match ch {
            Ok(ch) => pb::admin_client::AdminClient::new(ch),
            Err(e) => {
                tracing::warn!(%via, error = %e, "cannot reach the member to join through");
                continue;
            }
        };
        let req = pb::JoinRequest {
            id: me.id,
            grpc: me.grpc.clone(),
            sip: me.sip.clone(),
            incarnation,
        };
        match client.join(req).await {
            Ok(r) => {
                let members = r.into_inner().members;
                tracing::info!(%via, members = members.len(), "asked to join the cluster");
                if learnt.send(members).is_err() {
                    return;
                }
            }
            Err(e) => tracing::warn!(%via, error = %e, "join refused"),
        }
    }
    tracing::info!("in the cluster's Raft configuration");
}

impl Replica {
    /// The members as this replica knows them: the `--peer`s, those learnt
    /// from a join's answer and those that joined (the table's addresses
    /// win), less those no longer in Raft's configuration (once this
    /// replica has one). This worker is always among them.
    pub(super) fn member_list(&self) -> Vec<Peer> {
        let mut all: BTreeMap<u64, Peer> = self.peers.iter().map(|p| (p.id, p.clone())).collect();
        all.extend(self.learnt.clone());
        let t = self.node.table();
        for j in t.joined() {
            all.insert(
                j.node,
                Peer {
                    id: j.node,
                    grpc: j.grpc.clone(),
                    sip: j.sip.clone(),
                },
            );
        }
        let voters = self.node.voters();
        let learners = self.node.learners();
        if !voters.is_empty() {
            let me = self.node.id();
            all.retain(|&id, _| {
                id == me
                    || voters.contains(&id)
                    || learners.contains(&id)
                    || t.joined().any(|j| j.node == id)
            });
        }
        all.into_values().collect()
    }

    /// Starts a sender for each new member and stops those of members
    /// removed; tells the SIP loop when the list changed.
    pub(super) fn sync_members(
        &mut self,
        outs: &mut BTreeMap<u64, mpsc::UnboundedSender<Vec<Message>>>,
    ) {
        let list = self.member_list();
        let me = self.node.id();
        for p in list.iter().filter(|p| p.id != me) {
            // A member's address is fixed once known (a name is looked
            // up at each connection).
            if let std::collections::btree_map::Entry::Vacant(e) = outs.entry(p.id) {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(sender(p.grpc.clone(), p.id, self.tls.clone(), rx));
                e.insert(tx);
            }
        }
        outs.retain(|id, _| list.iter().any(|p| p.id == *id));
        self.members
            .send_if_modified(|m| std::mem::replace(m, list.clone()) != list);
    }

    /// `Admin.Join` and `Admin.Leave`, on the replica's thread.
    pub(super) fn ask_membership(&mut self, a: super::Ask) {
        match a {
            Ask::Join { join, reply } => {
                let known = self.node.table().joined().any(|j| *j == join);
                if !known {
                    tracing::info!(worker = join.node, grpc = %join.grpc, sip = %join.sip, "a worker asks to join");
                    self.node.join(join);
                }
                let members = self
                    .member_list()
                    .into_iter()
                    .map(|p| pb::Member {
                        id: p.id,
                        grpc: p.grpc,
                        sip: p.sip,
                    })
                    .collect();
                let _ = reply.send(members);
            }
            Ask::Leave { id, reply } => {
                if !self.node.table().is_leaving(id) {
                    tracing::info!(worker = id, "an operator removes a worker from the cluster");
                    self.node.leave(id);
                }
                if self.leaves.len() >= 16 {
                    self.leaves.remove(0);
                }
                self.leaves.push((id, reply));
            }
            _ => {}
        }
    }
    /// After the configuration or the table changed: answers the leaves
    /// whose removal is applied, starts this worker's own drain once its
    /// leave is applied, and tells the join task when it is in.
    pub(super) fn membership_news(&mut self, in_conf: &AtomicBool) {
        let voters = self.node.voters();
        let learners = self.node.learners();
        let me = self.node.id();
        in_conf.store(
            voters.contains(&me) || learners.contains(&me),
            Ordering::Relaxed,
        );
        let removed = |id: &u64| !voters.contains(id) && !learners.contains(id);
        let (done, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.leaves)
            .into_iter()
            .partition(|(id, _)| removed(id) && !self.node.table().is_leaving(*id));
        self.leaves = wait;
        for (_, reply) in done {
            let _ = reply.send(voters.clone());
        }
        if !self.leaving && self.node.table().is_leaving(me) {
            self.leaving = true;
            tracing::warn!("this worker leaves the cluster: draining, then stopping");
            let _ = self.notes.send(super::Note::Leave);
        }
    }
}
