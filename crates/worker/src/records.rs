//! Call detail records' sink (docs/records.md): one JSON line per record,
//! appended to a file that is rotated by size and age, or written to
//! standard output. A thread of its own writes them in batches, one
//! `fdatasync` per batch, then confirms the batch's ids to the replica
//! (`Cmd::Written`), which commits that they are written so no other
//! worker writes them again.
//!
//! The file sink is idempotent for its own worker: at start it reads the
//! ids of its current file, and a record whose id it holds (its worker
//! died after writing it and before the confirmation was committed, and
//! was handed it again) is confirmed without a second line.

use std::collections::{HashSet, VecDeque};
use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use handover_cluster::pb;

use crate::replica::{Cmd, Cmds};

/// Records written (`retry` true: handed over from a member that may have
/// written them before it died).
pub const RECORDS_WRITTEN: &str = "handover_records_written_total";
/// Failed writes of a batch (the batch is kept and tried again).
pub const RECORD_SINK_ERRORS: &str = "handover_record_sink_errors_total";
/// Records handed to the sink whose id it had already written: confirmed,
/// not written again.
pub const RECORDS_DEDUPLICATED: &str = "handover_records_deduplicated_total";

/// Where and how records are written.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The file (`-`: standard output).
    pub path: PathBuf,
    /// A file is rotated once it holds this many bytes (0: never).
    pub rotate_bytes: u64,
    /// ... or is this old (zero: never).
    pub rotate_after: Duration,
}

/// Ids remembered for deduplication, the oldest forgotten first.
const SEEN: usize = 65_536;

/// The records' writer: a thread fed through a channel.
#[derive(Debug, Clone)]
pub struct Writer {
    tx: mpsc::Sender<(pb::CallDetail, bool)>,
}

impl Writer {
    /// Starts the writer of worker `me`; `confirm` (with replication) hears
    /// the ids of each batch once it is on disk.
    pub fn start(s: Settings, me: u64, confirm: Option<Arc<Cmds>>) -> std::io::Result<Self> {
        let mut out = Out::open(&s)?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("records".into())
            .spawn(move || run(&mut out, &rx, me, confirm.as_deref()))?;
        metrics::counter!(RECORDS_WRITTEN, "retry" => "false").increment(0);
        metrics::counter!(RECORDS_WRITTEN, "retry" => "true").increment(0);
        metrics::counter!(RECORD_SINK_ERRORS).increment(0);
        metrics::counter!(RECORDS_DEDUPLICATED).increment(0);
        Ok(Self { tx })
    }

    /// Queues `record` (`retry`: see [`handover_cluster::Event::WriteRecord`]).
    pub fn write(&self, record: pb::CallDetail, retry: bool) {
        // The thread ends only with the process.
        let _ = self.tx.send((record, retry));
    }
}

/// Most records one batch takes (one write and one sync).
const BATCH: usize = 1024;

fn run(
    out: &mut Out,
    rx: &mpsc::Receiver<(pb::CallDetail, bool)>,
    me: u64,
    confirm: Option<&Cmds>,
) {
    let mut batch = Vec::new();
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < BATCH
            && let Ok(r) = rx.try_recv()
        {
            batch.push(r);
        }
        let mut ids = Vec::with_capacity(batch.len());
        let mut text = String::new();
        let (mut fresh, mut retried, mut dup) = (0u64, 0u64, 0u64);
        for (r, retry) in &batch {
            let id = r.detail.as_ref().map(|d| d.id.clone()).unwrap_or_default();
            if out.seen.contains(&id) {
                dup += 1;
            } else {
                text.push_str(&line(r, me, *retry));
                text.push('\n');
                out.remember(id.clone());
                if *retry {
                    retried += 1;
                } else {
                    fresh += 1;
                }
            }
            ids.push(id);
        }
        // A failed write is tried again (a full disk, a removed directory)
        // until it lands: a record is confirmed only once it is on disk.
        loop {
            match out.append(text.as_bytes()) {
                Ok(()) => break,
                Err(e) => {
                    metrics::counter!(RECORD_SINK_ERRORS).increment(1);
                    tracing::warn!(error = %e, "call records: write failed; trying again in 1 s");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        metrics::counter!(RECORDS_WRITTEN, "retry" => "false").increment(fresh);
        metrics::counter!(RECORDS_WRITTEN, "retry" => "true").increment(retried);
        metrics::counter!(RECORDS_DEDUPLICATED).increment(dup);
        if let Some(c) = confirm {
            c.send(Cmd::Written(ids));
        }
        batch.clear();
    }
}

/// One record as a JSON line (docs/records.md), written by member `writer`.
pub fn line(r: &pb::CallDetail, writer: u64, retry: bool) -> String {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let d = r.detail.clone().unwrap_or_default();
    let ms = |v: u64| (v != 0).then_some(v);
    let duration = (d.answered_ms != 0).then(|| r.ended_ms.saturating_sub(d.answered_ms));
    let transfers: Vec<serde_json::Value> = d
        .transfers
        .iter()
        .map(|t| {
            serde_json::json!({
                "kind": if t.attended { "attended" } else { "blind" },
                "mode": if t.local { "local" } else { "passthrough" },
                "result": t.result,
                "at_ms": t.at_ms,
            })
        })
        .collect();
    serde_json::json!({
        "id": text(&d.id),
        "a_call_id": text(&r.a_call_id),
        "b_call_id": text(&r.b_call_id),
        "from": text(&r.from),
        "to": text(&r.to),
        "user": d.user.as_deref().map(text),
        "source": (!r.source.is_empty()).then_some(&r.source),
        "transport": text(&r.transport),
        "target": text(&d.target),
        "started_ms": d.started_ms,
        "ringing_ms": ms(d.ringing_ms),
        "answered_ms": ms(d.answered_ms),
        "ended_ms": r.ended_ms,
        "duration_ms": duration,
        "cause": r.cause,
        "status": r.status,
        "transfers": transfers,
        "workers": d.workers,
        "writer": writer,
        "retry": retry,
    })
    .to_string()
}

/// The sink's open file (or standard output) and the ids it holds.
struct Out {
    s: Settings,
    file: Option<std::fs::File>,
    size: u64,
    opened: std::time::SystemTime,
    seen: HashSet<Vec<u8>>,
    order: VecDeque<Vec<u8>>,
}

impl Out {
    fn open(s: &Settings) -> std::io::Result<Self> {
        let mut out = Self {
            s: s.clone(),
            file: None,
            size: 0,
            opened: std::time::SystemTime::now(),
            seen: HashSet::new(),
            order: VecDeque::new(),
        };
        if s.path != Path::new("-") {
            if let Some(dir) = s.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            if let Ok(f) = std::fs::File::open(&s.path) {
                for l in std::io::BufReader::new(f).lines() {
                    let Ok(l) = l else { break };
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&l)
                        && let Some(id) = v.get("id").and_then(|i| i.as_str())
                    {
                        out.remember(id.as_bytes().to_vec());
                    }
                }
            }
            out.reopen()?;
        }
        Ok(out)
    }

    fn remember(&mut self, id: Vec<u8>) {
        if self.seen.insert(id.clone()) {
            self.order.push_back(id);
        }
        while self.order.len() > SEEN {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
    }

    fn reopen(&mut self) -> std::io::Result<()> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.s.path)?;
        let meta = f.metadata()?;
        self.size = meta.len();
        self.opened = meta
            .created()
            .or_else(|_| meta.modified())
            .unwrap_or_else(|_| std::time::SystemTime::now());
        if self.size == 0 {
            self.opened = std::time::SystemTime::now();
        }
        self.file = Some(f);
        Ok(())
    }

    /// Renames the file to `PATH.UNIXMS` and opens a new one when it is
    /// due (by size or age, and not empty).
    fn rotate_if_due(&mut self) -> std::io::Result<()> {
        let old = self
            .opened
            .elapsed()
            .is_ok_and(|a| !self.s.rotate_after.is_zero() && a >= self.s.rotate_after);
        let big = self.s.rotate_bytes > 0 && self.size >= self.s.rotate_bytes;
        if self.size == 0 || !(old || big) {
            return Ok(());
        }
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let mut to = self.s.path.clone().into_os_string();
        to.push(format!(".{ms}"));
        std::fs::rename(&self.s.path, &to)?;
        self.reopen()
    }

    fn append(&mut self, text: &[u8]) -> std::io::Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        if self.file.is_none() {
            let mut o = std::io::stdout().lock();
            o.write_all(text)?;
            return o.flush();
        }
        self.rotate_if_due()?;
        let Some(f) = self.file.as_mut() else {
            return Ok(());
        };
        f.write_all(text)?;
        f.sync_data()?;
        self.size = self.size.saturating_add(text.len() as u64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> pb::CallDetail {
        pb::CallDetail {
            detail: Some(pb::Detail {
                id: id.as_bytes().to_vec(),
                started_ms: 1_000,
                answered_ms: 2_000,
                ..Default::default()
            }),
            a_call_id: b"a@x".to_vec(),
            ended_ms: 5_500,
            cause: "caller".into(),
            status: 200,
            ..Default::default()
        }
    }

    fn ids(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
                v["id"].as_str().unwrap_or_default().to_owned()
            })
            .collect()
    }

    #[test]
    fn a_line_says_the_duration_and_the_unanswered_fields_are_null() {
        let v: serde_json::Value = serde_json::from_str(&line(&record("r1"), 3, false)).unwrap();
        assert_eq!(v["duration_ms"], 3_500);
        assert_eq!(v["ringing_ms"], serde_json::Value::Null);
        assert_eq!(v["writer"], 3);
        assert_eq!(v["cause"], "caller");
    }

    #[test]
    fn a_restarted_sink_does_not_write_an_id_its_file_holds() {
        let dir = tempfile::tempdir().unwrap();
        let s = Settings {
            path: dir.path().join("records.jsonl"),
            rotate_bytes: 0,
            rotate_after: Duration::ZERO,
        };
        let cmds = Arc::new(Cmds::default());
        let w = Writer::start(s.clone(), 1, Some(cmds.clone())).unwrap();
        w.write(record("r1"), false);
        drop(w);
        let confirmed = wait_confirmed(&cmds, 1);
        assert_eq!(confirmed, vec![b"r1".to_vec()]);
        // Its worker died before the confirmation was committed: it is
        // handed r1 again, with r2.
        let w = Writer::start(s.clone(), 1, Some(cmds.clone())).unwrap();
        w.write(record("r1"), false);
        w.write(record("r2"), false);
        let confirmed = wait_confirmed(&cmds, 2);
        assert_eq!(confirmed.len(), 2);
        assert_eq!(ids(&s.path), ["r1", "r2"]);
    }

    #[test]
    fn a_full_file_is_rotated_before_the_next_batch() {
        let dir = tempfile::tempdir().unwrap();
        let s = Settings {
            path: dir.path().join("records.jsonl"),
            rotate_bytes: 10,
            rotate_after: Duration::ZERO,
        };
        let cmds = Arc::new(Cmds::default());
        let w = Writer::start(s.clone(), 1, Some(cmds.clone())).unwrap();
        w.write(record("r1"), false);
        wait_confirmed(&cmds, 1);
        w.write(record("r2"), false);
        wait_confirmed(&cmds, 1);
        assert_eq!(ids(&s.path), ["r2"]);
        let rotated: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name() != "records.jsonl")
            .collect();
        assert_eq!(rotated.len(), 1);
        assert_eq!(ids(&rotated[0].path()), ["r1"]);
    }

    /// The ids confirmed until `n` are (bounded wait: 10 s).
    fn wait_confirmed(cmds: &Cmds, n: usize) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        for _ in 0..1000 {
            for (c, _) in cmds.take() {
                if let Cmd::Written(ids) = c {
                    got.extend(ids);
                }
            }
            if got.len() >= n {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        got
    }
}
