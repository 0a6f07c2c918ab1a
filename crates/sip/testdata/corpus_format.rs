//! The corpus file format, shared by `crates/sip/tests/corpus.rs` and the
//! edge's end-to-end test (`tests/e2e/edge.rs`).
//!
//! `# expect: ok | reply STATUS LABEL | drop LABEL` (what `scan` says),
//! optional `# ua: …` (what `ua_check` adds; `ok` when absent), optional
//! `# field: name=value` checks, `# eol: lf` to keep bare LFs,
//! `# trailing: none` for a file that ends without a line end on purpose;
//! a blank line; then the message with LF line ends (turned into CRLF) and
//! `\xHH` escapes.
#![allow(dead_code, reason = "two test crates use different parts")]

use std::path::Path;

/// One corpus file.
pub(crate) struct Case {
    pub(crate) name: String,
    pub(crate) expect: String,
    pub(crate) ua: String,
    pub(crate) fields: Vec<(String, String)>,
    pub(crate) bytes: Vec<u8>,
}

fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && b.get(i + 1) == Some(&b'x')
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 2..i + 4], 16)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Reads one corpus file.
pub(crate) fn load(path: &Path) -> Case {
    let text = std::fs::read_to_string(path).unwrap();
    let (head, body) = text
        .split_once("\n\n")
        .expect("header block, blank line, message");
    let mut expect = None;
    let mut ua = "ok".to_string();
    let mut fields = Vec::new();
    let mut crlf = true;
    let mut trailing = true;
    for line in head.lines() {
        let line = line
            .strip_prefix("# ")
            .expect("header lines start with '# '");
        let (k, v) = line.split_once(": ").unwrap();
        match k {
            "expect" => expect = Some(v.to_string()),
            "ua" => ua = v.to_string(),
            "field" => {
                let (n, val) = v.split_once('=').unwrap();
                fields.push((n.to_string(), val.to_string()));
            }
            "eol" => crlf = v != "lf",
            "trailing" => trailing = v != "none",
            "note" => {}
            other => panic!("{}: unknown key {other}", path.display()),
        }
    }
    assert!(
        trailing || !body.ends_with('\n'),
        "{}: trailing line end",
        path.display()
    );
    let body = if crlf {
        body.replace('\n', "\r\n")
    } else {
        body.to_string()
    };
    Case {
        name: path.file_stem().unwrap().to_string_lossy().into_owned(),
        expect: expect.expect("# expect line"),
        ua,
        fields,
        bytes: unescape(&body),
    }
}

/// Every corpus file in `dir`, sorted by name.
pub(crate) fn load_dir(dir: &Path) -> Vec<Case> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.iter().map(|p| load(p)).collect()
}
