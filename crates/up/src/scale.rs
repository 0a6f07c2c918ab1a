//! `handover scale`: adds workers to a running `handover up`, or removes
//! them, through a local socket `up` listens on (next to the admin
//! credentials it leaves for `handover status`, by the first worker's
//! gRPC port). A new worker joins (`--join`); a removed one leaves
//! (`handover leave`: it drains, stops and is removed from Raft).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

/// `handover scale` flags.
#[derive(Debug, Clone, Args)]
pub struct ScaleArgs {
    /// How many workers the cluster should have.
    #[arg(long)]
    workers: u16,
    /// The first worker's gRPC address of the `handover up` to scale.
    #[arg(long, default_value = "127.0.0.1:7001")]
    grpc: SocketAddr,
}

/// The control socket of the `up` whose first worker's gRPC port is
/// `port`.
pub(super) fn control_path(port: u16) -> PathBuf {
    handover_ctl::status::up_credentials(port).with_extension("sock")
}

/// Asks the `up` at `a.grpc` for `a.workers` workers and prints what it
/// does.
pub fn run(a: &ScaleArgs) -> anyhow::Result<()> {
    let path = control_path(a.grpc.port());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let reply = rt.block_on(async {
        let mut s = tokio::net::UnixStream::connect(&path)
            .await
            .with_context(|| {
                format!(
                    "no `handover up` with a worker's gRPC on {} here ({})",
                    a.grpc,
                    path.display()
                )
            })?;
        s.write_all(format!("workers {}\n", a.workers).as_bytes())
            .await?;
        let mut reply = String::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tokio::io::AsyncReadExt::read_to_string(&mut s, &mut reply),
        )
        .await
        .context("`handover up` did not answer within 10 s")??;
        anyhow::Ok(reply)
    })?;
    match reply.strip_prefix("error: ") {
        Some(e) => anyhow::bail!("{}", e.trim_end()),
        None => {
            print!("{reply}");
            Ok(())
        }
    }
}

/// `up`'s end: the socket, removed when dropped.
pub(super) struct Control {
    pub(super) listener: tokio::net::UnixListener,
    path: PathBuf,
}

impl Control {
    pub(super) fn bind(port: u16) -> anyhow::Result<Self> {
        let path = control_path(port);
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)
            .with_context(|| format!("cannot listen on {}", path.display()))?;
        Ok(Self { listener, path })
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Reads one request (`workers N`) from `s`: the number asked for.
pub(super) async fn request(s: &mut tokio::net::UnixStream) -> Result<u16, String> {
    let mut line = String::new();
    let mut r = tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(s, 64));
    tokio::time::timeout(std::time::Duration::from_secs(2), r.read_line(&mut line))
        .await
        .map_err(|_| "no request".to_string())?
        .map_err(|e| e.to_string())?;
    line.trim()
        .strip_prefix("workers ")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("not a request: {:?}", line.trim()))
}

/// What scaling from the workers `running` (ids, ascending) to `want`
/// does: the ids to start, and the ids to remove (highest first), or why
/// not. `max` is the highest id `up` has credentials and ports for.
pub(super) fn plan(running: &[u16], want: u16, max: u16) -> Result<(Vec<u16>, Vec<u16>), String> {
    if want == 0 {
        return Err("--workers 0: a cluster needs one".into());
    }
    let have = running.len() as u16;
    if want > have {
        let top = running.last().copied().unwrap_or(0);
        let add: Vec<u16> = (top + 1..).take(usize::from(want - have)).collect();
        if add.last().is_some_and(|&id| id > max) {
            return Err(format!(
                "this `handover up` has credentials for workers up to {max}: --workers {} at most",
                have + max.saturating_sub(top)
            ));
        }
        Ok((add, Vec::new()))
    } else {
        let remove: Vec<u16> = running
            .iter()
            .rev()
            .take(usize::from(have - want))
            .copied()
            .collect();
        Ok((Vec::new(), remove))
    }
}

/// Writes `reply` to `s` and closes it.
pub(super) async fn answer(mut s: tokio::net::UnixStream, reply: &str) {
    let _ = s.write_all(reply.as_bytes()).await;
    let _ = s.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::plan;

    #[test]
    fn a_plan_adds_above_the_highest_and_removes_the_highest() {
        assert_eq!(plan(&[1, 2, 3], 5, 7), Ok((vec![4, 5], vec![])));
        assert_eq!(plan(&[1, 2, 3, 4, 5], 3, 7), Ok((vec![], vec![5, 4])));
        assert_eq!(plan(&[1, 2, 4], 4, 7), Ok((vec![5], vec![])));
        assert_eq!(plan(&[1, 2, 3], 3, 7), Ok((vec![], vec![])));
        assert!(
            plan(&[1, 2, 3], 9, 7)
                .unwrap_err()
                .contains("--workers 7 at most")
        );
        assert!(plan(&[1, 2, 3], 0, 7).is_err());
    }
}
