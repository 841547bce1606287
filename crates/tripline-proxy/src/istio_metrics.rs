//! Istio's standard metrics (`--istio-metrics`), from the same counters as Tripline's own, so
//! that Istio's dashboards and the queries people already run (the brief's
//! `istio_requests_total{response_code=~"5.."}`) work unchanged:
//!
//! - `istio_requests_total`: every response a cluster's clients got, by `response_code` and
//!   `response_flags` (Envoy's, `-` for an upstream's answer; Tripline's own answers carry
//!   theirs: `UO` for a breaker or a full pool, `UH`, `NR`, ...);
//! - `istio_request_duration_milliseconds`: the attempts' durations (Tripline's histogram in
//!   milliseconds, so its buckets are Tripline's: 0.5 ms to 10 s; no `response_code` label);
//! - `istio_tcp_connections_opened_total`, `_closed_total`, `istio_tcp_sent_bytes_total`
//!   (to the client), `istio_tcp_received_bytes_total` (from it), for TCP clusters.
//!
//! Labels: `reporter` (`source` for outbound and gateway clusters, `destination` for a
//! sidecar's inbound ones), `source_workload` and `source_workload_namespace` (this proxy's
//! workload: its `app` label and namespace), `destination_service` (the cluster's host),
//! `destination_service_name` and `destination_service_namespace` (a Kubernetes service's
//! name and namespace, else the host and `unknown`), `destination_workload` (`unknown`: a
//! client proxy does not know it), `request_protocol` (`http` or `tcp`: gRPC calls are not
//! told apart from other HTTP/2 requests yet). Series exist per cluster with traffic and per
//! code that occurred, as Istio's do.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use crate::cluster::Cluster;
use crate::reason::{envoy_flag, Reason};

/// This proxy's workload, as the `source_*` labels name it.
#[derive(Debug, Clone)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
}

pub(crate) struct IstioScrape {
    pub clusters: Vec<Arc<Cluster>>,
    pub workload: Workload,
}

impl std::fmt::Debug for IstioScrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IstioScrape").field("clusters", &self.clusters.len()).finish()
    }
}

/// The labels of one cluster's series.
struct Labels {
    pairs: Vec<(&'static str, String)>,
}

impl Labels {
    fn of(c: &Cluster, w: &Workload) -> Labels {
        let host = c.plan.host.clone();
        let (name, namespace) = match host.strip_suffix(".svc.cluster.local").and_then(|r| r.split_once('.'))
        {
            Some((n, ns)) => (n.to_string(), ns.to_string()),
            None => (host.clone(), "unknown".to_string()),
        };
        let reporter = if c.name().starts_with("inbound|") { "destination" } else { "source" };
        let protocol = match c.plan.protocol {
            tripline_config::plan::UpstreamProtocol::Tcp => "tcp",
            _ => "http",
        };
        Labels {
            pairs: vec![
                ("reporter", reporter.into()),
                ("source_workload", w.name.clone()),
                ("source_workload_namespace", w.namespace.clone()),
                ("destination_service", host),
                ("destination_service_name", name),
                ("destination_service_namespace", namespace),
                ("destination_workload", "unknown".into()),
                ("request_protocol", protocol.into()),
            ],
        }
    }

    fn with<'a>(&'a self, more: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
        self.pairs.iter().chain(more).map(|(k, v)| (*k, v.as_str())).collect()
    }
}

impl Collector for IstioScrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let live: Vec<(&Arc<Cluster>, Labels)> =
            self.clusters.iter().map(|c| (c, Labels::of(c, &self.workload))).collect();
        {
            let mut m = enc.encode_descriptor(
                "istio_requests",
                "Requests by response code and flags (Istio's standard metric).",
                None,
                MetricType::Counter,
            )?;
            for (c, labels) in &live {
                let stats = &c.state.stats;
                for (code, n) in stats.codes.nonzero() {
                    let more = [("response_code", code.to_string()), ("response_flags", "-".to_string())];
                    m.encode_family(&labels.with(&more))?.encode_counter::<NoLabelSet, _, u64>(&n, None)?;
                }
                for reason in Reason::ALL {
                    let n = stats.local.get(reason);
                    if n > 0 {
                        let more = [
                            ("response_code", reason.status().as_u16().to_string()),
                            ("response_flags", envoy_flag(reason.as_str()).unwrap_or("-").to_string()),
                        ];
                        m.encode_family(&labels.with(&more))?
                            .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
                    }
                }
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "istio_request_duration_milliseconds",
                "Request durations in milliseconds, retries included (Istio's standard metric).",
                None,
                MetricType::Histogram,
            )?;
            for (c, labels) in &live {
                let (sum, count, buckets) = c.state.stats.request_duration.snapshot();
                if count == 0 {
                    continue;
                }
                let ms: Vec<(f64, u64)> = buckets.into_iter().map(|(le, n)| (le * 1e3, n)).collect();
                m.encode_family(&labels.with(&[]))?.encode_histogram::<NoLabelSet>(
                    sum * 1e3,
                    count,
                    &ms,
                    None,
                )?;
            }
        }
        let tcp: Vec<_> =
            live.iter().filter(|(c, _)| c.state.stats.tcp.opened.load(Ordering::Relaxed) > 0).collect();
        for (name, help, read) in [
            ("istio_tcp_connections_opened", "TCP connections opened (Istio's standard metric).", 0),
            ("istio_tcp_connections_closed", "TCP connections closed (Istio's standard metric).", 1),
            (
                "istio_tcp_sent_bytes",
                "Bytes sent to the client of a TCP connection (Istio's standard metric).",
                2,
            ),
            (
                "istio_tcp_received_bytes",
                "Bytes received from the client of a TCP connection (Istio's standard metric).",
                3,
            ),
        ] {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (c, labels) in &tcp {
                let t = &c.state.stats.tcp;
                let v = [&t.opened, &t.closed, &t.sent, &t.received][read].load(Ordering::Relaxed);
                m.encode_family(&labels.with(&[]))?.encode_counter::<NoLabelSet, _, u64>(&v, None)?;
            }
        }
        Ok(())
    }
}
