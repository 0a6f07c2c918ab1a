//! Helpers shared by the end-to-end tests.

use std::path::Path;
use std::process::{Command, Output};

/// Runs the handover binary with `args` and returns what it did.
pub(crate) fn handover(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_handover"))
        .args(args)
        .output()
        .expect("the handover binary runs")
}

/// Writes `text` to `name` inside `dir` and returns the path as a string.
pub(crate) fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

/// Standard output as text.
pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Standard error as text.
pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
