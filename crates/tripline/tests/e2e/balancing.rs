//! Load balancing: ROUND_ROBIN, LEAST_REQUEST, consistent hash (stable across a reload).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::support::config;
use crate::support::{free_port, Conn, Proto, Proxy, Upstream};

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly() {
    let ups = [Upstream::http("a").await, Upstream::http("b").await, Upstream::http("c").await];
    let port = free_port();
    let eps: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let tp = "    loadBalancer: {simple: ROUND_ROBIN}\n";
    let _proxy = Proxy::start(&config::simple(port, "HTTP", &eps, Some(tp))).await;

    let mut conn = Conn::connect(addr(port), Proto::H1).await.unwrap();
    for i in 0..30 {
        let r = conn.get("backend.local", &format!("/rr/{i}")).await.unwrap();
        assert_eq!(r.status, 200);
    }
    let counts: Vec<usize> = ups.iter().map(|u| u.requests()).collect();
    assert_eq!(counts.iter().sum::<usize>(), 30);
    for (u, n) in ups.iter().zip(&counts) {
        assert!((9..=11).contains(n), "ROUND_ROBIN: upstream {} got {n} of 30 ({counts:?})", u.id());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_avoids_the_slow_upstream() {
    let fast1 = Upstream::http_delayed("fast1", Duration::from_millis(15)).await;
    let fast2 = Upstream::http_delayed("fast2", Duration::from_millis(15)).await;
    let slow = Upstream::http_delayed("slow", Duration::from_millis(400)).await;
    let port = free_port();
    let tp = "    loadBalancer: {simple: LEAST_REQUEST}\n";
    let _proxy =
        Proxy::start(&config::simple(port, "HTTP", &[fast1.addr, slow.addr, fast2.addr], Some(tp))).await;

    let mut tasks = Vec::new();
    for t in 0..8 {
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(addr(port), Proto::H1).await.map_err(|e| e.to_string())?;
            for i in 0..12 {
                let r =
                    conn.get("backend.local", &format!("/lr/{t}/{i}")).await.map_err(|e| e.to_string())?;
                if r.status != 200 {
                    return Err(format!("status {}", r.status));
                }
            }
            Ok::<_, String>(())
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("client loop");
    }
    let (f1, f2, s) = (fast1.requests(), fast2.requests(), slow.requests());
    assert_eq!(f1 + f2 + s, 96);
    assert!(
        s * 2 < f1.min(f2),
        "LEAST_REQUEST should starve the slow upstream: fast1={f1} fast2={f2} slow={s} (round robin would give 32 each)"
    );
}

async fn placement(conn: &mut Conn, keys: &[String]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for key in keys {
        let mut seen = None;
        for _ in 0..3 {
            let r = conn.get_with("backend.local", "/hash", &[("x-user", key)]).await.unwrap();
            assert_eq!(r.status, 200);
            let id = r.upstream().unwrap().to_owned();
            if let Some(prev) = &seen {
                assert_eq!(prev, &id, "key {key} moved between endpoints without a config change");
            }
            seen = Some(id);
        }
        out.insert(key.clone(), seen.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_is_sticky_and_stable_when_an_endpoint_leaves() {
    let ups = [Upstream::http("a").await, Upstream::http("b").await, Upstream::http("c").await];
    let port = free_port();
    let tp = "    loadBalancer:\n      consistentHash:\n        httpHeaderName: x-user\n        ringHash: {minimumRingSize: 1024}\n";
    let eps: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let proxy = Proxy::start(&config::simple(port, "HTTP", &eps, Some(tp))).await;

    let keys: Vec<String> = (0..40).map(|i| format!("user-{i}")).collect();
    let mut conn = Conn::connect(addr(port), Proto::H1).await.unwrap();
    let before = placement(&mut conn, &keys).await;
    let mut used: Vec<&String> = before.values().collect();
    used.sort();
    used.dedup();
    assert!(used.len() >= 2, "40 keys all hashed to {used:?}");

    // Remove endpoint c.
    let reloads = proxy.metric("tripline_config_reloads_total", &[("result", "success")]).await;
    proxy.write_config(&config::simple(port, "HTTP", &eps[..2], Some(tp)));
    proxy.wait_reload("success", reloads, Duration::from_secs(5)).await;

    let mut conn = Conn::connect(addr(port), Proto::H1).await.unwrap();
    let after = placement(&mut conn, &keys).await;
    let mut moved = Vec::new();
    for key in &keys {
        let (old, new) = (&before[key], &after[key]);
        assert_ne!(new, "c", "key {key} still sent to the removed endpoint");
        if old != "c" && old != new {
            moved.push(format!("{key}: {old} -> {new}"));
        }
    }
    assert!(moved.is_empty(), "keys not on the removed endpoint moved: {moved:?}");
}
