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
async fn ring_hash_is_sticky_and_stable_when_an_endpoint_leaves() {
    sticky_and_stable_when_an_endpoint_leaves("ringHash: {minimumRingSize: 1024}", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maglev_is_sticky_and_stable_when_an_endpoint_leaves() {
    // Maglev keeps most keys, not all: the table is refilled, and a few slots change hands.
    sticky_and_stable_when_an_endpoint_leaves("maglev: {tableSize: 65537}", 10).await;
}

/// 120 keys over three endpoints with the `algorithm` given; endpoint c leaves by a reload.
/// Of the keys not on c, at most `moved_percent`% may move.
async fn sticky_and_stable_when_an_endpoint_leaves(algorithm: &str, moved_percent: usize) {
    let ups = [Upstream::http("a").await, Upstream::http("b").await, Upstream::http("c").await];
    let placed = placement_across_reload(algorithm, &ups, &ups[..2]).await;
    let (mut kept, mut moved) = (0, Vec::new());
    for (key, old, new) in &placed {
        assert_ne!(new, "c", "key {key} still sent to the removed endpoint");
        if old != "c" {
            kept += 1;
            if old != new {
                moved.push(format!("{key}: {old} -> {new}"));
            }
        }
    }
    assert!(
        moved.len() * 100 <= kept * moved_percent,
        "{} of the {kept} keys not on the removed endpoint moved: {moved:?}",
        moved.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_moves_keys_only_to_an_added_endpoint() {
    keys_move_only_to_an_added_endpoint("ringHash: {minimumRingSize: 1024}", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maglev_moves_keys_mostly_to_an_added_endpoint() {
    // As when an endpoint leaves, Maglev's refilled table hands a few slots between the others.
    keys_move_only_to_an_added_endpoint("maglev: {tableSize: 65537}", 10).await;
}

/// 120 keys over three endpoints with the `algorithm` given; endpoint d joins by a reload. A
/// key stays where it was or moves to d; at most `moved_percent`% move between the old three
/// (a hash taken modulo the endpoint count would move most of them). d gets its share.
async fn keys_move_only_to_an_added_endpoint(algorithm: &str, moved_percent: usize) {
    let ups = [
        Upstream::http("a").await,
        Upstream::http("b").await,
        Upstream::http("c").await,
        Upstream::http("d").await,
    ];
    let placed = placement_across_reload(algorithm, &ups[..3], &ups).await;
    let to_new = placed.iter().filter(|(_, old, new)| old != new && new == "d").count();
    let between_old: Vec<String> = placed
        .iter()
        .filter(|(_, old, new)| old != new && new != "d")
        .map(|(key, old, new)| format!("{key}: {old} -> {new}"))
        .collect();
    assert!(
        between_old.len() * 100 <= placed.len() * moved_percent,
        "{} of {} keys moved between the endpoints that were already there: {between_old:?}",
        between_old.len(),
        placed.len()
    );
    // A quarter (30) on average; the new endpoint must take a real share, not all or none.
    assert!((10..=60).contains(&to_new), "{to_new} of {} keys moved to the added endpoint", placed.len());
}

/// Starts the proxy with consistent hashing on `x-user` (`algorithm`) over `before`, places
/// 120 keys (each sticky), reloads to `after` and places them again: (key, old id, new id).
/// Every `before` endpoint must get some keys.
async fn placement_across_reload(
    algorithm: &str,
    before: &[Upstream],
    after: &[Upstream],
) -> Vec<(String, String, String)> {
    let port = free_port();
    let tp = format!(
        "    loadBalancer:\n      consistentHash:\n        httpHeaderName: x-user\n        {algorithm}\n"
    );
    let eps = |ups: &[Upstream]| ups.iter().map(|u| u.addr).collect::<Vec<SocketAddr>>();
    let proxy = Proxy::start(&config::simple(port, "HTTP", &eps(before), Some(&tp))).await;

    let keys: Vec<String> = (0..120).map(|i| format!("user-{i}")).collect();
    let mut conn = Conn::connect(addr(port), Proto::H1).await.unwrap();
    let old = placement(&mut conn, &keys).await;
    let mut used: Vec<&String> = old.values().collect();
    used.sort();
    used.dedup();
    assert_eq!(used.len(), before.len(), "120 keys hashed only to {used:?}");

    let reloads = proxy.metric("tripline_config_reloads_total", &[("result", "success")]).await;
    proxy.write_config(&config::simple(port, "HTTP", &eps(after), Some(&tp)));
    proxy.wait_reload("success", reloads, Duration::from_secs(5)).await;

    let mut conn = Conn::connect(addr(port), Proto::H1).await.unwrap();
    let mut new = placement(&mut conn, &keys).await;
    keys.into_iter()
        .map(|key| {
            let (o, n) = (old[&key].clone(), new.remove(&key).unwrap());
            (key, o, n)
        })
        .collect()
}

/// `httpCookie` with `ttl`: a client without the cookie gets one on its first response, and
/// sending it back keeps it on that endpoint. Requests of one connection that race before the
/// cookie arrives get the same cookie; new connections get different ones and spread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_cookie_makes_a_client_sticky_from_its_first_request() {
    let ups = [Upstream::http("a").await, Upstream::http("b").await, Upstream::http("c").await];
    let port = free_port();
    let tp =
        "    loadBalancer:\n      consistentHash:\n        httpCookie: {name: route, ttl: 1h, path: /}\n";
    let eps: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let _proxy = Proxy::start(&config::simple(port, "HTTP", &eps, Some(tp))).await;

    let mut first_endpoints = Vec::new();
    for client in 0..12 {
        // Each client on its own connection; HTTP/2 for half of them.
        let proto = if client % 2 == 0 { Proto::H1 } else { Proto::H2 };
        let mut conn = Conn::connect(addr(port), proto).await.unwrap();
        let first = conn.get("backend.local", &format!("/new/{client}")).await.unwrap();
        assert_eq!(first.status, 200);
        let set_cookie = first.header("set-cookie").expect("a Set-Cookie for a client without the cookie");
        assert!(set_cookie.ends_with("; Max-Age=3600; Path=/; HttpOnly"), "{set_cookie}");
        let cookie = set_cookie.split(';').next().unwrap().to_string();
        assert!(cookie.starts_with("route="), "{set_cookie}");
        let endpoint = first.upstream().unwrap().to_owned();

        // A second request sent before the cookie was stored: same cookie, same endpoint.
        let racing = conn.get("backend.local", &format!("/new/{client}/again")).await.unwrap();
        assert_eq!(racing.header("set-cookie"), Some(set_cookie), "client {client}");
        assert_eq!(racing.upstream(), Some(endpoint.as_str()), "client {client}");

        for i in 0..3 {
            let path = format!("/back/{client}/{i}");
            let r = conn.get_with("backend.local", &path, &[("cookie", &cookie)]).await.unwrap();
            assert_eq!(r.upstream(), Some(endpoint.as_str()), "client {client} with {cookie} moved");
            assert_eq!(r.header("set-cookie"), None, "a client that has the cookie gets no new one");
        }
        first_endpoints.push(endpoint);
    }
    first_endpoints.sort();
    first_endpoints.dedup();
    assert!(first_endpoints.len() >= 2, "12 new clients all went to {first_endpoints:?}");
}

/// A browser's first page load: eight requests at once on one new HTTP/2 connection, none with
/// the cookie. They must all get one cookie and one endpoint; random values per request would
/// scatter them and leave the browser with whichever cookie it stored last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_on_one_connection_get_one_cookie() {
    let ups = [Upstream::http("a").await, Upstream::http("b").await, Upstream::http("c").await];
    let port = free_port();
    let tp = "    loadBalancer:\n      consistentHash:\n        httpCookie: {name: route, ttl: 0s}\n";
    let eps: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let _proxy = Proxy::start(&config::simple(port, "HTTP", &eps, Some(tp))).await;

    let conn = Conn::connect(addr(port), Proto::H2).await.unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let mut c = conn.clone_h2();
            tokio::spawn(async move {
                c.get("backend.local", &format!("/asset/{i}")).await.map_err(|e| e.to_string())
            })
        })
        .collect();
    let mut seen = Vec::new();
    for t in tasks {
        let r = t.await.unwrap().expect("request");
        assert_eq!(r.status, 200);
        let cookie = r.header("set-cookie").expect("each cookie-less request gets the cookie").to_owned();
        assert!(
            cookie.ends_with("; HttpOnly") && !cookie.contains("Max-Age"),
            "ttl 0s: a session cookie: {cookie}"
        );
        seen.push((cookie, r.upstream().unwrap().to_owned()));
    }
    seen.dedup();
    assert_eq!(seen.len(), 1, "one connection's first requests got different cookies or endpoints: {seen:?}");
}
