//! ferryd: the transfer server. SSH control on TCP, data on UDP.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ferry_engine::config::{self, FerrydConfig};
use ferry_engine::control;
use ferry_engine::ctl_server::{self, ServerInfo};
use ferry_engine::data::DataPlane;

#[derive(Parser)]
#[command(name = "ferryd", version, about = "ferry's transfer server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a server directory: ferryd.toml, a fresh host key, an empty authorized_keys
    /// and a docroot.
    Init {
        /// The directory (created if missing; existing files are never overwritten).
        dir: PathBuf,
    },
    /// Run the server.
    Run {
        /// The configuration file.
        #[arg(long, short = 'c')]
        config: PathBuf,
        /// TCP (SSH) port, overriding the file; 0 picks a free one.
        #[arg(long)]
        tcp_port: Option<u16>,
        /// UDP (data) port, overriding the file; 0 picks a free one.
        #[arg(long)]
        udp_port: Option<u16>,
        /// Control socket, overriding the file.
        #[arg(long)]
        ctl_socket: Option<PathBuf>,
        /// Address to listen on, overriding the file.
        #[arg(long)]
        listen: Option<std::net::IpAddr>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init { dir } => init(dir),
        Command::Run {
            config,
            tcp_port,
            udp_port,
            ctl_socket,
            listen,
        } => run(config, tcp_port, udp_port, ctl_socket, listen),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferryd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init(dir: PathBuf) -> anyhow::Result<()> {
    let report = config::init(&dir)?;
    println!("wrote {}", report.config.display());
    println!("host key {}", report.fingerprint);
    println!(
        "add client keys to {} (one per line; the comment is the user name)",
        dir.join("authorized_keys").display()
    );
    Ok(())
}

fn run(
    path: PathBuf,
    tcp_port: Option<u16>,
    udp_port: Option<u16>,
    ctl_socket: Option<PathBuf>,
    listen: Option<std::net::IpAddr>,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut config = FerrydConfig::load(&path)?;
    if let Some(p) = tcp_port {
        config.tcp_port = p;
    }
    if let Some(p) = udp_port {
        config.udp_port = p;
    }
    if let Some(p) = ctl_socket {
        config.ctl_socket = p;
    }
    if let Some(a) = listen {
        config.listen = a;
    }
    if !config.docroot.is_dir() {
        anyhow::bail!(
            "the docroot {} is not a directory (create it, or set docroot in {})",
            config.docroot.display(),
            path.display()
        );
    }

    ferry_engine::logging::init(config.log_format);
    let udp = SocketAddr::new(config.listen, config.udp_port);
    // One data thread per core, pinned, each with its own UDP socket (the first on the
    // configured port, the others on free ports told to clients over SSH).
    let cores = if config.cores.is_empty() {
        ferry_io::placement::available_cores()
    } else {
        config.cores.clone()
    };
    let data = DataPlane::start_on(udp, &cores)
        .with_context(|| format!("cannot start the data plane on UDP {udp}"))?;
    data.caps().set(config.caps.settings());
    ferry_engine::caps::spawn_sharer(data.clone()).context("cannot start the cap sharer")?;
    let udp_addr = data.local_addr();
    let tcp = SocketAddr::new(config.listen, config.tcp_port);
    let listener = TcpListener::bind(tcp).with_context(|| format!("cannot listen on TCP {tcp}"))?;
    let ctl = config.ctl_socket.clone();
    let metrics_listen = config.metrics_listen;
    let server = control::serve(config, data.clone(), listener)?;
    server
        .shutdown_on_signals()
        .context("cannot install the signal handlers")?;
    let info = ServerInfo {
        tcp: server.local_addr(),
        udp: udp_addr,
        started,
    };
    let metrics = match metrics_listen {
        Some(addr) => Some(
            ferry_engine::metrics::serve(addr, data.clone())
                .with_context(|| format!("cannot serve metrics on {addr}"))?,
        ),
        None => None,
    };
    let ctl_server = ctl_server::serve(&ctl, data.clone(), info).context("control socket")?;

    let mut out = std::io::stdout().lock();
    // `metrics=` only when enabled: the contract's fields come first, as they always do.
    let metrics = metrics.map_or_else(String::new, |a| format!(" metrics={a}"));
    writeln!(
        out,
        "ready tcp={} udp={} ctl={}{metrics}",
        server.local_addr(),
        udp_addr,
        ctl.display()
    )
    .and_then(|()| out.flush())
    .context("cannot write the ready line")?;
    drop(out);

    server.wait();
    // Sessions still running end here, so that what they received stays resumable.
    data.abandon_all(Duration::from_secs(10));
    ctl_server.shutdown();
    eprintln!("ferryd: stopped");
    Ok(())
}
