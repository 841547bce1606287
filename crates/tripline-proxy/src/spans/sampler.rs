//! Which requests are traced: OpenTelemetry's samplers, by the names its SDKs read from
//! `OTEL_TRACES_SAMPLER` (`always_on`, `always_off`, `traceidratio`, and the `parentbased_*`
//! forms, the default being `parentbased_always_on`), with `OTEL_TRACES_SAMPLER_ARG` as the
//! ratio.
//!
//! The ratio decides from the trace id as OpenTelemetry's `TraceIdRatioBased` does (its low
//! 64 bits against the ratio of 2^63), so every hop that samples by ratio keeps or drops the
//! same traces, and the decision costs no random draw. Parent-based: a caller's decision
//! stands; the ratio decides only for a request that starts its trace here (or whose caller
//! left the decision open, as B3 may).

/// A sampler, decided per request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    /// Follow the caller's decision when it made one.
    pub parent_based: bool,
    pub root: Root,
}

/// How a trace that starts here is decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Root {
    AlwaysOn,
    AlwaysOff,
    /// The share of traces kept, 0 to 1.
    Ratio(f64),
}

impl Default for Sampler {
    /// OpenTelemetry's default: `parentbased_always_on`.
    fn default() -> Self {
        Sampler { parent_based: true, root: Root::AlwaysOn }
    }
}

impl Sampler {
    /// `parentbased_traceidratio` with this ratio.
    pub fn ratio(ratio: f64) -> Sampler {
        Sampler { parent_based: true, root: Root::Ratio(ratio.clamp(0.0, 1.0)) }
    }

    /// A sampler by its OpenTelemetry name and argument (`OTEL_TRACES_SAMPLER`,
    /// `OTEL_TRACES_SAMPLER_ARG`; the ratio defaults to 1, as the SDKs' does).
    pub fn parse(name: &str, arg: Option<&str>) -> Result<Sampler, String> {
        let ratio = || -> Result<f64, String> {
            match arg {
                None => Ok(1.0),
                Some(a) => match a.trim().parse::<f64>() {
                    Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                    _ => {
                        Err(format!("sampler argument `{a}`: a ratio from 0 to 1 (0.01 keeps 1% of traces)"))
                    }
                },
            }
        };
        let (parent_based, root) = match name.trim() {
            "always_on" => (false, Root::AlwaysOn),
            "always_off" => (false, Root::AlwaysOff),
            "traceidratio" => (false, Root::Ratio(ratio()?)),
            "parentbased_always_on" => (true, Root::AlwaysOn),
            "parentbased_always_off" => (true, Root::AlwaysOff),
            "parentbased_traceidratio" => (true, Root::Ratio(ratio()?)),
            other => {
                return Err(format!(
                    "sampler `{other}`: use always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
                ))
            }
        };
        Ok(Sampler { parent_based, root })
    }

    /// Whether a request of trace `trace` is recorded; `parent` is its caller's decision.
    pub fn sample(&self, parent: Option<bool>, trace: u128) -> bool {
        match (self.parent_based, parent) {
            (true, Some(decided)) => decided,
            _ => match self.root {
                Root::AlwaysOn => true,
                Root::AlwaysOff => false,
                Root::Ratio(r) => by_ratio(r, trace),
            },
        }
    }
}

/// OpenTelemetry's `TraceIdRatioBased`: the trace id's low 64 bits, halved, below
/// `ratio × 2^63`.
fn by_ratio(ratio: f64, trace: u128) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let bound = (ratio * (1u64 << 63) as f64) as u64;
    ((trace as u64) >> 1) < bound
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_are_opentelemetrys() {
        assert_eq!(Sampler::parse("parentbased_always_on", None).unwrap(), Sampler::default());
        assert_eq!(Sampler::parse("traceidratio", Some("0.25")).unwrap().root, Root::Ratio(0.25));
        assert!(!Sampler::parse("traceidratio", None).unwrap().parent_based);
        let err = Sampler::parse("traceidratio", Some("2")).unwrap_err();
        assert!(err.contains("from 0 to 1"), "{err}");
        let err = Sampler::parse("jaeger_remote", None).unwrap_err();
        assert!(err.contains("parentbased_traceidratio"), "{err}");
    }

    #[test]
    fn a_callers_decision_stands_when_parent_based() {
        let s = Sampler::ratio(0.0);
        assert!(s.sample(Some(true), 1));
        assert!(!Sampler::ratio(1.0).sample(Some(false), 1));
        assert!(!s.sample(None, u128::MAX), "no caller: the ratio decides");
        let root_only = Sampler::parse("always_off", None).unwrap();
        assert!(!root_only.sample(Some(true), 1), "not parent-based: the caller is not asked");
    }

    proptest! {
        /// Over many trace ids the kept share is the ratio (the ids are random: low bits
        /// uniform), and a trace kept at one ratio is kept at every higher one, so hops with
        /// different ratios keep nested sets of traces.
        #[test]
        fn the_kept_share_is_the_ratio(seed in any::<u64>(), ratio in 0.0f64..=1.0) {
            let rng = tripline_core::rng::SplitMix::seeded(seed);
            let s = Sampler { parent_based: false, root: Root::Ratio(ratio) };
            let n = 20_000;
            let mut kept = 0;
            for _ in 0..n {
                let id = (u128::from(tripline_core::rng::Rng::next_u64(&rng)) << 64)
                    | u128::from(tripline_core::rng::Rng::next_u64(&rng));
                if s.sample(None, id) {
                    kept += 1;
                    prop_assert!(by_ratio((ratio + 0.1).min(1.0), id));
                }
            }
            let share = f64::from(kept) / f64::from(n);
            prop_assert!((share - ratio).abs() < 0.02, "kept {share} at ratio {ratio}");
        }
    }
}
