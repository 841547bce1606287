//! The proxy under test, started as a child process with the scenario's policy: the real
//! `tripline` binary or a peer ([`crate::peers`]); and for Tripline a sampler that reads its
//! `/breakers` every bucket (breaker state, ejections) for the checks and plots.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::config::Policy;
use crate::peers::Kind;
use crate::timeline::{Epoch, BUCKET};

/// The host clients call and the cluster's name in the admin API.
pub const HOST: &str = "lab.local";
pub const CLUSTER: &str = "outbound|80||lab.local";

/// A proxy under test, running.
pub struct Running {
    child: Child,
    pub kind: Kind,
    pub listen: SocketAddr,
    /// Tripline's admin API (the peers' state is not read).
    pub admin: Option<SocketAddr>,
    pub log: PathBuf,
}

/// A loopback port free now (the child binds it a moment later).
fn free_port() -> Result<SocketAddr, String> {
    StdListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| format!("no free port: {e}"))
}

impl Running {
    /// Writes `kind`'s config for `policy` and `upstreams` to `dir`, starts `exe` on it and
    /// waits until it is ready; its output goes to `dir/<kind>.log`.
    pub async fn start(
        kind: Kind,
        exe: &Path,
        policy: &Policy,
        upstreams: &[SocketAddr],
        dir: &Path,
    ) -> Result<Self, String> {
        let listen = free_port()?;
        let (file, text, mut args, admin) = match kind {
            Kind::Tripline => {
                let admin = free_port()?;
                let mesh = free_port()?;
                let file = dir.join("tripline.yaml");
                let args = vec![
                    "run".to_string(),
                    "-c".into(),
                    file.display().to_string(),
                    "--admin".into(),
                    admin.to_string(),
                    "--mesh-bind".into(),
                    mesh.to_string(),
                    "--log-level".into(),
                    "warn".into(),
                ];
                let text = policy.yaml(upstreams).replace("{LISTEN_PORT}", &listen.port().to_string());
                (file, text, args, Some(admin))
            }
            peer => {
                let (name, text, args) = peer.config(policy, listen, upstreams, dir);
                (dir.join(name), text, args, None)
            }
        };
        std::fs::write(&file, text).map_err(|e| format!("writing {}: {e}", file.display()))?;
        let log = dir.join(format!("{}.log", kind.name()));
        let out = std::fs::File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(exe)
            .args(args.drain(..))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", exe.display()))?;
        let mut r = Running { child, kind, listen, admin, log };
        for _ in 0..200 {
            if let Ok(Some(status)) = r.child.try_wait() {
                return Err(format!(
                    "{} exited ({status}) before it was ready; see {}",
                    kind.name(),
                    r.log.display()
                ));
            }
            let admin_ready = match admin {
                Some(a) => admin_get(a, "/ready").await.is_ok(),
                None => true,
            };
            if admin_ready && TcpStream::connect(listen).await.is_ok() {
                return Ok(r);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("{} was not ready within 10 s; see {}", kind.name(), r.log.display()))
    }

    /// Stops the proxy (SIGKILL: the lab has what it needs by then).
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A GET on the admin API; the body when the status is 200.
pub async fn admin_get(admin: SocketAddr, path: &str) -> Result<String, String> {
    let stream = TcpStream::connect(admin).await.map_err(|e| e.to_string())?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    // The admin API answers only requests for its own address (DNS rebinding guard).
    let req = Request::get(path)
        .header("host", admin.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("{path}: {status}: {body}"))
    }
}

/// What `/breakers` said of the lab's cluster at one time.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub at: Duration,
    /// The destination breaker's state (`closed`, `open`, `half-open`), `none` without one.
    pub breaker: String,
    pub ejections_active: u64,
    pub ejection_cap: u64,
    /// Per endpoint, in the order of the scenario's upstreams: `healthy`, `ejected`,
    /// `probing`.
    pub health: Vec<String>,
    /// Per endpoint: how many times it has been ejected so far.
    pub times_ejected: Vec<u64>,
    /// Probes in flight, all endpoints together.
    pub probes_in_flight: u64,
}

/// Reads the cluster's part of a `/breakers` answer, its endpoints in the order of `addrs`.
pub fn parse_breakers(at: Duration, v: &Value, addrs: &[SocketAddr]) -> Option<Sample> {
    let c = v["clusters"].as_array()?.iter().find(|c| c["cluster"] == CLUSTER)?;
    let eps = c["endpoints"].as_array()?;
    let ep = |a: &SocketAddr| eps.iter().find(|e| e["address"] == a.to_string());
    let outlier = |a: &SocketAddr, key: &str| ep(a).map(|e| e["outlier"][key].clone()).unwrap_or(Value::Null);
    Some(Sample {
        at,
        breaker: c["breaker"]["state"].as_str().unwrap_or("none").to_string(),
        ejections_active: c["outlier"]["ejections_active"].as_u64().unwrap_or(0),
        ejection_cap: c["outlier"]["ejection_cap"].as_u64().unwrap_or(0),
        health: addrs
            .iter()
            .map(|a| outlier(a, "health").as_str().unwrap_or("healthy").to_string())
            .collect(),
        times_ejected: addrs.iter().map(|a| outlier(a, "times_ejected").as_u64().unwrap_or(0)).collect(),
        probes_in_flight: addrs.iter().map(|a| outlier(a, "probes_in_flight").as_u64().unwrap_or(0)).sum(),
    })
}

/// Samples `/breakers` every bucket until `length` has passed; returns the samples.
pub async fn sample(
    admin: SocketAddr,
    addrs: Vec<SocketAddr>,
    epoch: Epoch,
    length: Duration,
) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut tick = tokio::time::interval(BUCKET);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let at = epoch.elapsed();
        if at > length {
            break;
        }
        let Ok(body) = admin_get(admin, "/breakers").await else { continue };
        let Ok(v) = serde_json::from_str::<Value>(&body) else { continue };
        if let Some(s) = parse_breakers(at, &v, &addrs) {
            out.push(s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_breakers_answer_gives_the_cluster_s_state_in_upstream_order() {
        let a: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:1002".parse().unwrap();
        let v = serde_json::json!({"clusters": [
            {"cluster": "other", "breaker": {"state": "open"}},
            {"cluster": CLUSTER, "breaker": {"state": "half-open"},
             "outlier": {"ejections_active": 1, "ejection_cap": 2},
             "endpoints": [
                {"address": "127.0.0.1:1002", "outlier": {"health": "ejected", "times_ejected": 3, "probes_in_flight": 0}},
                {"address": "127.0.0.1:1001", "outlier": {"health": "probing", "times_ejected": 1, "probes_in_flight": 1}}]}]});
        let s = parse_breakers(Duration::from_secs(1), &v, &[a, b]).unwrap();
        assert_eq!(s.breaker, "half-open");
        assert_eq!((s.ejections_active, s.ejection_cap, s.probes_in_flight), (1, 2, 1));
        assert_eq!(s.health, ["probing", "ejected"]);
        assert_eq!(s.times_ejected, [1, 3]);
    }
}
