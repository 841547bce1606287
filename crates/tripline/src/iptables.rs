//! `tripline iptables install|uninstall`: the rules that send a pod's traffic through its
//! sidecar, as istio-iptables sets them: TCP the application sends out is redirected to the
//! outbound listener (the mesh listener, 15001), TCP that comes in to the inbound capture
//! port (15006), except the proxy's own connections (its uid), loopback, and the ports and
//! address blocks excluded. The rules live in chains of their own (`TRIPLINE_*`) in the `nat`
//! table, so uninstalling removes exactly them; installing removes them first, so it can be
//! run again.
//!
//! The script is built by a pure function ([`rules`]) and applied with `iptables-restore
//! --noflush` (and `ip6tables-restore` with `--ipv6`); `--dry-run` prints it instead.

use std::io::Write;
use std::process::{Command, ExitCode, Stdio};

use clap::{Args, Subcommand};

#[derive(Args, Clone, Debug)]
pub struct IptablesArgs {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Subcommand, Clone, Debug)]
pub enum Action {
    /// Redirect the pod's TCP through the proxy (removing any earlier Tripline rules first).
    Install(Options),
    /// Remove Tripline's rules.
    Uninstall(UninstallArgs),
}

#[derive(Args, Clone, Debug)]
pub struct UninstallArgs {
    /// Print the commands instead of running them.
    #[arg(long)]
    pub dry_run: bool,
    /// Also remove the IPv6 rules.
    #[arg(long)]
    pub ipv6: bool,
}

#[derive(Args, Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The uid the proxy runs as: its own connections are not redirected (Istio's 1337).
    #[arg(long, default_value_t = 1337, value_name = "UID")]
    pub proxy_uid: u32,
    /// Where outbound TCP is redirected: the port of the mesh listener (`--mesh-bind`).
    #[arg(long, default_value_t = 15001, value_name = "PORT")]
    pub outbound_port: u16,
    /// Where inbound TCP is redirected. 0: inbound traffic is not redirected.
    #[arg(long, default_value_t = 15006, value_name = "PORT")]
    pub inbound_port: u16,
    /// Inbound ports redirected, comma-separated, or `*` for all.
    #[arg(long, default_value = "*", value_name = "PORTS")]
    pub inbound_ports: String,
    /// Inbound ports never redirected (the admin port among them), comma-separated.
    #[arg(long, default_value = "15000", value_name = "PORTS")]
    pub exclude_inbound_ports: String,
    /// Outbound destination ports never redirected, comma-separated.
    #[arg(long, default_value = "", value_name = "PORTS")]
    pub exclude_outbound_ports: String,
    /// Outbound destination address blocks never redirected, comma-separated CIDRs.
    #[arg(long, default_value = "", value_name = "CIDRS")]
    pub exclude_outbound_cidrs: String,
    /// Program IPv6 too (ip6tables).
    #[arg(long)]
    pub ipv6: bool,
    /// Print the iptables-restore script instead of applying it.
    #[arg(long)]
    pub dry_run: bool,
}

/// The chains Tripline owns, and where each is jumped to from.
const CHAINS: &[(&str, Option<&str>)] = &[
    ("TRIPLINE_INBOUND", Some("PREROUTING")),
    ("TRIPLINE_OUTPUT", Some("OUTPUT")),
    ("TRIPLINE_IN_REDIRECT", None),
    ("TRIPLINE_REDIRECT", None),
];

/// A comma-separated list of ports, checked.
fn ports(list: &str, what: &str) -> Result<Vec<u16>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u16>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or(format!("{what}: `{p}` is not a port number (1-65535)"))
        })
        .collect()
}

/// A comma-separated list of CIDRs of one family, checked.
fn cidrs(list: &str, v6: bool) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for c in list.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        let (addr, prefix) = c.split_once('/').unwrap_or((c, if c.contains(':') { "128" } else { "32" }));
        let ip: std::net::IpAddr = addr.parse().map_err(|_| {
            format!("--exclude-outbound-cidrs: `{c}` is not an address block like 10.0.0.0/8")
        })?;
        let max = if ip.is_ipv6() { 128 } else { 32 };
        match prefix.parse::<u8>() {
            Ok(p) if p <= max => {}
            _ => {
                return Err(format!(
                    "--exclude-outbound-cidrs: `{c}` has no prefix length between 0 and {max}"
                ))
            }
        }
        if ip.is_ipv6() == v6 {
            out.push(format!("{addr}/{prefix}"));
        }
    }
    Ok(out)
}

/// The `iptables-restore` script (`ip6tables-restore` with `v6`) for `o`.
pub fn rules(o: &Options, v6: bool) -> Result<String, String> {
    let inbound_all = o.inbound_ports.trim() == "*";
    let inbound = if inbound_all { Vec::new() } else { ports(&o.inbound_ports, "--inbound-ports")? };
    let exclude_in = ports(&o.exclude_inbound_ports, "--exclude-inbound-ports")?;
    let exclude_out = ports(&o.exclude_outbound_ports, "--exclude-outbound-ports")?;
    let exclude_cidrs = cidrs(&o.exclude_outbound_cidrs, v6)?;
    let localhost = if v6 { "::1/128" } else { "127.0.0.1/32" };
    let mut s = vec!["*nat".to_string()];
    s.extend(CHAINS.iter().map(|(c, _)| format!(":{c} - [0:0]")));
    // Inbound: what comes to the pod's ports goes to the inbound capture port.
    if o.inbound_port != 0 {
        s.push("-A PREROUTING -p tcp -j TRIPLINE_INBOUND".into());
        s.extend(exclude_in.iter().map(|p| format!("-A TRIPLINE_INBOUND -p tcp --dport {p} -j RETURN")));
        if inbound_all {
            s.push("-A TRIPLINE_INBOUND -p tcp -j TRIPLINE_IN_REDIRECT".into());
        } else {
            s.extend(
                inbound
                    .iter()
                    .map(|p| format!("-A TRIPLINE_INBOUND -p tcp --dport {p} -j TRIPLINE_IN_REDIRECT")),
            );
        }
        s.push(format!("-A TRIPLINE_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}", o.inbound_port));
    }
    // Outbound: what the application sends goes to the outbound listener; the proxy's own
    // connections (its uid), loopback and the exclusions go out as they are.
    s.push("-A OUTPUT -p tcp -j TRIPLINE_OUTPUT".into());
    s.push(format!("-A TRIPLINE_OUTPUT -m owner --uid-owner {} -j RETURN", o.proxy_uid));
    s.push("-A TRIPLINE_OUTPUT -o lo -j RETURN".into());
    s.push(format!("-A TRIPLINE_OUTPUT -d {localhost} -j RETURN"));
    s.extend(exclude_out.iter().map(|p| format!("-A TRIPLINE_OUTPUT -p tcp --dport {p} -j RETURN")));
    s.extend(exclude_cidrs.iter().map(|c| format!("-A TRIPLINE_OUTPUT -d {c} -j RETURN")));
    s.push("-A TRIPLINE_OUTPUT -j TRIPLINE_REDIRECT".into());
    s.push(format!("-A TRIPLINE_REDIRECT -p tcp -j REDIRECT --to-ports {}", o.outbound_port));
    s.push("COMMIT".into());
    Ok(s.join("\n") + "\n")
}

/// The commands that remove Tripline's rules: every jump to its chains, then the chains.
pub fn removal(v6: bool) -> Vec<Vec<String>> {
    let bin = if v6 { "ip6tables" } else { "iptables" };
    let mut out = Vec::new();
    for (chain, from) in CHAINS {
        if let Some(parent) = from {
            out.push(vec![
                bin.into(),
                "-t".into(),
                "nat".into(),
                "-D".into(),
                parent.to_string(),
                "-p".into(),
                "tcp".into(),
                "-j".into(),
                chain.to_string(),
            ]);
        }
    }
    for (chain, _) in CHAINS {
        out.push(vec![bin.into(), "-t".into(), "nat".into(), "-F".into(), chain.to_string()]);
    }
    for (chain, _) in CHAINS {
        out.push(vec![bin.into(), "-t".into(), "nat".into(), "-X".into(), chain.to_string()]);
    }
    out
}

fn uninstall(v6: bool) {
    for cmd in removal(v6) {
        // A jump is deleted once per copy; a missing chain or rule is what "removed" means.
        let repeat = cmd[3] == "-D";
        loop {
            let ok = Command::new(&cmd[0])
                .args(&cmd[1..])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !(ok && repeat) {
                break;
            }
        }
    }
}

fn restore(script: &str, v6: bool) -> Result<(), String> {
    let bin = if v6 { "ip6tables-restore" } else { "iptables-restore" };
    let mut child =
        Command::new(bin).arg("--noflush").stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(
            |e| format!("cannot run {bin}: {e} (install iptables; run as root or with CAP_NET_ADMIN)"),
        )?;
    child.stdin.take().map(|mut i| i.write_all(script.as_bytes())).transpose().map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("{bin} refused the rules: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

pub fn run(args: IptablesArgs) -> ExitCode {
    match args.action {
        Action::Install(o) => {
            let families: &[bool] = if o.ipv6 { &[false, true] } else { &[false] };
            for &v6 in families {
                let script = match rules(&o, v6) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("tripline iptables: {e}");
                        return ExitCode::from(2);
                    }
                };
                if o.dry_run {
                    print!("{script}");
                    continue;
                }
                uninstall(v6);
                if let Err(e) = restore(&script, v6) {
                    eprintln!("tripline iptables: {e}");
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Action::Uninstall(u) => {
            let families: &[bool] = if u.ipv6 { &[false, true] } else { &[false] };
            for &v6 in families {
                if u.dry_run {
                    for cmd in removal(v6) {
                        println!("{}", cmd.join(" "));
                    }
                } else {
                    uninstall(v6);
                }
            }
            ExitCode::SUCCESS
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        o: Options,
    }

    fn options(args: &[&str]) -> Options {
        Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied())).unwrap().o
    }

    #[test]
    fn the_defaults_redirect_everything_but_the_proxy_loopback_and_the_admin_port() {
        let script = rules(&options(&[]), false).unwrap();
        let want = "*nat
:TRIPLINE_INBOUND - [0:0]
:TRIPLINE_OUTPUT - [0:0]
:TRIPLINE_IN_REDIRECT - [0:0]
:TRIPLINE_REDIRECT - [0:0]
-A PREROUTING -p tcp -j TRIPLINE_INBOUND
-A TRIPLINE_INBOUND -p tcp --dport 15000 -j RETURN
-A TRIPLINE_INBOUND -p tcp -j TRIPLINE_IN_REDIRECT
-A TRIPLINE_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A OUTPUT -p tcp -j TRIPLINE_OUTPUT
-A TRIPLINE_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A TRIPLINE_OUTPUT -o lo -j RETURN
-A TRIPLINE_OUTPUT -d 127.0.0.1/32 -j RETURN
-A TRIPLINE_OUTPUT -j TRIPLINE_REDIRECT
-A TRIPLINE_REDIRECT -p tcp -j REDIRECT --to-ports 15001
COMMIT
";
        assert_eq!(script, want);
    }

    #[test]
    fn exclusions_and_chosen_ports_become_rules_in_each_family() {
        let o = options(&[
            "--proxy-uid",
            "999",
            "--inbound-ports",
            "8080,9090",
            "--exclude-outbound-ports",
            "5432",
            "--exclude-outbound-cidrs",
            "10.96.0.0/12,fd00::/8",
            "--outbound-port",
            "15101",
        ]);
        let v4 = rules(&o, false).unwrap();
        assert!(v4.contains("-A TRIPLINE_INBOUND -p tcp --dport 8080 -j TRIPLINE_IN_REDIRECT\n-A TRIPLINE_INBOUND -p tcp --dport 9090 -j TRIPLINE_IN_REDIRECT\n"));
        assert!(v4.contains("--uid-owner 999 -j RETURN"));
        assert!(v4.contains("-A TRIPLINE_OUTPUT -p tcp --dport 5432 -j RETURN\n-A TRIPLINE_OUTPUT -d 10.96.0.0/12 -j RETURN\n"));
        assert!(v4.contains("--to-ports 15101"));
        assert!(!v4.contains("fd00::/8"));
        let v6 = rules(&o, true).unwrap();
        assert!(
            v6.contains("-A TRIPLINE_OUTPUT -d ::1/128 -j RETURN") && v6.contains("-d fd00::/8 -j RETURN")
        );
        assert!(!v6.contains("10.96.0.0/12"));
        let none_in = rules(&options(&["--inbound-port", "0"]), false).unwrap();
        assert!(!none_in.contains("PREROUTING") && !none_in.contains("15006"));
    }

    #[test]
    fn bad_ports_and_blocks_are_refused_naming_the_flag() {
        assert_eq!(
            rules(&options(&["--exclude-outbound-ports", "80,http"]), false).unwrap_err(),
            "--exclude-outbound-ports: `http` is not a port number (1-65535)"
        );
        assert!(rules(&options(&["--exclude-outbound-cidrs", "10.0.0.0/33"]), false)
            .unwrap_err()
            .contains("no prefix length between 0 and 32"));
        assert!(rules(&options(&["--exclude-outbound-cidrs", "nope"]), false)
            .unwrap_err()
            .contains("`nope` is not an address block"));
    }

    #[test]
    fn uninstalling_removes_the_jumps_before_the_chains() {
        let cmds: Vec<String> = removal(false).iter().map(|c| c.join(" ")).collect();
        assert_eq!(cmds[0], "iptables -t nat -D PREROUTING -p tcp -j TRIPLINE_INBOUND");
        assert_eq!(cmds[1], "iptables -t nat -D OUTPUT -p tcp -j TRIPLINE_OUTPUT");
        assert!(
            cmds[2..6].iter().all(|c| c.contains(" -F ")) && cmds[6..].iter().all(|c| c.contains(" -X "))
        );
    }
}
