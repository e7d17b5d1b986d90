//! ferryctl: watch and steer a running ferryd through its control socket.

mod top;

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{ArgGroup, Parser, Subcommand};
use ferry_ctl::{
    Caps, Command, DEFAULT_SOCKET, LaneStats, MAX_RESPONSE, POLICIES, Payload, Request, Response,
    Session, Status, encode_line, human_bytes, human_rate, parse_rate,
};

/// How long ferryd gets to answer one request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(
    name = "ferryctl",
    version,
    about = "Watch and steer a running ferryd: sessions, rates, pause, resume, cancel",
    after_help = "Rates are bits per second: 800k, 400m, 10g. Exit status 1 on any error."
)]
struct Cli {
    /// ferryd's control socket (its `ctl_socket` setting or `--ctl-socket`).
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print one JSON document instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The server: version, uptime, addresses, sessions, aggregate rate.
    Status,
    /// Every running session.
    Sessions,
    /// One session in detail.
    Show {
        /// Session id (from `ferryctl sessions`).
        id: u32,
    },
    /// Change a session's target rate, minimum rate or policy while it runs.
    #[command(group(ArgGroup::new("change").required(true).multiple(true)))]
    SetRate {
        /// Session id, or a multi-session transfer's tag (`t…`), whose sessions share the
        /// rates evenly (both from `ferryctl sessions`).
        #[arg(value_parser = parse_target)]
        id: Target,
        /// New target rate (e.g. 400m).
        #[arg(long, value_name = "R", value_parser = parse_rate, group = "change")]
        target: Option<u64>,
        /// New minimum rate.
        #[arg(long, value_name = "R", value_parser = parse_rate, group = "change")]
        min: Option<u64>,
        /// New policy.
        #[arg(long, value_name = "P", value_parser = POLICIES, group = "change")]
        policy: Option<String>,
    },
    /// Stop a session sending data; it stays connected.
    Pause {
        /// Session id.
        id: u32,
    },
    /// Continue a paused session where it was.
    Resume {
        /// Session id.
        id: u32,
    },
    /// End a session; the receiver keeps what it has as a resumable `.partial`.
    Cancel {
        /// Session id.
        id: u32,
    },
    /// Counters and latency percentiles (feedback RTT, queueing delay, disk read and
    /// write) of each data lane, that is each core.
    Stats,
    /// Show the host-wide caps, or set them ("none" lifts one); every session on every
    /// core gets its new share within a second.
    Caps {
        /// Cap on all data this host receives (e.g. 300m, or none).
        #[arg(long, value_name = "R", value_parser = parse_cap)]
        inbound: Option<u64>,
        /// Cap on all data this host sends.
        #[arg(long, value_name = "R", value_parser = parse_cap)]
        outbound: Option<u64>,
        /// Cap on all low-policy sessions together.
        #[arg(long, value_name = "R", value_parser = parse_cap)]
        background: Option<u64>,
    },
    /// A live view: the server, every session, the selected session's rate over the last
    /// minute. Keys: q or Esc quits, up/down selects, p/r pause/resume the selected session.
    Top {
        /// How often to ask ferryd (1s, 500ms).
        #[arg(long, value_name = "T", default_value = "1s", value_parser = top::parse_interval)]
        interval: Duration,
        /// Print one frame as text and exit, for scripts (no key handling, no history).
        #[arg(long)]
        once: bool,
    },
}

/// A cap as typed: a rate, or `none` (sent as 0, which lifts it).
fn parse_cap(s: &str) -> Result<u64, String> {
    if s.trim().eq_ignore_ascii_case("none") {
        Ok(0)
    } else {
        parse_rate(s)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferryctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    if let Cmd::Top { interval, once } = cli.command {
        if cli.json {
            bail!("top has no --json; use sessions --json or status --json");
        }
        return top::run(&cli.socket, interval, once);
    }
    let mut conn = Conn::open(&cli.socket)?;
    let mut out = std::io::stdout().lock();
    match &cli.command {
        Cmd::Status => {
            let Payload::Status(s) = conn.call(Command::Status)? else {
                bail!("ferryd answered status with something else");
            };
            if cli.json {
                print_json(&mut out, &s)?;
            } else {
                write!(out, "{}", status_text(&s))?;
            }
        }
        Cmd::Sessions => {
            let sessions = conn.sessions()?;
            if cli.json {
                print_json(&mut out, &serde_json::json!({ "sessions": sessions }))?;
            } else {
                write!(out, "{}", sessions_table(&sessions))?;
            }
        }
        Cmd::Show { id } => {
            let sessions = conn.sessions()?;
            let s = sessions.iter().find(|s| s.id == *id).ok_or_else(|| {
                anyhow!("no session {id} (it may have ended; ferryctl sessions lists them)")
            })?;
            if cli.json {
                print_json(&mut out, s)?;
            } else {
                write!(out, "{}", session_detail(s))?;
            }
        }
        Cmd::SetRate {
            id,
            target,
            min,
            policy,
        } => {
            conn.call(match id {
                Target::Session(id) => Command::SetRate {
                    id: *id,
                    target_bps: *target,
                    min_bps: *min,
                    policy: policy.clone(),
                },
                Target::Transfer(tag) => Command::SetTransferRate {
                    transfer: tag.clone(),
                    target_bps: *target,
                    min_bps: *min,
                    policy: policy.clone(),
                },
            })?;
            let mut changes = Vec::new();
            if let Some(t) = target {
                changes.push(format!("target {}", human_rate(*t)));
            }
            if let Some(m) = min {
                changes.push(format!("minimum {}", human_rate(*m)));
            }
            if let Some(p) = policy {
                changes.push(format!("policy {p}"));
            }
            match id {
                Target::Session(id) => {
                    done(&mut out, cli.json, *id, "set-rate", &changes.join(", "))?
                }
                Target::Transfer(tag) if cli.json => print_json(
                    &mut out,
                    &serde_json::json!({ "ok": true, "transfer": tag, "op": "set-rate" }),
                )?,
                Target::Transfer(tag) => writeln!(
                    out,
                    "transfer {tag}: {} (shared evenly by its sessions)",
                    changes.join(", ")
                )?,
            }
        }
        Cmd::Pause { id } => {
            conn.call(Command::Pause { id: *id })?;
            done(&mut out, cli.json, *id, "pause", "paused")?;
        }
        Cmd::Resume { id } => {
            conn.call(Command::Resume { id: *id })?;
            done(&mut out, cli.json, *id, "resume", "resumed")?;
        }
        Cmd::Cancel { id } => {
            conn.call(Command::Cancel { id: *id })?;
            done(&mut out, cli.json, *id, "cancel", "cancelled")?;
        }
        Cmd::Caps {
            inbound,
            outbound,
            background,
        } => {
            let Payload::Caps(c) = conn.call(Command::Caps {
                inbound_bps: *inbound,
                outbound_bps: *outbound,
                background_bps: *background,
            })?
            else {
                bail!("ferryd answered caps with something else");
            };
            if cli.json {
                print_json(&mut out, &c)?;
            } else {
                write!(out, "{}", caps_text(&c))?;
            }
        }
        Cmd::Stats => {
            let Payload::Stats { lanes } = conn.call(Command::Stats)? else {
                bail!("ferryd answered stats with something else");
            };
            if cli.json {
                print_json(&mut out, &serde_json::json!({ "lanes": lanes }))?;
            } else {
                write!(out, "{}", stats_text(&lanes))?;
            }
        }
        Cmd::Top { .. } => unreachable!("handled above"),
    }
    out.flush()?;
    Ok(())
}

/// One connection to ferryd.
struct Conn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Conn {
    fn open(path: &Path) -> anyhow::Result<Conn> {
        let p = path.display();
        let stream = UnixStream::connect(path).map_err(|e| {
            let hint = match e.kind() {
                std::io::ErrorKind::PermissionDenied => {
                    "run ferryctl as root or as the user that runs ferryd".to_string()
                }
                _ => format!("is ferryd running with --ctl-socket {p}?"),
            };
            anyhow!("cannot reach ferryd at {p}: {e}; {hint}")
        })?;
        stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
        let writer = stream.try_clone()?;
        Ok(Conn {
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends one request and returns the payload of a good answer; an error answer
    /// becomes an error.
    fn call(&mut self, command: Command) -> anyhow::Result<Payload> {
        // A refused connection may be closed before the request is written: the reason
        // can still be waiting to be read, so a failed write is reported only without one.
        let sent = self.writer.write_all(&encode_line(&Request::new(command)));
        let line = match ferry_ctl::read_line(&mut self.reader, MAX_RESPONSE) {
            Ok(Some(l)) => l,
            Ok(None) | Err(_) if sent.is_err() => {
                return Err(sent.unwrap_err()).context("sending the request to ferryd");
            }
            Ok(None) => bail!("ferryd closed the control connection without answering"),
            Err(ferry_ctl::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                bail!(
                    "ferryd did not answer within {} s",
                    ANSWER_TIMEOUT.as_secs()
                )
            }
            Err(e) => return Err(e).context("reading ferryd's answer"),
        };
        match ferry_ctl::decode_response(&line).context("reading ferryd's answer")? {
            Response::Ok(p) => Ok(p),
            Response::Error { message, .. } => Err(anyhow!("{message}")),
        }
    }

    fn sessions(&mut self) -> anyhow::Result<Vec<Session>> {
        match self.call(Command::Sessions)? {
            Payload::Sessions { sessions } => Ok(sessions),
            _ => bail!("ferryd answered sessions with something else"),
        }
    }
}

fn print_json<T: serde::Serialize>(out: &mut impl Write, v: &T) -> anyhow::Result<()> {
    serde_json::to_writer_pretty(&mut *out, v)?;
    writeln!(out)?;
    Ok(())
}

/// What `set-rate` steers: one session, or every session of a multi-session transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Session(u32),
    Transfer(String),
}

fn parse_target(s: &str) -> Result<Target, String> {
    if let Ok(id) = s.parse() {
        return Ok(Target::Session(id));
    }
    let tag = s
        .strip_prefix('t')
        .filter(|hex| (1..32).contains(&hex.len()) && hex.bytes().all(|b| b.is_ascii_hexdigit()));
    match tag {
        Some(_) => Ok(Target::Transfer(s.to_string())),
        None => Err(format!(
            "{s:?} is neither a session id nor a transfer tag (see ferryctl sessions)"
        )),
    }
}

fn done(out: &mut impl Write, json: bool, id: u32, op: &str, what: &str) -> anyhow::Result<()> {
    if json {
        print_json(out, &serde_json::json!({ "ok": true, "id": id, "op": op }))
    } else {
        writeln!(out, "session {id}: {what}")?;
        Ok(())
    }
}

fn duration_text(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d {h}h {m}m")
    } else if h > 0 {
        format!("{h}h {m}m {s}s")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

fn status_text(s: &Status) -> String {
    let mut out = format!(
        "ferryd {} (pid {}), up {}\n\
         tcp {}  udp {}  ctl {}\n\
         sessions {} ({} sending, {} receiving)\n\
         rate {} (sending {}, receiving {})\n\
         caps: inbound {}, outbound {}, background {}\n",
        s.version,
        s.pid,
        duration_text(s.uptime_s),
        s.tcp,
        s.udp,
        s.ctl,
        s.sessions,
        s.sending,
        s.receiving,
        human_rate(s.rate_bps),
        human_rate(s.send_rate_bps),
        human_rate(s.recv_rate_bps),
        cap_text(s.caps.inbound_bps),
        cap_text(s.caps.outbound_bps),
        cap_text(s.caps.background_bps),
    );
    for l in &s.lanes {
        let core = l
            .core
            .map_or_else(|| "unpinned".into(), |c| format!("core {c}"));
        let ids: Vec<String> = l.sessions.iter().map(u32::to_string).collect();
        let ids = if ids.is_empty() {
            "no sessions".into()
        } else {
            ids.join(" ")
        };
        out += &format!("{core}: udp port {}, {ids}\n", l.port);
    }
    out
}

fn cap_text(cap: Option<u64>) -> String {
    cap.map_or_else(|| "none".into(), human_rate)
}

fn stats_text(lanes: &[LaneStats]) -> String {
    let mut out = String::new();
    for l in lanes {
        let core = l
            .core
            .map_or_else(|| "unpinned".into(), |c| format!("core {c}"));
        let busy = l.busy_s * 100.0 / l.uptime_s.max(1e-9);
        out += &format!(
            "{core}, udp port {}: busy {busy:.1}% of {}\n  sessions {} started, {} ended ({} failed); sent {}, received {}, re-sent {}\n",
            l.port,
            duration_text(l.uptime_s),
            l.sessions_started,
            l.sessions_ended,
            l.sessions_failed,
            human_bytes(l.bytes_sent),
            human_bytes(l.bytes_received),
            human_bytes(l.retransmitted_bytes),
        );
        if !l.drops.is_empty() {
            let drops: Vec<String> = l.drops.iter().map(|(k, v)| format!("{k} {v}")).collect();
            out += &format!("  drops: {}\n", drops.join(", "));
        }
        out += &format!(
            "  {:<13} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
            "latency", "count", "p50", "p90", "p99", "p99.9", "max"
        );
        for p in &l.latencies {
            out += &format!(
                "  {:<13} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
                p.name,
                p.count,
                micros(p.p50_us),
                micros(p.p90_us),
                micros(p.p99_us),
                micros(p.p999_us),
                micros(p.max_us)
            );
        }
    }
    out
}

/// Microseconds as people read them.
fn micros(us: u64) -> String {
    match us {
        0 => "-".into(),
        1..1_000 => format!("{us} µs"),
        1_000..1_000_000 => format!("{:.2} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

fn caps_text(c: &Caps) -> String {
    let line = |name: &str, cap: Option<u64>, rate: u64| match cap {
        Some(cap) => format!(
            "{name:<11} cap {:>12}  now {:>12} ({:.0}%)\n",
            human_rate(cap),
            human_rate(rate),
            rate as f64 * 100.0 / cap.max(1) as f64
        ),
        None => format!(
            "{name:<11} cap {:>12}  now {:>12}\n",
            "none",
            human_rate(rate)
        ),
    };
    line("inbound", c.inbound_bps, c.inbound_rate_bps)
        + &line("outbound", c.outbound_bps, c.outbound_rate_bps)
        + &line("background", c.background_bps, c.background_rate_bps)
}

fn or_dash(s: Option<&str>) -> String {
    match s {
        Some(v) if !v.is_empty() => v.to_string(),
        _ => "-".into(),
    }
}

fn percent(bytes: u64, total: u64) -> String {
    if total == 0 {
        return "100%".into();
    }
    format!("{:.0}%", bytes as f64 * 100.0 / total as f64)
}

/// What the rate columns show on the receiving side, where the peer decides the rate.
fn sender_only(s: &Session, v: String) -> String {
    if s.direction == "send" { v } else { "-".into() }
}

fn sessions_table(sessions: &[Session]) -> String {
    if sessions.is_empty() {
        return "no sessions\n".into();
    }
    let header = [
        "ID", "DIR", "PEER", "USER", "FILES", "DONE", "OF", "%", "RATE", "TARGET", "MIN", "POLICY",
        "LOSS", "RTT", "STATE",
    ];
    let row = |id: String, s: &Session| {
        vec![
            id,
            s.direction.clone(),
            or_dash(s.peer.as_deref()),
            or_dash(s.user.as_deref()),
            s.files.to_string(),
            human_bytes(s.bytes),
            human_bytes(s.total),
            percent(s.bytes, s.total),
            human_rate(s.rate_bps),
            sender_only(s, human_rate(s.target_bps)),
            sender_only(s, human_rate(s.min_bps)),
            or_dash(Some(&s.policy)),
            sender_only(s, format!("{:.2}%", s.loss * 100.0)),
            sender_only(s, format!("{:.1} ms", s.rtt_ms)),
            s.state.clone(),
        ]
    };
    // A multi-session transfer is one row, its sessions beneath it.
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut shown = std::collections::HashSet::new();
    for s in sessions {
        let Some(tag) = &s.transfer else {
            rows.push(row(s.id.to_string(), s));
            continue;
        };
        if !shown.insert(tag.clone()) {
            continue;
        }
        let members: Vec<&Session> = sessions
            .iter()
            .filter(|m| m.transfer.as_ref() == Some(tag))
            .collect();
        let mut whole = transfer_summary(&members);
        whole.state = format!("{} sessions", members.len());
        rows.push(row(tag.clone(), &whole));
        for (i, m) in members.iter().enumerate() {
            let branch = if i + 1 == members.len() {
                "└ "
            } else {
                "├ "
            };
            rows.push(row(format!("{branch}{}", m.id), m));
        }
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let parts: Vec<String> = cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for r in &rows {
        line(&mut r.iter().map(String::as_str));
    }
    out
}

/// The sessions of one transfer as one: bytes, totals and rates added up, the loss and
/// RTT of the worst.
fn transfer_summary(members: &[&Session]) -> Session {
    let first = members[0];
    Session {
        direction: first.direction.clone(),
        peer: first.peer.clone(),
        user: first.user.clone(),
        policy: first.policy.clone(),
        files: members.iter().map(|m| m.files).sum(),
        bytes: members.iter().map(|m| m.bytes).sum(),
        total: members.iter().map(|m| m.total).sum(),
        rate_bps: members.iter().map(|m| m.rate_bps).sum(),
        target_bps: members.iter().map(|m| m.target_bps).sum(),
        min_bps: members.iter().map(|m| m.min_bps).sum(),
        loss: members.iter().map(|m| m.loss).fold(0.0, f64::max),
        rtt_ms: members.iter().map(|m| m.rtt_ms).fold(0.0, f64::max),
        transfer: first.transfer.clone(),
        ..Session::default()
    }
}

fn session_detail(s: &Session) -> String {
    let rows = [
        ("id", s.id.to_string()),
        ("direction", s.direction.clone()),
        ("peer", or_dash(s.peer.as_deref())),
        ("user", or_dash(s.user.as_deref())),
        ("state", s.state.clone()),
        ("files", s.files.to_string()),
        (
            "progress",
            format!(
                "{} of {} ({}; {} of {} bytes)",
                human_bytes(s.bytes),
                human_bytes(s.total),
                percent(s.bytes, s.total),
                s.bytes,
                s.total
            ),
        ),
        ("rate", human_rate(s.rate_bps)),
        ("target", sender_only(s, human_rate(s.target_bps))),
        ("minimum", sender_only(s, human_rate(s.min_bps))),
        ("host cap", cap_text(s.ceiling_bps)),
        ("policy", or_dash(Some(&s.policy))),
        ("loss", sender_only(s, format!("{:.2}%", s.loss * 100.0))),
        ("rtt", sender_only(s, format!("{:.2} ms", s.rtt_ms))),
        ("queue", sender_only(s, format!("{:.2} ms", s.queue_ms))),
    ];
    let mut out = String::new();
    for (k, v) in rows {
        out.push_str(&format!("{k:<10} {v}\n"));
    }
    if s.direction != "send" {
        out.push_str("(this host receives: the peer sets the rate)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn set_rate_needs_a_change_and_parses_rates() {
        assert!(Cli::try_parse_from(["ferryctl", "set-rate", "5"]).is_err());
        let cli = Cli::try_parse_from([
            "ferryctl", "--socket", "/x", "set-rate", "5", "--target", "400m",
        ])
        .unwrap();
        let Cmd::SetRate { id, target, .. } = cli.command else {
            panic!()
        };
        assert_eq!((id, target), (Target::Session(5), Some(400_000_000)));
        let cli = Cli::try_parse_from(["ferryctl", "set-rate", "t3fa9", "--min", "1m"]).unwrap();
        let Cmd::SetRate { id, .. } = cli.command else {
            panic!()
        };
        assert_eq!(id, Target::Transfer("t3fa9".into()));
        assert!(Cli::try_parse_from(["ferryctl", "set-rate", "tx", "--min", "1m"]).is_err());
        assert!(Cli::try_parse_from(["ferryctl", "set-rate", "5", "--target", "fast"]).is_err());
        assert!(Cli::try_parse_from(["ferryctl", "set-rate", "5", "--policy", "greedy"]).is_err());
        // --json is accepted after the subcommand, as CONTRACT.md writes it.
        let cli = Cli::try_parse_from(["ferryctl", "sessions", "--json"]).unwrap();
        assert!(cli.json);
        assert_eq!(cli.socket, PathBuf::from(DEFAULT_SOCKET));
    }

    #[test]
    fn tables_line_up() {
        let s = Session {
            id: 12,
            direction: "send".into(),
            peer: Some("127.0.0.1:4000".into()),
            bytes: 1 << 20,
            total: 4 << 20,
            rate_bps: 200_000_000,
            target_bps: 200_000_000,
            policy: "fixed".into(),
            state: "running".into(),
            files: 1,
            ..Session::default()
        };
        let t = sessions_table(std::slice::from_ref(&s));
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("ID  DIR"), "{t}");
        assert!(lines[1].contains("200 Mbit/s"), "{t}");
        assert!(lines[1].contains("25%"), "{t}");
        assert_eq!(lines[0].find("PEER"), lines[1].find("127.0.0.1"), "{t}");
        assert_eq!(sessions_table(&[]), "no sessions\n");
        let d = session_detail(&s);
        assert!(d.contains("target     200 Mbit/s"), "{d}");

        // A transfer's sessions: one row adding them up, theirs beneath it.
        let member = |id, port| Session {
            id,
            port,
            transfer: Some("t1f".into()),
            ..s.clone()
        };
        let t = sessions_table(&[member(1, 7), s.clone(), member(2, 8)]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5, "{t}");
        assert!(
            lines[1].starts_with("t1f ") && lines[1].contains("2 sessions"),
            "{t}"
        );
        assert!(
            lines[1].contains("400 Mbit/s") && lines[1].contains("8.0 MiB"),
            "{t}"
        );
        assert!(
            lines[2].starts_with("├ 1 ") && lines[3].starts_with("└ 2 "),
            "{t}"
        );
        assert!(lines[4].starts_with("12 "), "{t}");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration_text(5.2), "5s");
        assert_eq!(duration_text(65.0), "1m 5s");
        assert_eq!(duration_text(3_725.0), "1h 2m 5s");
        assert_eq!(duration_text(90_000.0), "1d 1h 0m");
    }
}
