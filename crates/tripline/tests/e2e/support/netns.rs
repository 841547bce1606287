//! A "pod" for a test: a network namespace of its own with a veth pair to this one, an
//! address on each side and a default route through this side. Needs root (`ip netns`); a
//! test without it says it was skipped, and under CI (`CI=true`) fails.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Output};

pub struct Pod {
    pub name: String,
    /// This side's address (the upstreams the test starts listen on it) and the pod's.
    pub host_ip: Ipv4Addr,
    pub pod_ip: Ipv4Addr,
}

fn ip(args: &[&str]) -> Output {
    Command::new("ip").args(args).output().expect("run ip")
}

impl Pod {
    /// A new pod, or `None` (said on stderr) where network namespaces cannot be made outside CI.
    pub fn new(tag: &str) -> Option<Pod> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = (std::process::id() % 200) as u8;
        let name = format!("tl{tag}{}-{n}", std::process::id());
        let made = ip(&["netns", "add", &name]);
        if !made.status.success() {
            let why = String::from_utf8_lossy(&made.stderr).trim().to_string();
            let test = std::thread::current().name().unwrap_or("a network-namespace test").to_string();
            let ci = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
            assert!(!ci, "{test}: cannot make a network namespace ({why}); CI=true requires root");
            let _ = writeln!(
                std::io::stderr(),
                "skipped {test}: cannot make a network namespace ({why}): needs root"
            );
            return None;
        }
        let subnet = [10, 201 + n as u8 % 50, id, 0];
        let host_ip = Ipv4Addr::new(subnet[0], subnet[1], subnet[2], 1);
        let pod_ip = Ipv4Addr::new(subnet[0], subnet[1], subnet[2], 2);
        let (host_if, pod_if) = (format!("tlh{id}x{n}"), format!("tlp{id}x{n}"));
        let pod = Pod { name: name.clone(), host_ip, pod_ip };
        let steps: Vec<Vec<String>> = vec![
            vec![
                "link".into(),
                "add".into(),
                host_if.clone(),
                "type".into(),
                "veth".into(),
                "peer".into(),
                "name".into(),
                pod_if.clone(),
            ],
            vec!["link".into(), "set".into(), pod_if.clone(), "netns".into(), name.clone()],
            vec!["addr".into(), "add".into(), format!("{host_ip}/24"), "dev".into(), host_if.clone()],
            vec!["link".into(), "set".into(), host_if, "up".into()],
        ];
        for s in steps {
            let args: Vec<&str> = s.iter().map(String::as_str).collect();
            let out = ip(&args);
            assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        for s in [
            format!("addr add {pod_ip}/24 dev {pod_if}"),
            format!("link set {pod_if} up"),
            "link set lo up".to_string(),
            format!("route add default via {host_ip}"),
        ] {
            let out = pod.run("ip", &s.split(' ').collect::<Vec<_>>());
            assert!(out.status.success(), "ip {s}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Some(pod)
    }

    /// Runs `program args` inside the pod.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .expect("run in the pod")
    }

    /// The command prefix that runs a program inside the pod.
    pub fn exec_prefix(&self) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.name.clone()]
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        // The veth pair goes with the namespace.
        let _ = ip(&["netns", "del", &self.name]);
    }
}
