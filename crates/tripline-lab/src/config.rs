//! The policy every scenario runs Tripline with, written as users write it: Istio's Gateway,
//! ServiceEntry, VirtualService and DestinationRule, Tripline's ResiliencePolicy for the
//! breaker, and a Linkerd ServiceProfile for a retry budget by rate. One policy for every
//! scenario, as an operator has one: a scenario that needed its own tuning to pass would
//! prove nothing.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use crate::proxy::HOST;

/// The knobs the checks need to know.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// Outlier detection's base ejection time (the n-th ejection lasts n times it)...
    pub base_ejection: Duration,
    /// ...up to this.
    pub max_ejection: Duration,
    /// The most endpoints ejected at once, in percent.
    pub max_ejection_percent: u32,
    /// Retries at most this share of the requests...
    pub retry_ratio: f64,
    /// ...plus this many a second.
    pub min_retries_per_second: u32,
    /// Probes at once to an endpoint whose ejection time is over.
    pub probe_concurrency: u32,
}

pub const POLICY: Policy = Policy {
    base_ejection: Duration::from_secs(2),
    max_ejection: Duration::from_secs(6),
    max_ejection_percent: 30,
    retry_ratio: 0.2,
    min_retries_per_second: 5,
    probe_concurrency: 1,
};

impl Policy {
    /// The most endpoints of `n` that may be ejected at once (Tripline's default rounding,
    /// `AT_LEAST_ONE`: the percentage rounded down, but at least one).
    pub fn ejection_cap(&self, n: usize) -> usize {
        (n * self.max_ejection_percent as usize / 100).max(1)
    }

    /// Tripline's config for `endpoints`; `{LISTEN_PORT}` is filled in at start.
    pub fn yaml(&self, endpoints: &[SocketAddr]) -> String {
        let mut eps = String::new();
        for e in endpoints {
            let _ = writeln!(eps, "  - address: {}\n    ports: {{http: {}}}", e.ip(), e.port());
        }
        format!(
            "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: lab}}
spec:
  servers:
  - port: {{number: {{LISTEN_PORT}}, name: http, protocol: HTTP}}
    bind: 127.0.0.1
    hosts: [\"*\"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: lab}}
spec:
  hosts: [{HOST}]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
{eps}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: lab}}
spec:
  hosts: [\"*\"]
  gateways: [lab]
  http:
  - name: all
    route:
    - destination: {{host: {HOST}, port: {{number: 80}}}}
    timeout: 3s
    retries: {{attempts: 2, perTryTimeout: 1s, retryOn: \"5xx,reset,connect-failure\"}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: lab}}
spec:
  host: {HOST}
  trafficPolicy:
    loadBalancer: {{simple: LEAST_REQUEST}}
    outlierDetection:
      consecutive5xxErrors: 5
      interval: 1s
      baseEjectionTime: {ejection}ms
      maxEjectionPercent: {pct}
---
apiVersion: tripline.dev/v1alpha1
kind: ResiliencePolicy
metadata: {{name: lab}}
spec:
  target: {{host: {HOST}}}
  circuitBreaker:
    consecutiveFailures: 0
    failureRatio: {{threshold: 0.5, minimumRequests: 20}}
    window: 2s
    openDuration: 1s
    openDurationMultiplier: 1.5
    maxOpenDuration: 4s
    halfOpen: {{maxProbes: 3, successRatio: 0.6}}
  outlierDetection:
    maxEjectionTime: {max_ejection}ms
    probe: {{concurrency: {probes}, successes: 1}}
---
apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata: {{name: {HOST}}}
spec:
  retryBudget: {{retryRatio: {ratio}, minRetriesPerSecond: {min}, ttl: 1s}}
",
            ejection = self.base_ejection.as_millis(),
            pct = self.max_ejection_percent,
            max_ejection = self.max_ejection.as_millis(),
            probes = self.probe_concurrency,
            ratio = self.retry_ratio,
            min = self.min_retries_per_second,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_rounds_down_but_leaves_one() {
        assert_eq!([1, 5, 10, 100].map(|n| POLICY.ejection_cap(n)), [1, 1, 3, 30]);
    }

    /// Every field is one Tripline applies: a warning would mean a scenario runs a weaker
    /// policy than it says.
    #[test]
    fn tripline_takes_the_policy_without_a_warning() {
        let eps: Vec<SocketAddr> = (0..3).map(|i| SocketAddr::from(([127, 0, 0, 1], 9000 + i))).collect();
        let text = POLICY.yaml(&eps).replace("{LISTEN_PORT}", "8080");
        let source = tripline_config::Source { name: "lab".into(), text };
        let loaded = tripline_config::load(&[source], &Default::default())
            .unwrap_or_else(|e| panic!("the lab's policy is refused: {e:?}"));
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let cluster = loaded.plan.clusters.iter().find(|c| c.host == HOST).expect("the lab's cluster");
        assert_eq!(cluster.name, crate::proxy::CLUSTER);
    }
}
