//! Routes, trusted peers and identity headers changed without a restart
//! (`handover reload`, SIGHUP). A worker reads its `--config` again
//! ([`crate::replica::Reloader`], supplied by the binary, which alone
//! parses the file) and checks it; a file that does not check is refused
//! with its line and nothing changes. With replication the settings are
//! proposed to the log and every worker applies them in log order, so all
//! route alike and a worker that starts later takes the latest from the
//! log ([`crate::replica::Note::Settings`]); without, the worker applies
//! them itself. Calls in progress keep the targets they were given.

use handover_call::B2bua;
use handover_cluster::pb as cpb;

/// Reloaded settings as the log carries them (routes, trusted peers,
/// identity headers; generation and token set by the log and the proposer).
pub use handover_cluster::pb::Settings;

/// Reloads by result: `applied` (on this worker), `refused` (the file
/// does not check), `failed` (settings from the log that do not parse
/// here: the previous ones stay).
pub const RELOADS: &str = "handover_config_reloads_total";
/// The generation of the settings in use: 0 as started, then 1, 2, …
/// per reload applied (the same on every worker once applied).
pub const GENERATION: &str = "handover_config_generation";

/// Exports the series at 0 (a dashboard sees 0, not "no data").
pub fn init() {
    for result in ["applied", "refused", "failed"] {
        metrics::counter!(RELOADS, "result" => result).increment(0);
    }
    metrics::gauge!(GENERATION).set(0.0);
}

/// Parses settings and hands them to the B2BUA; Err (logged and counted,
/// nothing changed) when one does not parse.
pub fn apply<R: rand_core::RngCore>(b2b: &mut B2bua<R>, s: &cpb::Settings) -> Result<(), String> {
    let parsed = parse(s);
    let (routes, trusted) = match parsed {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(generation = s.generation, error = %e, "the cluster's settings do not parse here; the previous ones stay");
            metrics::counter!(RELOADS, "result" => "failed").increment(1);
            return Err(e);
        }
    };
    b2b.set_routing(routes, trusted, s.identity_headers.clone());
    metrics::gauge!(GENERATION).set(s.generation as f64);
    metrics::counter!(RELOADS, "result" => "applied").increment(1);
    tracing::info!(
        generation = s.generation,
        proposer = s.proposer,
        routes = s.routes.len(),
        trusted = s.trusted.len(),
        "settings applied: new calls route by them"
    );
    Ok(())
}

fn parse(
    s: &cpb::Settings,
) -> Result<(handover_call::Routes, handover_call::trust::Trusted), String> {
    let mut routes = handover_call::Routes::default();
    for r in &s.routes {
        routes.add(r)?;
    }
    let mut trusted = Vec::new();
    for t in &s.trusted {
        trusted.push(
            t.parse::<handover_call::trust::Cidr>()
                .map_err(|e| format!("trusted `{t}`: {e}"))?,
        );
    }
    for h in &s.identity_headers {
        handover_call::trust::check_header_name(h)?;
    }
    Ok((routes, handover_call::trust::Trusted(trusted)))
}

/// Reads the file for a SIGHUP: the settings, or None (logged and
/// counted) when there is no file or it does not check.
pub fn read(reload: Option<&crate::replica::Reloader>, id: u64) -> Option<cpb::Settings> {
    let Some(r) = reload else {
        tracing::warn!("SIGHUP: this worker was started without --config: nothing to reload");
        return None;
    };
    match r.read(id) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: the configuration does not check; the settings in use stay");
            metrics::counter!(RELOADS, "result" => "refused").increment(1);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_do_not_parse_change_nothing() {
        let bad = cpb::Settings {
            generation: 3,
            routes: vec!["*=not-an-address".into()],
            ..Default::default()
        };
        assert!(parse(&bad).is_err());
        let bad = cpb::Settings {
            trusted: vec!["10.0.0.0/99".into()],
            ..Default::default()
        };
        assert!(parse(&bad).is_err());
        let good = cpb::Settings {
            routes: vec![
                "*=127.0.0.1:5070".into(),
                "alice=127.0.0.1:5071;transfer=local".into(),
            ],
            trusted: vec!["10.0.0.0/8".into()],
            identity_headers: vec!["Diversion".into()],
            ..Default::default()
        };
        let (routes, trusted) = parse(&good).unwrap();
        assert!(!routes.is_empty());
        assert!(trusted.contains(Some("10.1.2.3".parse().unwrap())));
    }
}
