//! `handover passwd FILE USER`: one user's line of a users file
//! (`handover_call::registrar::digest::Users`), written in place.

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use handover_call::registrar::digest::Users;

#[derive(Debug, Args)]
pub(crate) struct PasswdArgs {
    /// The users file (created when missing).
    file: PathBuf,
    /// The user (the user part of its address-of-record).
    user: String,
    /// The digest realm (the worker's `--realm`).
    #[arg(long, default_value = "handover")]
    realm: String,
    /// Remove the user instead.
    #[arg(long)]
    delete: bool,
}

pub(crate) fn run(a: &PasswdArgs) -> anyhow::Result<()> {
    if a.user.is_empty() || a.user.contains(char::is_whitespace) {
        anyhow::bail!("a user name has no spaces and is not empty");
    }
    if a.realm.is_empty() || a.realm.contains(char::is_whitespace) {
        anyhow::bail!("a realm has no spaces and is not empty");
    }
    let old = match std::fs::read_to_string(&a.file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", a.file.display())),
    };
    Users::parse(&old).map_err(|e| anyhow::anyhow!("{}: {e}", a.file.display()))?;
    let mut lines: Vec<String> = old
        .lines()
        .filter(|l| {
            let mut f = l.split_ascii_whitespace();
            !(f.next() == Some(a.user.as_str()) && f.next() == Some(a.realm.as_str()))
        })
        .map(str::to_owned)
        .collect();
    if lines.is_empty() {
        lines.push("# handover users: USER REALM HA1-MD5 HA1-SHA-256 (`handover passwd`)".into());
    }
    if !a.delete {
        let mut pw = String::new();
        std::io::stdin()
            .read_to_string(&mut pw)
            .context("cannot read the password from standard input")?;
        let pw = pw.trim_end_matches(['\r', '\n']);
        if pw.is_empty() {
            anyhow::bail!("no password on standard input");
        }
        lines.push(Users::line(&a.user, &a.realm, pw));
    }
    let mut text = lines.join("\n");
    text.push('\n');
    // Written beside and renamed over: a worker re-reading the file never
    // sees half of it.
    let tmp = a.file.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &a.file)
        .with_context(|| format!("cannot replace {}", a.file.display()))?;
    Ok(())
}
