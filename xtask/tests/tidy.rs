//! Tidy: the crate graph and the repository rules STYLE.md sets, checked against
//! `cargo metadata` and the files themselves. Each test is one rule; its failure message
//! names the rule and every place that breaks it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

/// Crates that do I/O, spawn threads or touch the OS: none of them may be a direct
/// dependency of the pure crates (`ferry-proto`, `ferry-tuning`).
const IO_CRATES: &[&str] = &[
    "tokio",
    "tokio-uring",
    "glommio",
    "monoio",
    "io-uring",
    "mio",
    "polling",
    "libc",
    "nix",
    "rustix",
    "socket2",
    "russh",
    "async-std",
    "smol",
    "rayon",
    "crossbeam-channel",
    "affinity",
    "core_affinity",
    "memmap2",
];

/// Library crates exempt from `#![warn(missing_docs)]`.
const DOCS_EXEMPT: &[&str] = &["ferry-benches"];

/// Crates that must carry a `clippy.toml` banning clock reads.
const NO_CLOCK: &[&str] = &["ferry-proto", "ferry-tuning"];
const CLOCK_METHODS: &[&str] = &["std::time::Instant::now", "std::time::SystemTime::now"];

#[derive(Debug)]
struct Dep {
    name: String,
    /// `[dev-dependencies]`; normal and build dependencies are both "not dev".
    dev: bool,
}

#[derive(Debug)]
struct Package {
    name: String,
    dir: PathBuf,
    deps: Vec<Dep>,
    /// Root source file of the library target, if the package has one.
    lib: Option<PathBuf>,
}

struct Workspace {
    root: PathBuf,
    packages: Vec<Package>,
}

impl Workspace {
    fn package(&self, name: &str) -> &Package {
        self.packages
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no workspace package named {name}"))
    }

    fn is_ours(&self, name: &str) -> bool {
        self.packages.iter().any(|p| p.name == name)
    }

    /// Our crates that `package` depends on, dev-dependencies included or not.
    fn ours(&self, package: &str, with_dev: bool) -> BTreeSet<&str> {
        self.package(package)
            .deps
            .iter()
            .filter(|d| (with_dev || !d.dev) && self.is_ours(&d.name))
            .map(|d| d.name.as_str())
            .collect()
    }
}

fn workspace() -> &'static Workspace {
    static WS: OnceLock<Workspace> = OnceLock::new();
    WS.get_or_init(load)
}

fn load() -> Workspace {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--manifest-path",
        ])
        .arg(&manifest)
        .output()
        .unwrap_or_else(|e| panic!("running {cargo} metadata: {e}"));
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let str_of = |v: &Value| v.as_str().expect("a string in cargo metadata").to_owned();

    let packages = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            let manifest = PathBuf::from(str_of(&p["manifest_path"]));
            let deps = p["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                .map(|d| Dep {
                    name: str_of(&d["name"]),
                    dev: d["kind"].as_str() == Some("dev"),
                })
                .collect();
            let lib = p["targets"]
                .as_array()
                .expect("targets")
                .iter()
                .find(|t| {
                    t["kind"].as_array().is_some_and(|k| {
                        k.iter()
                            .any(|k| matches!(k.as_str(), Some("lib" | "rlib" | "proc-macro")))
                    })
                })
                .map(|t| PathBuf::from(str_of(&t["src_path"])));
            Package {
                name: str_of(&p["name"]),
                dir: manifest.parent().expect("manifest in a folder").to_owned(),
                deps,
                lib,
            }
        })
        .collect();
    Workspace {
        root: PathBuf::from(str_of(&meta["workspace_root"])),
        packages,
    }
}

/// Fails with the rule's name and every violation, if there are any.
fn check(rule: &str, violations: Vec<String>) {
    assert!(
        violations.is_empty(),
        "tidy rule broken: {rule}\n  - {}\n(see STYLE.md and ARCHITECTURE.md)",
        violations.join("\n  - ")
    );
}

/// Our crates `package` may depend on (normal and build dependencies), and why not others.
fn check_allowed(package: &str, allowed: &[&str], required: &[&str], rule: &str) {
    let ws = workspace();
    let deps = ws.ours(package, false);
    let mut v: Vec<String> = deps
        .iter()
        .filter(|d| !allowed.contains(d))
        .map(|d| format!("{package} depends on {d}"))
        .collect();
    v.extend(
        required
            .iter()
            .filter(|r| !deps.contains(*r))
            .map(|r| format!("{package} does not depend on {r}")),
    );
    check(rule, v);
}

fn check_no_io_crates(package: &str, rule: &str) {
    let v = workspace()
        .package(package)
        .deps
        .iter()
        .filter(|d| !d.dev && IO_CRATES.contains(&d.name.as_str()))
        .map(|d| format!("{package} depends on {}", d.name))
        .collect();
    check(rule, v);
}

#[test]
fn proto_depends_on_tuning_only() {
    check_allowed(
        "ferry-proto",
        &["ferry-tuning"],
        &["ferry-tuning"],
        "ferry-proto depends on ferry-tuning and on no other ferry crate",
    );
}

#[test]
fn proto_does_no_io() {
    check_no_io_crates(
        "ferry-proto",
        "ferry-proto is sans-IO: no crate that does I/O or spawns threads",
    );
}

#[test]
fn tuning_is_a_leaf() {
    check_allowed(
        "ferry-tuning",
        &[],
        &[],
        "ferry-tuning depends on no ferry crate",
    );
    check_no_io_crates(
        "ferry-tuning",
        "ferry-tuning is pure: no crate that does I/O or spawns threads",
    );
}

#[test]
fn io_is_a_leaf() {
    check_allowed(
        "ferry-io",
        &[],
        &[],
        "ferry-io depends on no ferry crate (as quinn-udp does not depend on quinn-proto)",
    );
}

#[test]
fn ctl_never_depends_on_the_engine() {
    check_allowed(
        "ferry-ctl",
        &["ferry-tuning"],
        &[],
        "ferry-ctl holds plain messages: no ferry-engine, ferry-proto, ferry-io (ferry-tuning at most)",
    );
}

#[test]
fn sim_never_depends_on_io_or_engine() {
    let v = workspace()
        .ours("ferry-sim", true)
        .into_iter()
        .filter(|d| matches!(*d, "ferry-io" | "ferry-engine"))
        .map(|d| format!("ferry-sim depends on {d}"))
        .collect();
    check(
        "ferry-sim never depends on ferry-io or ferry-engine, even as a dev-dependency",
        v,
    );
}

/// The engine is ferry-io's one user; the benchmarks (never shipped) measure its calls.
#[test]
fn only_engine_depends_on_io() {
    let ws = workspace();
    let v = ws
        .packages
        .iter()
        .filter(|p| !matches!(p.name.as_str(), "ferry-engine" | "ferry-benches"))
        .filter(|p| ws.ours(&p.name, false).contains("ferry-io"))
        .map(|p| format!("{} depends on ferry-io", p.name))
        .collect();
    check("only ferry-engine depends on ferry-io", v);
}

#[test]
fn architecture_names_every_crate() {
    let ws = workspace();
    let path = ws.root.join("ARCHITECTURE.md");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("tidy rule broken: ARCHITECTURE.md exists ({e})"));
    let v = ws
        .packages
        .iter()
        .filter(|p| !text.contains(&format!("`{}`", p.name)))
        .map(|p| format!("`{}` is not named in ARCHITECTURE.md", p.name))
        .collect();
    check("every workspace package appears in ARCHITECTURE.md", v);
}

#[test]
fn libraries_warn_on_missing_docs() {
    let v = workspace()
        .packages
        .iter()
        .filter(|p| !DOCS_EXEMPT.contains(&p.name.as_str()))
        .filter_map(|p| Some((p, p.lib.as_ref()?)))
        .filter(|(_, lib)| {
            let src = std::fs::read_to_string(lib).unwrap_or_default();
            !src.lines().map(str::trim).any(|l| {
                (l.starts_with("#![warn(") || l.starts_with("#![deny("))
                    && l.contains("missing_docs")
            })
        })
        .map(|(p, lib)| {
            format!(
                "{} ({}) lacks #![warn(missing_docs)]",
                p.name,
                lib.display()
            )
        })
        .collect();
    check("every library crate has #![warn(missing_docs)]", v);
}

#[test]
fn pure_crates_ban_the_clock() {
    let ws = workspace();
    let mut v = Vec::new();
    for name in NO_CLOCK {
        let path = ws.package(name).dir.join("clippy.toml");
        let Ok(text) = std::fs::read_to_string(&path) else {
            v.push(format!("{name} has no {}", path.display()));
            continue;
        };
        if !text.contains("disallowed-methods") {
            v.push(format!("{} has no disallowed-methods", path.display()));
        }
        for m in CLOCK_METHODS {
            if !text.contains(&format!("\"{m}\"")) {
                v.push(format!("{} does not ban {m}", path.display()));
            }
        }
    }
    check(
        "clippy.toml in ferry-proto and ferry-tuning bans Instant::now and SystemTime::now",
        v,
    );
}
