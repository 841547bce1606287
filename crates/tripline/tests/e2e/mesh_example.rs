//! `examples/mesh/`, the brief's mini-project, as the README runs it: `up.sh` starts the
//! Kubernetes API server, three pods in network namespaces (frontend -> backend -> db), each
//! with its application and a Tripline sidecar that `tripline iptables` put in its path; a
//! request flows through all three hops, and a failing db is contained at the backend hop
//! (its breaker opens; frontend keeps getting answers). Needs root, python3, kubectl and
//! `../shared`: skipped (and said so) without them outside CI.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{binary, free_port, get};

struct Mesh {
    dir: PathBuf,
    state: PathBuf,
}

impl Mesh {
    fn script(&self, name: &str) -> Command {
        let mut cmd = Command::new("bash");
        cmd.arg(self.dir.join(name))
            .env("TRIPLINE", binary())
            .env("TRIPLINE_SHARED", crate::support::kube::shared())
            .env("STATE", &self.state);
        cmd
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let _ = self.script("down.sh").output();
    }
}

fn missing() -> Option<String> {
    if !crate::support::kube::shared().join("tools/kube-test/start.sh").is_file() {
        return Some("no ../shared/tools/kube-test".into());
    }
    let root =
        Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root.unwrap_or(false) {
        return Some("not root".into());
    }
    for tool in ["python3", "kubectl", "iptables-restore", "curl"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            return Some(format!("no {tool}"));
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_example_carries_a_request_through_three_sidecars_and_contains_a_db_failure() {
    if let Some(why) = missing() {
        let ci = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
        assert!(!ci, "the mesh example needs {why} under CI=true");
        // Straight to the process's stderr: the harness shows `eprintln!` only for failures.
        let _ = writeln!(std::io::stderr(), "skipped the mesh example: {why}");
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/mesh");
    let state = crate::support::proxy::unique_dir("mesh");
    let mesh = Mesh { dir, state: state.clone() };
    let etcd = loop {
        let p = free_port();
        if p < 65000 && std::net::TcpListener::bind(("127.0.0.1", p + 10)).is_ok() {
            break p;
        }
    };
    let up = mesh
        .script("up.sh")
        .env("KT_API_PORT", free_port().to_string())
        .env("KT_ETCD_PORT", etcd.to_string())
        .output()
        .expect("run up.sh");
    assert!(
        up.status.success(),
        "up.sh: {}{}",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr)
    );

    let frontend = SocketAddr::from(([10, 250, 0, 10], 8080));
    let r = get(frontend, "frontend", "/").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let chain = r.json();
    assert_eq!(chain["downstream"]["downstream"]["service"], "db", "{chain}");
    // Every hop went through its sidecars, out and in.
    let admin = |last: u8| SocketAddr::from(([10, 250, 0, last], 15000));
    let metric = |last: u8, cluster: &'static str| async move {
        let m = crate::support::get(admin(last), "localhost", "/metrics").await.unwrap().text();
        crate::support::metrics::metric_sum(&m, "tripline_requests_total", &[("cluster", cluster)])
    };
    assert_eq!(metric(10, "outbound|80||backend.shop.svc.cluster.local").await, 1.0);
    assert_eq!(metric(11, "inbound|8080||").await, 1.0);
    assert_eq!(metric(11, "outbound|80||db.shop.svc.cluster.local").await, 1.0);
    assert_eq!(metric(12, "inbound|8080||").await, 1.0);

    // db fails: three 500s open its breaker at the backend hop, which then answers for it at
    // once; frontend still gets backend's answer every time, and db sees nothing more.
    std::fs::write(state.join("db-fails"), "").unwrap();
    let mut reasons = Vec::new();
    for _ in 0..6 {
        let r = get(frontend, "frontend", "/").await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let db = &r.json()["downstream"]["downstream"];
        reasons.push(format!("{}/{}", db["status"], db["reason"].as_str().unwrap_or("-")));
    }
    assert_eq!(
        reasons,
        ["500/-", "500/-", "500/-", "503/breaker-open", "503/breaker-open", "503/breaker-open"]
    );
    assert_eq!(metric(12, "inbound|8080||").await, 4.0, "db got one request and three failing ones");
}
