//! `resolution: DNS` clusters: names are resolved when the config is applied and then every
//! `refresh` interval. Each name keeps its last good answer: a lookup that fails or finds
//! nothing leaves that name's endpoints in place, so a DNS outage (of every name or of one of
//! several) never takes endpoints away from a cluster that was working.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tripline_config::plan::{ClusterPlan, Discovery, DnsTarget};

use crate::cluster::Cluster;
use crate::{lock, Shared};

/// The last good answer of each name, by cluster, host name and port.
pub type LastAnswers = HashMap<(String, String, u16), Vec<SocketAddr>>;

/// Resolves a DNS cluster's names once; `false` when no name has an answer, this time or
/// before (the set is then unchanged).
pub async fn resolve_now(shared: &Shared, cluster: &Cluster) -> bool {
    let Discovery::Dns { targets, .. } = &cluster.plan.discovery else {
        return true;
    };
    let mut answers = Vec::with_capacity(targets.len());
    for t in targets {
        let answer = match tokio::net::lookup_host((t.hostname.as_str(), t.port)).await {
            Ok(found) => Some(found.collect::<Vec<_>>()).filter(|a| !a.is_empty()),
            Err(e) => {
                tracing::warn!(cluster = %cluster.name(), host = %t.hostname, error = %e, "DNS resolution failed; keeping the last answer");
                None
            }
        };
        answers.push(answer);
    }
    let addrs = merge(cluster.name(), targets, answers, &mut lock(&shared.dns_answers));
    if addrs.is_empty() {
        return false;
    }
    cluster.set_addresses(addrs);
    true
}

/// The endpoint set from this round's answers (`None`: the lookup failed or found nothing),
/// each name falling back to its last good answer in `last`, which keeps the good ones.
/// An address found under several names counts once, with the first name's weight and labels.
fn merge(
    cluster: &str,
    targets: &[DnsTarget],
    answers: Vec<Option<Vec<SocketAddr>>>,
    last: &mut LastAnswers,
) -> Vec<(SocketAddr, u32, BTreeMap<String, String>)> {
    let mut addrs: Vec<(SocketAddr, u32, BTreeMap<String, String>)> = Vec::new();
    for (t, answer) in targets.iter().zip(answers) {
        let key = (cluster.to_owned(), t.hostname.clone(), t.port);
        let found = match answer {
            Some(found) => last.entry(key).insert_entry(found).into_mut(),
            None => match last.get_mut(&key) {
                Some(kept) => kept,
                None => continue,
            },
        };
        for &a in found.iter() {
            if !addrs.iter().any(|(x, _, _)| *x == a) {
                addrs.push((a, t.weight, t.labels.clone()));
            }
        }
    }
    addrs
}

/// Forgets the answers of names that no cluster of the config in force resolves, so the map
/// does not grow with every reload, and a name that comes back later starts afresh.
pub fn forget_unused(last: &mut LastAnswers, plans: &[ClusterPlan]) {
    last.retain(|(cluster, host, port), _| {
        plans.iter().any(|p| {
            p.name == *cluster
                && matches!(&p.discovery, Discovery::Dns { targets, .. }
                    if targets.iter().any(|t| t.hostname == *host && t.port == *port))
        })
    });
}

/// Re-resolves until a newer config replaces this one.
pub fn spawn_refresh(shared: Arc<Shared>, cluster: Arc<Cluster>, generation: u64) {
    let Discovery::Dns { refresh, .. } = &cluster.plan.discovery else {
        return;
    };
    let refresh = *refresh;
    crate::cluster::remember_dns(&mut lock(&shared.dns_endpoints), &cluster);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(refresh).await;
            if shared.generation.load(Ordering::SeqCst) != generation {
                return;
            }
            if resolve_now(&shared, &cluster).await {
                crate::cluster::remember_dns(&mut lock(&shared.dns_endpoints), &cluster);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(host: &str, weight: u32) -> DnsTarget {
        DnsTarget { hostname: host.into(), port: 80, weight, labels: BTreeMap::new() }
    }

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, last], 80))
    }

    fn addresses(set: &[(SocketAddr, u32, BTreeMap<String, String>)]) -> Vec<SocketAddr> {
        set.iter().map(|(a, _, _)| *a).collect()
    }

    #[test]
    fn a_name_that_stops_resolving_keeps_its_last_answer() {
        let targets = [target("a.svc", 1), target("b.svc", 2)];
        let mut last = LastAnswers::new();
        let first = merge("c", &targets, vec![Some(vec![addr(1)]), Some(vec![addr(2), addr(3)])], &mut last);
        assert_eq!(addresses(&first), [addr(1), addr(2), addr(3)]);
        assert_eq!(first[1].1, 2, "an address carries its name's weight");
        // b.svc fails: its endpoints stay while a.svc's answer moves on.
        let second = merge("c", &targets, vec![Some(vec![addr(4)]), None], &mut last);
        assert_eq!(addresses(&second), [addr(4), addr(2), addr(3)]);
        // Both fail: everything last known stays.
        let third = merge("c", &targets, vec![None, None], &mut last);
        assert_eq!(addresses(&third), [addr(4), addr(2), addr(3)]);
        // b.svc answers again: its new answer replaces the kept one.
        let fourth = merge("c", &targets, vec![None, Some(vec![addr(5)])], &mut last);
        assert_eq!(addresses(&fourth), [addr(4), addr(5)]);
    }

    #[test]
    fn nothing_known_yet_gives_an_empty_set() {
        let mut last = LastAnswers::new();
        assert!(merge("c", &[target("a.svc", 1)], vec![None], &mut last).is_empty());
        // Another cluster's answer for the same name is not borrowed.
        merge("other", &[target("a.svc", 1)], vec![Some(vec![addr(1)])], &mut last);
        assert!(merge("c", &[target("a.svc", 1)], vec![None], &mut last).is_empty());
    }

    #[test]
    fn answers_of_names_no_longer_configured_are_forgotten() {
        use tripline_config::plan::{LoadBalancer, PoolLimits, UpstreamProtocol};
        let plan = |targets: Vec<DnsTarget>| ClusterPlan {
            name: "c".into(),
            host: "svc".into(),
            port: 80,
            subset: None,
            protocol: UpstreamProtocol::Http1,
            discovery: Discovery::Dns { targets, refresh: std::time::Duration::from_secs(30) },
            load_balancer: LoadBalancer::RoundRobin,
            pool: PoolLimits::default(),
            resilience: Default::default(),
            tls: None,
        };
        let mut last = LastAnswers::new();
        let both = [target("a.svc", 1), target("b.svc", 1)];
        merge("c", &both, vec![Some(vec![addr(1)]), Some(vec![addr(2)])], &mut last);
        forget_unused(&mut last, &[plan(both.to_vec())]);
        assert_eq!(last.len(), 2);
        forget_unused(&mut last, &[plan(vec![target("a.svc", 1)])]);
        assert_eq!(last.keys().map(|(_, h, _)| h.as_str()).collect::<Vec<_>>(), ["a.svc"]);
        forget_unused(&mut last, &[]);
        assert!(last.is_empty());
    }

    #[test]
    fn an_address_under_two_names_counts_once() {
        let targets = [target("a.svc", 1), target("b.svc", 5)];
        let mut last = LastAnswers::new();
        let set = merge("c", &targets, vec![Some(vec![addr(1)]), Some(vec![addr(1), addr(2)])], &mut last);
        assert_eq!(addresses(&set), [addr(1), addr(2)]);
        assert_eq!(set[0].1, 1);
    }
}
