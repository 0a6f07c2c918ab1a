//! The cluster's settings on the replica's side (`crate::reload`): told
//! to the SIP loop when the applied generation changes, and this worker's
//! file compared with the log's once at start.

use super::*;

impl Replica {
    /// Tells the SIP loop the table's settings when they changed (a reload
    /// applied, or at start the latest in the log), and who asked for
    /// them their generation; true when they changed.
    pub(super) fn tell_settings(&mut self) -> bool {
        let Some(s) = self.node.table().settings() else {
            return false;
        };
        if s.generation == self.generation {
            return false;
        }
        self.generation = s.generation;
        if let Some(i) = self.reloads.iter().position(|(t, _)| *t == s.token) {
            let (_, reply) = self.reloads.remove(i);
            let _ = reply.send(s.generation);
        }
        let _ = self.notes.send(Note::Settings(Box::new(s.clone())));
        true
    }

    /// Once caught up at start: when the log holds reloaded settings and
    /// this worker's file says otherwise, the file was changed since (a
    /// new ConfigMap rolled out, the file edited and the worker
    /// restarted), and it is proposed as the next generation, so the file
    /// last read wins on every worker alike. Without a reload in the log
    /// each worker routes by its own file, as started.
    pub(super) fn check_file(&mut self) {
        let (Some(reload), Some(cur)) = (&self.reload, self.node.table().settings()) else {
            return;
        };
        match reload.read(self.node.id()) {
            Ok(mine)
                if (&mine.routes, &mine.trusted, &mine.identity_headers)
                    != (&cur.routes, &cur.trusted, &cur.identity_headers) =>
            {
                tracing::info!(
                    generation = cur.generation,
                    "this worker's configuration file differs from the cluster's settings: proposed as the next generation"
                );
                self.node.propose_settings(mine);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "this worker's configuration file does not check; it routes by the cluster's settings")
            }
        }
    }
}
