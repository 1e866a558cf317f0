//! `sane-proxy iptables install|uninstall`: the NAT rules that send a pod's
//! TCP traffic through its sidecar without the app knowing (like Istio's
//! init container), for [`crate::transparent`] listeners to serve.
//!
//! Everything lives in four chains of the `nat` table, reached by one jump
//! from `PREROUTING` and one from `OUTPUT`:
//!
//! * `SANE_INBOUND` (from `PREROUTING`): TCP arriving for the pod goes to
//!   `SANE_IN_REDIRECT` (→ the inbound port), except excluded ports and the
//!   inbound port itself (peer sidecars address it directly).
//! * `SANE_OUTPUT` (from `OUTPUT`): TCP the pod sends goes to `SANE_REDIRECT`
//!   (→ the outbound port), except the proxy's own (by uid: otherwise its
//!   upstream connections would come straight back to it), loopback,
//!   excluded ports and CIDRs, and destinations outside the included CIDRs.
//!
//! Rules are applied in one `iptables-restore --noflush` transaction, so a
//! pod never runs with half a ruleset; installing again replaces the rules;
//! uninstalling removes exactly those chains and jumps, and nothing when they
//! are absent. IPv4 only: IPv6 traffic is not captured.

use std::fmt::{self, Write as _};
use std::io::{self, Write as _};
use std::net::Ipv4Addr;
use std::process::{Command, ExitStatus, Stdio};
use std::str::FromStr;

/// Chain jumped to from `PREROUTING`.
pub const INBOUND_CHAIN: &str = "SANE_INBOUND";
/// Chain redirecting to the inbound port.
pub const IN_REDIRECT_CHAIN: &str = "SANE_IN_REDIRECT";
/// Chain jumped to from `OUTPUT`.
pub const OUTPUT_CHAIN: &str = "SANE_OUTPUT";
/// Chain redirecting to the outbound port.
pub const REDIRECT_CHAIN: &str = "SANE_REDIRECT";
/// Every chain `install` creates, in the order they are declared.
pub const CHAINS: [&str; 4] = [
    INBOUND_CHAIN,
    IN_REDIRECT_CHAIN,
    OUTPUT_CHAIN,
    REDIRECT_CHAIN,
];

/// `sane-proxy iptables …`.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum IptablesCommand {
    /// Install the capture rules in this network namespace (replacing rules
    /// installed earlier).
    Install {
        /// What to capture.
        #[command(flatten)]
        capture: CaptureOptions,
        /// Print the rules (iptables-restore input) instead of applying them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove exactly the chains and jumps `install` added; nothing to remove
    /// is not an error.
    Uninstall {
        /// Print what would be removed instead of removing it.
        #[arg(long)]
        dry_run: bool,
    },
}

/// What to redirect to the proxy.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct CaptureOptions {
    /// The proxy's user id: its own connections are never redirected.
    #[arg(long, default_value_t = 1337)]
    pub proxy_uid: u32,
    /// Port of the proxy's transparent outbound listener.
    #[arg(long, default_value_t = 15001, value_parser = clap::value_parser!(u16).range(1..))]
    pub outbound_port: u16,
    /// Port of the proxy's inbound listener.
    #[arg(long, default_value_t = 15006, value_parser = clap::value_parser!(u16).range(1..))]
    pub inbound_port: u16,
    /// Inbound destination ports to redirect: `*` for all, or a comma
    /// separated list (empty: capture no inbound traffic).
    #[arg(long, default_value = "*")]
    pub include_inbound_ports: InboundPorts,
    /// Inbound destination ports never redirected (comma separated), e.g.
    /// ports of processes beside the app that are not behind the sidecar.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..))]
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports never redirected (comma separated).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..))]
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destinations to redirect (comma separated CIDRs or IPs).
    #[arg(long, value_delimiter = ',', default_value = "0.0.0.0/0")]
    pub include_outbound_cidrs: Vec<Ipv4Cidr>,
    /// Outbound destinations never redirected (comma separated CIDRs or
    /// IPs); they win over the included ones.
    #[arg(long, value_delimiter = ',')]
    pub exclude_outbound_cidrs: Vec<Ipv4Cidr>,
}

/// Which inbound ports are captured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InboundPorts {
    /// Every port (`*`).
    All,
    /// Only these (possibly none).
    Only(Vec<u16>),
}

/// An IPv4 network, `a.b.c.d/len`; host bits are cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    len: u8,
}

/// Why the rules could not be read or applied.
#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    /// The program could not be started (not installed?).
    #[error("running {program}: {source} (is the iptables package installed?)")]
    Spawn {
        /// The program.
        program: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The program ran and failed.
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        /// The program.
        program: &'static str,
        /// Its exit status.
        status: ExitStatus,
        /// What it said.
        stderr: String,
    },
}

/// Runs `cmd`: prints rules for a dry run, otherwise applies them. Returns
/// what to tell the operator.
pub fn run(cmd: &IptablesCommand) -> Result<String, IptablesError> {
    match cmd {
        IptablesCommand::Install {
            capture,
            dry_run: true,
        } => Ok(install_rules(capture, &[])),
        IptablesCommand::Install {
            capture,
            dry_run: false,
        } => {
            let existing = installed_jumps(&save_nat()?);
            restore(&install_rules(capture, &existing))?;
            Ok(format!(
                "installed: outbound TCP → 127.0.0.1:{}, inbound TCP → :{}, uid {} exempt",
                capture.outbound_port, capture.inbound_port, capture.proxy_uid
            ))
        }
        IptablesCommand::Uninstall { dry_run } => {
            let Some(rules) = removal_rules(&save_nat()?) else {
                return Ok("nothing to remove: no sane-proxy rules installed".into());
            };
            if *dry_run {
                return Ok(rules);
            }
            restore(&rules)?;
            Ok("removed the sane-proxy chains and jumps".into())
        }
    }
}

/// The `iptables-restore --noflush` input that installs the capture rules;
/// `existing` are jumps into our chains found in the current ruleset (from
/// [`installed_jumps`]), deleted first so installing twice leaves one set.
pub fn install_rules(o: &CaptureOptions, existing: &[String]) -> String {
    let mut out = String::from("# sane-proxy iptables install\n*nat\n");
    // Declaring a chain creates it, or flushes it if it exists.
    for chain in CHAINS {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    for rule in existing {
        let _ = writeln!(out, "-D {rule}");
    }
    let mut rule = |line: fmt::Arguments<'_>| {
        let _ = writeln!(out, "{line}");
    };
    rule(format_args!(
        "-A {IN_REDIRECT_CHAIN} -p tcp -j REDIRECT --to-ports {}",
        o.inbound_port
    ));
    rule(format_args!(
        "-A {REDIRECT_CHAIN} -p tcp -j REDIRECT --to-ports {}",
        o.outbound_port
    ));

    // Inbound: peers address the inbound port directly; excluded ports
    // reach the app (or whatever listens) untouched.
    rule(format_args!(
        "-A {INBOUND_CHAIN} -p tcp --dport {} -j RETURN",
        o.inbound_port
    ));
    for port in &o.exclude_inbound_ports {
        rule(format_args!(
            "-A {INBOUND_CHAIN} -p tcp --dport {port} -j RETURN"
        ));
    }
    match &o.include_inbound_ports {
        InboundPorts::All => rule(format_args!(
            "-A {INBOUND_CHAIN} -p tcp -j {IN_REDIRECT_CHAIN}"
        )),
        InboundPorts::Only(ports) => {
            for port in ports {
                rule(format_args!(
                    "-A {INBOUND_CHAIN} -p tcp --dport {port} -j {IN_REDIRECT_CHAIN}"
                ));
            }
        }
    }

    // Outbound: the proxy's own connections first, or they would loop back
    // into it; then loopback, exclusions, and finally the included CIDRs.
    rule(format_args!(
        "-A {OUTPUT_CHAIN} -m owner --uid-owner {} -j RETURN",
        o.proxy_uid
    ));
    rule(format_args!("-A {OUTPUT_CHAIN} -o lo -j RETURN"));
    for port in &o.exclude_outbound_ports {
        rule(format_args!(
            "-A {OUTPUT_CHAIN} -p tcp --dport {port} -j RETURN"
        ));
    }
    for cidr in &o.exclude_outbound_cidrs {
        rule(format_args!("-A {OUTPUT_CHAIN} -d {cidr} -j RETURN"));
    }
    for cidr in &o.include_outbound_cidrs {
        if cidr.len == 0 {
            rule(format_args!("-A {OUTPUT_CHAIN} -j {REDIRECT_CHAIN}"));
        } else {
            rule(format_args!(
                "-A {OUTPUT_CHAIN} -d {cidr} -j {REDIRECT_CHAIN}"
            ));
        }
    }

    rule(format_args!("-A PREROUTING -p tcp -j {INBOUND_CHAIN}"));
    rule(format_args!("-A OUTPUT -p tcp -j {OUTPUT_CHAIN}"));
    out.push_str("COMMIT\n");
    out
}

/// The rules of built-in chains that jump into one of ours, as `CHAIN spec`
/// (what `-D` takes), from `iptables-save -t nat` output.
pub fn installed_jumps(saved: &str) -> Vec<String> {
    saved
        .lines()
        .filter_map(|line| line.strip_prefix("-A "))
        .filter(|rule| {
            let mut words = rule.split_whitespace();
            let chain = words.next().unwrap_or_default();
            !CHAINS.contains(&chain)
                && rule
                    .split_whitespace()
                    .zip(rule.split_whitespace().skip(1))
                    .any(|(flag, target)| {
                        matches!(flag, "-j" | "--jump" | "-g" | "--goto")
                            && CHAINS.contains(&target)
                    })
        })
        .map(str::to_string)
        .collect()
}

/// The `iptables-restore --noflush` input that removes our jumps and chains
/// as found in `saved` (`iptables-save -t nat` output); `None` when none of
/// them is there.
pub fn removal_rules(saved: &str) -> Option<String> {
    let jumps = installed_jumps(saved);
    let chains: Vec<&str> = CHAINS
        .into_iter()
        .filter(|c| {
            saved.lines().any(|l| {
                l.strip_prefix(':')
                    .and_then(|l| l.split_whitespace().next())
                    == Some(*c)
            })
        })
        .collect();
    if jumps.is_empty() && chains.is_empty() {
        return None;
    }
    let mut out = String::from("# sane-proxy iptables uninstall\n*nat\n");
    for rule in &jumps {
        let _ = writeln!(out, "-D {rule}");
    }
    // Flush all before deleting any: our chains jump to one another.
    for chain in &chains {
        let _ = writeln!(out, "-F {chain}");
    }
    for chain in &chains {
        let _ = writeln!(out, "-X {chain}");
    }
    out.push_str("COMMIT\n");
    Some(out)
}

fn save_nat() -> Result<String, IptablesError> {
    let program = "iptables-save";
    let out = Command::new(program)
        .args(["-t", "nat"])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| IptablesError::Spawn { program, source })?;
    if !out.status.success() {
        return Err(IptablesError::Failed {
            program,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn restore(rules: &str) -> Result<(), IptablesError> {
    let program = "iptables-restore";
    let spawn = |source| IptablesError::Spawn { program, source };
    let mut child = Command::new(program)
        .args(["--noflush", "--wait"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(rules.as_bytes())
        .map_err(spawn)?;
    let out = child.wait_with_output().map_err(spawn)?;
    if !out.status.success() {
        return Err(IptablesError::Failed {
            program,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

// === impl InboundPorts ===

impl FromStr for InboundPorts {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim() == "*" {
            return Ok(InboundPorts::All);
        }
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| match p.parse::<u16>() {
                Ok(port) if port != 0 => Ok(port),
                _ => Err(format!("{p:?} is not a port (1-65535)")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(InboundPorts::Only)
    }
}

// === impl Ipv4Cidr ===

impl FromStr for Ipv4Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = match s.trim().split_once('/') {
            Some((a, l)) => (a, l.parse::<u8>().ok().filter(|l| *l <= 32)),
            None => (s.trim(), Some(32)),
        };
        let (Ok(addr), Some(len)) = (addr.parse::<Ipv4Addr>(), len) else {
            return Err(format!(
                "{s:?} is not an IPv4 CIDR (a.b.c.d/len) or address"
            ));
        };
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        Ok(Ipv4Cidr {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            len,
        })
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: IptablesCommand,
    }

    fn parse(args: &[&str]) -> Result<IptablesCommand, String> {
        let argv = std::iter::once("iptables").chain(args.iter().copied());
        Cli::try_parse_from(argv)
            .map(|c| c.cmd)
            .map_err(|e| e.to_string())
    }

    fn capture(args: &[&str]) -> CaptureOptions {
        let mut all = vec!["install"];
        all.extend_from_slice(args);
        match parse(&all).unwrap() {
            IptablesCommand::Install { capture, .. } => capture,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn default_ruleset() {
        assert_eq!(
            install_rules(&capture(&[]), &[]),
            "\
# sane-proxy iptables install
*nat
:SANE_INBOUND - [0:0]
:SANE_IN_REDIRECT - [0:0]
:SANE_OUTPUT - [0:0]
:SANE_REDIRECT - [0:0]
-A SANE_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A SANE_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A SANE_INBOUND -p tcp --dport 15006 -j RETURN
-A SANE_INBOUND -p tcp -j SANE_IN_REDIRECT
-A SANE_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A SANE_OUTPUT -o lo -j RETURN
-A SANE_OUTPUT -j SANE_REDIRECT
-A PREROUTING -p tcp -j SANE_INBOUND
-A OUTPUT -p tcp -j SANE_OUTPUT
COMMIT
"
        );
    }

    #[test]
    fn every_option_shapes_the_rules() {
        let o = capture(&[
            "--proxy-uid=2000",
            "--outbound-port=16001",
            "--inbound-port=16006",
            "--include-inbound-ports=8080,9090",
            "--exclude-inbound-ports=15010,15080",
            "--exclude-outbound-ports=53",
            "--include-outbound-cidrs=10.0.0.0/8,192.168.1.7",
            "--exclude-outbound-cidrs=10.1.2.3/16",
        ]);
        let rules = install_rules(&o, &[]);
        let body: Vec<&str> = rules.lines().skip(6).collect();
        assert_eq!(
            body,
            [
                "-A SANE_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006",
                "-A SANE_REDIRECT -p tcp -j REDIRECT --to-ports 16001",
                "-A SANE_INBOUND -p tcp --dport 16006 -j RETURN",
                "-A SANE_INBOUND -p tcp --dport 15010 -j RETURN",
                "-A SANE_INBOUND -p tcp --dport 15080 -j RETURN",
                "-A SANE_INBOUND -p tcp --dport 8080 -j SANE_IN_REDIRECT",
                "-A SANE_INBOUND -p tcp --dport 9090 -j SANE_IN_REDIRECT",
                "-A SANE_OUTPUT -m owner --uid-owner 2000 -j RETURN",
                "-A SANE_OUTPUT -o lo -j RETURN",
                "-A SANE_OUTPUT -p tcp --dport 53 -j RETURN",
                // Host bits cleared; exclusions before inclusions.
                "-A SANE_OUTPUT -d 10.1.0.0/16 -j RETURN",
                "-A SANE_OUTPUT -d 10.0.0.0/8 -j SANE_REDIRECT",
                "-A SANE_OUTPUT -d 192.168.1.7/32 -j SANE_REDIRECT",
                "-A PREROUTING -p tcp -j SANE_INBOUND",
                "-A OUTPUT -p tcp -j SANE_OUTPUT",
                "COMMIT",
            ]
        );
        // No inbound capture at all.
        let none = install_rules(&capture(&["--include-inbound-ports="]), &[]);
        assert!(!none.contains("-j SANE_IN_REDIRECT"), "{none}");
    }

    #[test]
    fn bad_options_are_rejected_by_name() {
        for (args, expected) in [
            (&["install", "--outbound-port=0"][..], "--outbound-port"),
            (
                &["install", "--include-outbound-cidrs=10.0.0.0/33"],
                "not an IPv4 CIDR",
            ),
            (
                &["install", "--exclude-outbound-cidrs=fd00::/8"],
                "not an IPv4 CIDR",
            ),
            (
                &["install", "--include-inbound-ports=80,http"],
                "\"http\" is not a port",
            ),
            (
                &["install", "--exclude-inbound-ports=0"],
                "--exclude-inbound-ports",
            ),
            (&["uninstall", "--proxy-uid=1"], "--proxy-uid"),
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.contains(expected), "{args:?}: {err}");
        }
    }

    /// `iptables-save -t nat` after an install, plus a rule of someone else's.
    const SAVED: &str = "\
# Generated by iptables-nft-save v1.8.9 (nf_tables) on Mon Jan  1 00:00:00 2024
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:SANE_INBOUND - [0:0]
:SANE_IN_REDIRECT - [0:0]
:SANE_OUTPUT - [0:0]
:SANE_REDIRECT - [0:0]
:OTHER - [0:0]
-A PREROUTING -p tcp -j SANE_INBOUND
-A OUTPUT -p tcp -j SANE_OUTPUT
-A OUTPUT -p udp --dport 53 -j OTHER
-A POSTROUTING -j MASQUERADE
-A SANE_INBOUND -p tcp --dport 15006 -j RETURN
-A SANE_INBOUND -p tcp -j SANE_IN_REDIRECT
-A SANE_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A SANE_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A SANE_OUTPUT -o lo -j RETURN
-A SANE_OUTPUT -j SANE_REDIRECT
-A SANE_REDIRECT -p tcp -j REDIRECT --to-ports 15001
COMMIT
# Completed on Mon Jan  1 00:00:00 2024
";

    #[test]
    fn uninstall_removes_exactly_our_jumps_and_chains() {
        assert_eq!(
            removal_rules(SAVED).unwrap(),
            "\
# sane-proxy iptables uninstall
*nat
-D PREROUTING -p tcp -j SANE_INBOUND
-D OUTPUT -p tcp -j SANE_OUTPUT
-F SANE_INBOUND
-F SANE_IN_REDIRECT
-F SANE_OUTPUT
-F SANE_REDIRECT
-X SANE_INBOUND
-X SANE_IN_REDIRECT
-X SANE_OUTPUT
-X SANE_REDIRECT
COMMIT
"
        );
        // Nothing installed: nothing to do (uninstall is idempotent).
        let clean: String = SAVED
            .lines()
            .filter(|l| !l.contains("SANE_"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(removal_rules(&clean), None);
        // A half-removed install (a jump gone) still cleans up the rest.
        let half = SAVED.replace("-A OUTPUT -p tcp -j SANE_OUTPUT\n", "");
        let rules = removal_rules(&half).unwrap();
        assert!(!rules.contains("-D OUTPUT"), "{rules}");
        assert!(rules.contains("-X SANE_OUTPUT"), "{rules}");
    }

    #[test]
    fn reinstall_deletes_the_old_jumps_in_the_same_transaction() {
        let rules = install_rules(&capture(&[]), &installed_jumps(SAVED));
        let jumps_deleted = rules.find("-D PREROUTING -p tcp -j SANE_INBOUND").unwrap();
        let jump_added = rules.find("-A PREROUTING -p tcp -j SANE_INBOUND").unwrap();
        assert!(jumps_deleted < jump_added, "{rules}");
        assert!(
            rules.contains("-D OUTPUT -p tcp -j SANE_OUTPUT\n"),
            "{rules}"
        );
        assert_eq!(rules.matches("COMMIT").count(), 1);
    }
}
