//! Backend health from OPTIONS probes: a backend goes down after
//! `down_after` probes in a row got no answer, and comes back up after
//! `up_after` answered in a row. Any final response except 503 counts as an
//! answer: a SIP server that says 404 or 405 to OPTIONS is alive.

/// Probe settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthConfig {
    /// Time between probe rounds, in milliseconds; 0 turns probing off.
    pub interval_ms: u64,
    /// How long to wait for an answer, in milliseconds.
    pub timeout_ms: u64,
    /// Misses in a row before a backend is marked down.
    pub down_after: u32,
    /// Answers in a row before a down backend is marked up.
    pub up_after: u32,
}

impl Default for HealthConfig {
    /// One probe a second; down after 3 misses (about 3 s), up after 2 answers.
    fn default() -> Self {
        Self {
            interval_ms: 1000,
            timeout_ms: 500,
            down_after: 3,
            up_after: 2,
        }
    }
}

impl HealthConfig {
    /// Checks the settings; the error names the broken rule.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.interval_ms != 0 && self.timeout_ms > self.interval_ms {
            return Err("timeout_ms must not exceed interval_ms");
        }
        if self.down_after == 0 || self.up_after == 0 {
            return Err("down_after and up_after must be at least 1");
        }
        Ok(())
    }
}

/// Health state of every backend.
#[derive(Debug, Clone)]
pub struct Health {
    cfg: HealthConfig,
    up: Vec<bool>,
    run: Vec<u32>,
}

impl Health {
    /// All `n` backends start up, so traffic flows before the first probe.
    pub fn new(cfg: HealthConfig, n: usize) -> Self {
        Self {
            cfg,
            up: vec![true; n],
            run: vec![0; n],
        }
    }

    /// Records one probe result for backend `i` (`answered` with a status,
    /// or `None` for no answer in time). Returns the new state when it
    /// changed.
    pub fn record(&mut self, i: usize, answer: Option<u16>) -> Option<bool> {
        let alive = matches!(answer, Some(s) if s >= 200 && s != 503);
        let up = self.up[i];
        if alive == up {
            self.run[i] = 0;
            return None;
        }
        self.run[i] += 1;
        let needed = if up {
            self.cfg.down_after
        } else {
            self.cfg.up_after
        };
        if self.run[i] >= needed {
            self.up[i] = !up;
            self.run[i] = 0;
            return Some(!up);
        }
        None
    }

    /// Current states.
    pub fn up(&self) -> &[bool] {
        &self.up
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_after_misses_up_after_answers() {
        let cfg = HealthConfig {
            down_after: 3,
            up_after: 2,
            ..HealthConfig::default()
        };
        let mut h = Health::new(cfg, 2);
        assert_eq!(h.record(0, None), None);
        assert_eq!(h.record(0, Some(200)), None, "an answer resets the run");
        assert_eq!(h.record(0, None), None);
        assert_eq!(h.record(0, None), None);
        assert_eq!(h.record(0, None), Some(false));
        assert_eq!(h.up(), &[false, true]);
        assert_eq!(h.record(0, Some(503)), None, "503 is not alive");
        assert_eq!(h.record(0, Some(404)), None);
        assert_eq!(h.record(0, Some(200)), Some(true));
        assert_eq!(
            h.record(1, Some(100)),
            None,
            "a provisional answer is not final"
        );
        assert!(
            HealthConfig {
                timeout_ms: 2000,
                ..cfg
            }
            .validate()
            .is_err()
        );
    }
}
