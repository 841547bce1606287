//! `resolution: DNS` clusters: names are resolved when the config is applied and then every
//! `refresh` interval. A failed or empty answer keeps the last good endpoint set, so a DNS
//! outage never empties a cluster that was working.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tripline_config::plan::Discovery;

use crate::cluster::Cluster;
use crate::{lock, Shared};

/// Resolves a DNS cluster's names once; `false` when nothing resolved (the set is unchanged).
pub async fn resolve_now(cluster: &Cluster) -> bool {
    let Discovery::Dns { targets, .. } = &cluster.plan.discovery else {
        return true;
    };
    let mut addrs = Vec::new();
    for t in targets {
        match tokio::net::lookup_host((t.hostname.as_str(), t.port)).await {
            Ok(found) => {
                let found: Vec<SocketAddr> = found.collect();
                for a in found {
                    if !addrs.iter().any(|(x, _, _)| *x == a) {
                        addrs.push((a, t.weight, t.labels.clone()));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(cluster = %cluster.name(), host = %t.hostname, error = %e, "DNS resolution failed; keeping the last answer")
            }
        }
    }
    if addrs.is_empty() {
        return false;
    }
    cluster.set_addresses(addrs);
    true
}

/// Re-resolves until a newer config replaces this one.
pub fn spawn_refresh(shared: Arc<Shared>, cluster: Arc<Cluster>, generation: u64) {
    let Discovery::Dns { refresh, .. } = &cluster.plan.discovery else {
        return;
    };
    let refresh = *refresh;
    lock(&shared.registry).remember_dns(&cluster);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(refresh).await;
            if shared.generation.load(Ordering::SeqCst) != generation {
                return;
            }
            if resolve_now(&cluster).await {
                lock(&shared.registry).remember_dns(&cluster);
            }
        }
    });
}
