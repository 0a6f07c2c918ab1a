//! The call flows the generator plays, and their mix.

/// A call flow of the mix.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// INVITE, answer, hold time, BYE.
    Basic,
    /// A basic call with re-INVITE hold and resume.
    Hold,
    /// Blind transfer (REFER, NOTIFY, the transferee calls the target).
    Blind,
    /// Attended transfer (REFER with Replaces).
    Attended,
}

impl Scenario {
    const ALL: [Scenario; 4] = [
        Scenario::Basic,
        Scenario::Hold,
        Scenario::Blind,
        Scenario::Attended,
    ];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Basic => "basic",
            Self::Hold => "hold",
            Self::Blind => "blind",
            Self::Attended => "attended",
        }
    }

    /// The user the caller calls (the callee's behaviour).
    pub(crate) fn callee(self) -> &'static str {
        match self {
            Self::Basic | Self::Hold => "b",
            Self::Blind => "xb",
            Self::Attended => "ab",
        }
    }
}

/// Weights of the scenarios, e.g. `basic=70,hold=10,blind=10,attended=10`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix(Vec<(Scenario, u32)>);

impl Default for Mix {
    fn default() -> Self {
        Self(vec![(Scenario::Basic, 1)])
    }
}

impl core::str::FromStr for Mix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut v = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, w) = part.split_once('=').unwrap_or((part, "1"));
            let sc = Scenario::ALL
                .into_iter()
                .find(|x| x.name() == name)
                .ok_or_else(|| {
                    format!("scenario `{name}` is not one of: basic, hold, blind, attended")
                })?;
            let w: u32 = w
                .parse()
                .map_err(|_| format!("weight `{w}` of `{name}` is not a whole number"))?;
            if w > 0 {
                v.push((sc, w));
            }
        }
        if v.is_empty() {
            return Err("the mix has no scenario with a weight above 0".into());
        }
        Ok(Self(v))
    }
}

impl Mix {
    /// Whether it plays transfers (whose parties must share one engine).
    pub fn has_transfers(&self) -> bool {
        self.0
            .iter()
            .any(|(s, _)| matches!(s, Scenario::Blind | Scenario::Attended))
    }

    /// The scenario of call number `n`: weights respected over any run of
    /// calls, interleaved rather than in blocks.
    pub fn pick(&self, n: u64) -> Scenario {
        let total: u64 = self.0.iter().map(|(_, w)| u64::from(*w)).sum();
        // A low-discrepancy walk (golden ratio) spreads each scenario out.
        let mut at = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) % total;
        for (s, w) in &self.0 {
            if at < u64::from(*w) {
                return *s;
            }
            at -= u64::from(*w);
        }
        self.0[0].0
    }
}
