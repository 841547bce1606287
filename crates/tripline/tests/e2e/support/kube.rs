//! A real Kubernetes API server for a test (`../shared/tools/kube-test`: etcd and the real
//! `k8s.io/apiserver` machinery on loopback, on ports of its own), and a kube-rs client that
//! applies objects to it.
//!
//! The server lives outside the repository, so a bare clone has none: a test then says it was
//! skipped (on stderr) and passes; under CI (`CI=true`) its absence fails the test.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::Value;

use super::free_port;

pub struct KubeApi {
    tools: PathBuf,
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    client: kube::Client,
}

/// `$TRIPLINE_SHARED`, by default the `shared` directory beside the clone.
pub fn shared() -> PathBuf {
    let beside_the_clone = || {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        manifest.ancestors().nth(3).unwrap_or(manifest).join("shared")
    };
    std::env::var_os("TRIPLINE_SHARED").map(PathBuf::from).unwrap_or_else(beside_the_clone)
}

/// `$TRIPLINE_SHARED/tools/kube-test`.
fn tools() -> PathBuf {
    shared().join("tools/kube-test")
}

impl KubeApi {
    /// Starts an API server for the test `tag`, or `None` (said on stderr) when there is none
    /// to start outside CI.
    pub async fn start(tag: &str) -> Option<KubeApi> {
        let tools = tools();
        if !tools.join("start.sh").is_file() {
            let test = std::thread::current().name().unwrap_or("a Kubernetes test").to_string();
            let hint = format!("no Kubernetes API server to start: {} is missing (put the brief's `shared` directory beside the clone, or set TRIPLINE_SHARED)", tools.display());
            let ci = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
            assert!(!ci, "{test}: {hint} (CI=true requires it)");
            let _ = writeln!(std::io::stderr(), "skipped {test}: {hint}");
            return None;
        }
        let dir = super::proxy::unique_dir(&format!("kube-{tag}"));
        // Two ports for etcd (client, and the peer port 10 above), one for the API server.
        let etcd = loop {
            let p = free_port();
            if p < 65000 && std::net::TcpListener::bind(("127.0.0.1", p + 10)).is_ok() {
                break p;
            }
        };
        KubeApi::launch(&tools, &dir, (free_port(), etcd));
        let kubeconfig = dir.join("kubeconfig");
        let config = Kubeconfig::read_from(&kubeconfig).expect("kube-test's kubeconfig");
        let config =
            kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default()).await.unwrap();
        let client = kube::Client::try_from(config).unwrap();
        let api = KubeApi { tools, dir, kubeconfig, client };
        api.install_crds().await;
        Some(api)
    }

    fn launch(tools: &Path, dir: &Path, (api, etcd): (u16, u16)) {
        let out = Command::new("bash")
            .arg(tools.join("start.sh"))
            .arg(dir)
            .env("KT_API_PORT", api.to_string())
            .env("KT_ETCD_PORT", etcd.to_string())
            .output()
            .expect("run kube-test's start.sh");
        assert!(out.status.success(), "kube-test did not start: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Stops the API server and etcd (the data stays in the directory).
    pub fn stop(&self) {
        let _ = Command::new("bash").arg(self.tools.join("stop.sh")).arg(&self.dir).output();
    }

    /// Kills the API server (SIGKILL: its connections close at once, nothing is shut down
    /// gracefully) and returns its command line, for [`KubeApi::revive`]. etcd, and so every
    /// object and resource version, stays: what an API server restart in a cluster is.
    pub fn kill(&self) -> Vec<String> {
        let pid = std::fs::read_to_string(self.dir.join("apiserver.pid")).unwrap();
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", pid.trim())).unwrap();
        let argv = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let _ = Command::new("kill").args(["-9", pid.trim()]).output();
        argv
    }

    /// Starts the API server again with `argv` (from [`KubeApi::kill`]) and waits until it
    /// answers.
    pub async fn revive(&self, argv: &[String]) {
        let log = std::fs::OpenOptions::new().append(true).open(self.dir.join("apiserver.log")).unwrap();
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        std::fs::write(self.dir.join("apiserver.pid"), child.id().to_string()).unwrap();
        // `stop.sh` ends it by its pid; this reaps it then.
        let mut child = child;
        std::thread::spawn(move || child.wait());
        for _ in 0..100 {
            if self.client.apiserver_version().await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the API server did not come back; see {}", self.dir.join("apiserver.log").display());
    }

    /// `KUBECONFIG=<its kubeconfig>`, for the proxy's environment.
    pub fn env(&self) -> String {
        format!("KUBECONFIG={}", self.kubeconfig.display())
    }

    /// Creates or updates `obj` (server-side apply).
    pub async fn apply(&self, obj: Value) {
        let (api, name) = self.api_of(&obj);
        let obj: DynamicObject = serde_json::from_value(obj).unwrap();
        api.patch(&name, &PatchParams::apply("tripline-e2e").force(), &Patch::Apply(&obj))
            .await
            .unwrap_or_else(|e| panic!("apply {name}: {e}"));
    }

    /// The object's `status` as the API server has it now.
    pub async fn status(&self, obj: &Value) -> Value {
        let (api, name) = self.api_of(obj);
        let got = api.get(&name).await.unwrap_or_else(|e| panic!("get {name}: {e}"));
        got.data.get("status").cloned().unwrap_or(Value::Null)
    }

    pub async fn delete(&self, obj: Value) {
        let (api, name) = self.api_of(&obj);
        api.delete(&name, &DeleteParams::default()).await.unwrap_or_else(|e| panic!("delete {name}: {e}"));
    }

    fn api_of(&self, obj: &Value) -> (Api<DynamicObject>, String) {
        let (group, version) = match obj["apiVersion"].as_str().unwrap().split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), obj["apiVersion"].as_str().unwrap().to_string()),
        };
        let kind = obj["kind"].as_str().unwrap();
        let plural = match kind {
            "EndpointSlice" => "endpointslices".to_string(),
            "CustomResourceDefinition" => "customresourcedefinitions".to_string(),
            k => tripline_kube::objects::KINDS
                .iter()
                .find(|c| c.kind == k)
                .map_or_else(|| format!("{}s", k.to_ascii_lowercase()), |c| c.plural.to_string()),
        };
        let resource =
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(&group, &version, kind), &plural);
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        let api = match obj["metadata"]["namespace"].as_str() {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &resource),
            None => Api::all_with(self.client.clone(), &resource),
        };
        (api, name)
    }

    /// The definitions Tripline ships (`deploy/crds.yaml`, applied with kubectl as a user
    /// would): they take any `spec` (no Istio here), and the proxy, not the API server,
    /// validates it, as it does for files; their status subresource takes `--report-status`.
    async fn install_crds(&self) {
        let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/crds.yaml");
        let out = std::process::Command::new("kubectl")
            .args(["apply", "-f", crds])
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .expect("kubectl (.ci/run requires it)");
        assert!(
            out.status.success(),
            "kubectl apply -f deploy/crds.yaml: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A definition is served a moment after it is created.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.stop();
    }
}
