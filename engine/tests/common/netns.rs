//! A network namespace of the test's own, joined to this one by a veth pair on a private
//! /30, with a ferryd running inside it and nftables rules to make its paths fail.
//! Everything is removed on drop, failure included; where namespaces cannot be made here
//! (no `ip`/`nft`, not root), [`Netns::create`] says why and the test skips.
#![allow(dead_code)] // not every test binary uses all of it

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::FERRYD;

/// Namespaces made by this process so far (tests run in parallel threads).
static MADE: AtomicU32 = AtomicU32::new(0);

/// A network namespace with a veth pair to this one; deleted on drop (with its end of the
/// pair, its nftables tables and its sockets).
pub struct Netns {
    pub name: String,
    /// This namespace's address on the pair.
    pub host_ip: String,
    /// The namespace's address on the pair.
    pub ns_ip: String,
}

impl Netns {
    /// `Err` (the reason) where namespaces cannot be made here.
    pub fn create() -> Result<Netns, String> {
        let have = |prog: &str, arg: &str| {
            Command::new(prog)
                .arg(arg)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !have("ip", "-V") {
            return Err("no ip(8)".into());
        }
        if !have("nft", "--version") {
            return Err("no nft(8) (apt-get install nftables)".into());
        }
        let pid = std::process::id();
        let n = MADE.fetch_add(1, Ordering::Relaxed);
        assert!(n < 40, "too many namespaces in one test process");
        let name = format!("ferryns{pid}n{n}");
        // 10.(213 + n).x.y/30 from the pid: other test processes pick other subnets.
        let net = |host: u32| {
            format!(
                "10.{}.{}.{}",
                213 + n,
                (pid >> 6) & 0xff,
                (pid & 0x3f) * 4 + host
            )
        };
        let ns = Netns {
            name: name.clone(),
            host_ip: net(1),
            ns_ip: net(2),
        };
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "ip netns add failed (root needed): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let (a, b) = (format!("f{pid}n{n}a"), format!("f{pid}n{n}b"));
        let ns_name = name.as_str();
        let (host_cidr, ns_cidr) = (format!("{}/30", ns.host_ip), format!("{}/30", ns.ns_ip));
        let steps: Vec<Vec<&str>> = vec![
            vec!["link", "add", &a, "type", "veth", "peer", "name", &b],
            vec!["link", "set", &b, "netns", ns_name],
            vec!["addr", "add", &host_cidr, "dev", &a],
            vec!["link", "set", &a, "up"],
            vec!["-n", ns_name, "addr", "add", &ns_cidr, "dev", &b],
            vec!["-n", ns_name, "link", "set", &b, "up"],
            vec!["-n", ns_name, "link", "set", "lo", "up"],
        ];
        for step in steps {
            let out = Command::new("ip").args(&step).output().unwrap();
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
                // Dropping `ns` deletes the namespace; the host end of the pair goes too.
                let _ = Command::new("ip").args(["link", "del", &a]).output();
                return Err(format!("ip {step:?}: {err}"));
            }
        }
        Ok(ns)
    }

    /// Runs `args` inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Result<(), String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Adds an nftables table `table` inside the namespace with a filter chain on `hook`
    /// (`input` or `output`) holding one `rule` (e.g. `udp dport 4000 drop`). The table
    /// goes with the namespace.
    pub fn nft_rule(&self, table: &str, hook: &str, rule: &str) {
        self.exec(&["nft", &format!("add table inet {table}")])
            .unwrap();
        self.exec(&[
            "nft",
            &format!(
                "add chain inet {table} {hook} {{ type filter hook {hook} priority 0; policy \
                 accept; }}"
            ),
        ])
        .unwrap();
        self.exec(&["nft", &format!("add rule inet {table} {hook} {rule}")])
            .unwrap();
    }

    /// Starts `ferryd run --config CONFIG` inside the namespace with free ports and waits
    /// for its ready line; its stderr goes to `stderr`.
    pub fn ferryd(&self, config: &Path, ctl: &Path, stderr: &Path) -> NsFerryd {
        let err = std::fs::File::create(stderr).unwrap();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, FERRYD, "run", "--config"])
            .arg(config)
            .args(["--tcp-port", "0", "--udp-port", "0", "--ctl-socket"])
            .arg(ctl)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("ip netns exec ferryd");
        let stdout = child.stdout.take().unwrap();
        let mut ferryd = NsFerryd {
            child,
            tcp_port: 0,
            udp_port: 0,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let ready = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!(
                    "no ready line from ferryd in the namespace; stderr:\n{}",
                    std::fs::read_to_string(stderr).unwrap_or_default()
                )
            });
        let port = |key: &str| -> u16 {
            ready
                .split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| p.parse().ok())
                .unwrap_or_else(|| panic!("no {key} in {ready:?}"))
        };
        ferryd.tcp_port = port("tcp=");
        ferryd.udp_port = port("udp=");
        ferryd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end (and so the pair) and its nftables.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A ferryd inside a namespace; killed on drop (drop it before the namespace).
pub struct NsFerryd {
    child: Child,
    pub tcp_port: u16,
    pub udp_port: u16,
}

impl Drop for NsFerryd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
