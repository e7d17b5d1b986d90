//! `ferry doctor [USER@]HOST`: the path to a ferryd, checked one step at a time, each step
//! a pass or the exact rule or setting that is missing.
//!
//! The client side ([`run`]) resolves the name, opens TCP, runs the SSH handshake (host key)
//! and logs in through the ordinary [`Control`], then asks ferryd for a UDP probe
//! ([`ProbeRequest`]): the server opens a second socket on its data port (the data plane
//! binds with `SO_REUSEPORT`; this one is connected to the client, so only the client's
//! probes reach it and the data plane keeps everything else), sends probes to the client's
//! probe port and reports which of the client's probes arrived ([`answer_probe`]). Probes
//! leave with "don't fragment" set, so their sizes tell the path MTU each way. The server's
//! clock rides in [`ProbeReady`].

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use russh::Channel;
use russh::server::Msg;

use crate::control::client::{ClientOptions, Control};
use crate::control::messages::{
    ErrorMsg, ProbeReady, ProbeRequest, ProbeResult, ServerMsg, encode_line,
};
use crate::control::{ControlError, ErrorCode};

/// How long the server probes and listens.
const PROBE_TIME: Duration = Duration::from_millis(1500);
/// The spacing of probe rounds.
const ROUND: Duration = Duration::from_millis(100);
/// Clocks further apart than this fail the clock check: `--overwrite older` compares
/// mtimes across the hosts.
const MAX_SKEW: Duration = Duration::from_secs(2);
/// Probe header: magic, token, direction.
const MAGIC: &[u8; 8] = b"FERRYPRB";
const HEADER: usize = 8 + 8 + 1;
const TO_SERVER: u8 = 0;
const TO_CLIENT: u8 = 1;
/// IPv4 (20) and UDP (8) headers: a payload of `n` bytes is an IP packet of `n + 28`.
const IP_UDP: u32 = 28;

/// The outcome of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// It works.
    Pass,
    /// It does not; the code says which kind of failure.
    Fail(ErrorCode),
    /// Not tried, because an earlier check failed.
    Skip,
}

/// One check's line.
#[derive(Clone, Debug)]
pub struct Check {
    /// Short stable name: `dns`, `tcp`, `ssh`, `host_key`, `auth`, `udp_to_server`,
    /// `udp_from_server`, `mtu`, `clock`.
    pub name: &'static str,
    /// Pass, fail or skip.
    pub status: Status,
    /// What was found, and for a failure the rule or setting that is missing.
    pub detail: String,
}

impl Check {
    fn pass(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Pass,
            detail: detail.into(),
        }
    }

    fn fail(name: &'static str, code: ErrorCode, detail: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Fail(code),
            detail: detail.into(),
        }
    }

    /// Whether it failed.
    pub fn failed(&self) -> bool {
        matches!(self.status, Status::Fail(_))
    }

    /// One line for a person.
    pub fn line(&self) -> String {
        match self.status {
            Status::Pass => format!("pass  {:<16} {}", self.name, self.detail),
            Status::Skip => format!("skip  {:<16} {}", self.name, self.detail),
            Status::Fail(code) => format!(
                "FAIL  {:<16} {} (error {} {})",
                self.name,
                self.detail,
                code.code(),
                code.name()
            ),
        }
    }

    /// One JSON line: `{"event":"check","check":..,"status":"pass"|"fail"|"skip",...}`.
    pub fn to_json(&self) -> serde_json::Value {
        let (status, code) = match self.status {
            Status::Pass => ("pass", None),
            Status::Skip => ("skip", None),
            Status::Fail(c) => ("fail", Some(c)),
        };
        serde_json::json!({
            "event": "check", "check": self.name, "status": status, "detail": self.detail,
            "code": code.map(ErrorCode::code), "name": code.map(ErrorCode::name),
            "action": code.map(ErrorCode::action),
        })
    }
}

/// Every check's name, in the order they run.
pub const CHECKS: [&str; 9] = [
    "dns",
    "tcp",
    "ssh",
    "host_key",
    "auth",
    "udp_to_server",
    "udp_from_server",
    "mtu",
    "clock",
];

/// Runs every check in order, calling `report` with each as it completes (the ones after a
/// failure that stops the rest are reported as skipped). `udp_port` is the data port the
/// user expects (`-O`), compared with the one ferryd announces.
pub fn run(
    opts: &ClientOptions,
    udp_port: Option<u16>,
    mut report: impl FnMut(&Check),
) -> Vec<Check> {
    let mut done = Vec::new();
    let mut push = |c: Check, done: &mut Vec<Check>| {
        report(&c);
        done.push(c);
    };
    let stopped = checks(opts, udp_port, &mut |c| push(c, &mut done));
    if let Some(why) = stopped {
        for name in CHECKS.iter().skip(done.len()) {
            push(
                Check {
                    name,
                    status: Status::Skip,
                    detail: why.clone(),
                },
                &mut done,
            );
        }
    }
    done
}

/// The checks; returns why the rest were not tried when one stops them.
fn checks(
    opts: &ClientOptions,
    udp_port: Option<u16>,
    out: &mut dyn FnMut(Check),
) -> Option<String> {
    let host = opts.host.as_str();
    let port = opts.port;
    let after = |name: &str| Some(format!("not tried: the {name} check failed"));

    // DNS.
    let addr = match (host, port).to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(a)) => {
            out(Check::pass("dns", format!("{host} is {}", a.ip())));
            a
        }
        Ok(None) => {
            out(Check::fail(
                "dns",
                ErrorCode::NameResolution,
                format!("{host} has no address: check the name, /etc/hosts and the DNS server"),
            ));
            return after("dns");
        }
        Err(e) => {
            out(Check::fail(
                "dns",
                ErrorCode::NameResolution,
                format!("cannot resolve {host} ({e}): check the name and /etc/resolv.conf"),
            ));
            return after("dns");
        }
    };

    // TCP.
    let t = Instant::now();
    match TcpStream::connect_timeout(&addr, opts.connect_timeout) {
        Ok(_) => out(Check::pass(
            "tcp",
            format!(
                "TCP port {port} of {host} accepts connections ({:.1} ms)",
                t.elapsed().as_secs_f64() * 1e3
            ),
        )),
        Err(e) => {
            out(tcp_failure(host, port, &e, opts.connect_timeout));
            return after("tcp");
        }
    }

    // SSH handshake, host key, authentication: one connection, told apart by the code.
    let mut control = match Control::connect(opts) {
        Ok(c) => c,
        Err((code, msg)) => {
            let stage = match code {
                ErrorCode::HostKeyUnknown | ErrorCode::HostKeyMismatch => 1,
                ErrorCode::Auth | ErrorCode::Identity => 2,
                // The subsystem refused or the versions differ: logged in, but not ferryd.
                ErrorCode::Protocol => 3,
                _ => 0,
            };
            let names = ["ssh", "host_key", "auth"];
            for name in names.iter().take(stage.min(2)) {
                out(Check::pass(name, "passed"));
            }
            let name = names[stage.min(2)];
            let detail = match code {
                ErrorCode::TcpConnect => format!(
                    "{msg}; TCP port {port} answers but not as an SSH server: is it ferryd's \
                     port (ferryd.toml tcp_port), or is something else listening there?"
                ),
                _ => msg,
            };
            out(Check::fail(name, code, detail));
            return after(name);
        }
    };
    out(Check::pass("ssh", "SSH handshake completed"));
    let mut key = format!("host key {} is known", control.host_fingerprint());
    for note in control.notes() {
        key = note.clone();
    }
    out(Check::pass("host_key", key));
    out(Check::pass(
        "auth",
        format!("logged in as {}", control.user()),
    ));

    // UDP both ways, path MTU, clock.
    probe_checks(&mut control, addr, udp_port, out);
    control.close();
    None
}

fn tcp_failure(host: &str, port: u16, e: &io::Error, limit: Duration) -> Check {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => Check::fail(
            "tcp",
            ErrorCode::TcpConnect,
            format!(
                "nothing listens on TCP port {port} of {host} (connection refused): start \
                 ferryd there (ferryd run), check its tcp_port, or open TCP port {port} on \
                 {host}'s firewall (a REJECT rule refuses too)"
            ),
        ),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Check::fail(
            "tcp",
            ErrorCode::TcpConnect,
            format!(
                "TCP port {port} of {host} does not answer within {:.0} s (packets dropped): \
                 allow inbound TCP port {port} on {host}'s firewall and outbound on this side",
                limit.as_secs_f64()
            ),
        ),
        _ => match ErrorCode::from_io(e) {
            ErrorCode::NetworkUnreachable => Check::fail(
                "tcp",
                ErrorCode::NetworkUnreachable,
                format!(
                    "{host} is unreachable ({e}): check this host's route to it (ip route get)"
                ),
            ),
            code => Check::fail(
                "tcp",
                code,
                format!("cannot connect to TCP port {port} of {host}: {e}"),
            ),
        },
    }
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The UDP payload size ferry's data datagrams have on the way to `server`.
fn datagram_size(server: &SocketAddr) -> u32 {
    let cipher = ferry_proto::crypto::Cipher::Aes128Gcm;
    crate::data::block_size_for(server, cipher)
        + (ferry_proto::wire::DATA_HEADER_LEN + cipher.trailer_len()) as u32
}

/// Sizes probed: what ferry needs, and the common path MTUs below it.
fn probe_sizes(need: u32) -> Vec<u32> {
    let mut v: Vec<u32> = [9000, 1500, 1492, 1420, 1400, 1280, 576]
        .into_iter()
        .map(|mtu| mtu - IP_UDP)
        .filter(|&s| s < need)
        .collect();
    v.insert(0, need);
    v
}

fn probe_checks(
    control: &mut Control,
    server: SocketAddr,
    expected_port: Option<u16>,
    out: &mut dyn FnMut(Check),
) {
    let host = control_host(server);
    let need = datagram_size(&server);
    let sizes = probe_sizes(need);
    let token = {
        let mut b = [0u8; 8];
        let _ = aws_lc_rs::rand::fill(&mut b);
        u64::from_be_bytes(b)
    };
    let local: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = match UdpSocket::bind(local).and_then(|s| {
        set_dont_fragment(&s, server.is_ipv4())?;
        s.set_read_timeout(Some(Duration::from_millis(20)))?;
        Ok(s)
    }) {
        Ok(s) => s,
        Err(e) => {
            out(Check::fail(
                "udp_to_server",
                ErrorCode::Io,
                format!("cannot open a local UDP socket: {e}"),
            ));
            return skip_rest(out, 1, "not tried: no local UDP socket");
        }
    };
    let client_udp = socket.local_addr().map(|a| a.port()).unwrap_or(0);
    let req = ProbeRequest {
        client_udp,
        token,
        sizes: sizes.clone(),
        millis: PROBE_TIME.as_millis() as u32,
    };
    let sent_unix = now_unix_ms();
    let mut prober = None;
    let mut ready_unix = 0;
    let probed = control.probe(req, |ready| {
        ready_unix = now_unix_ms();
        let to = SocketAddr::new(server.ip(), ready.udp_port);
        let sizes = sizes.clone();
        let socket = socket.try_clone();
        prober = Some(std::thread::spawn(move || {
            socket.map(|s| client_probe(&s, to, token, &sizes, PROBE_TIME + ROUND * 3))
        }));
    });
    let (ready, result) = match probed {
        Ok(r) => r,
        Err((code, msg)) => {
            out(Check::fail(
                "udp_to_server",
                code,
                format!("ferryd did not run the UDP probe: {msg}"),
            ));
            return skip_rest(out, 1, "not tried: the UDP probe did not run");
        }
    };
    let local = match prober.map(|p| p.join()) {
        Some(Ok(Ok(l))) => l,
        _ => ClientSide::default(),
    };
    let port = ready.udp_port;
    let mut port_note = String::new();
    if let Some(p) = expected_port
        && p != port
    {
        port_note = format!(" (ferryd's data port is {port}, not {p} as given with -O)");
    }
    let up = !result.received.is_empty();
    let down = !local.received.is_empty();
    if up {
        out(Check::pass(
            "udp_to_server",
            format!("UDP to port {port} of {host} gets through{port_note}"),
        ));
    } else {
        out(Check::fail(
            "udp_to_server",
            ErrorCode::UdpBlocked,
            format!(
                "UDP {port} from client to server is blocked: allow inbound UDP port {port} on \
                 {host}'s firewall (and outbound UDP to port {port} on this side){port_note}"
            ),
        ));
    }
    if down {
        out(Check::pass(
            "udp_from_server",
            format!("UDP from port {port} of {host} to this host gets through"),
        ));
    } else {
        out(Check::fail(
            "udp_from_server",
            ErrorCode::UdpBlocked,
            format!(
                "UDP from server port {port} to client port {client_udp} is blocked: allow \
                 inbound UDP from {host} port {port} on this host's firewall (stateful \
                 firewalls admit it as a reply when outbound UDP to port {port} is allowed), \
                 and outbound UDP from port {port} on {host}"
            ),
        ));
    }

    // Path MTU: the largest probe that arrived each way.
    if !up && !down {
        out(Check {
            name: "mtu",
            status: Status::Skip,
            detail: "not tried: no UDP gets through either way".into(),
        });
    } else {
        let max_up = result.received.iter().copied().max();
        let max_down = local.received.iter().copied().max();
        let mut problems = Vec::new();
        if up && max_up < Some(need) {
            let got = max_up.unwrap_or(0);
            problems.push(format!(
                "to {host}, the largest datagram that arrived is {} bytes (path MTU {}){}",
                got,
                got + IP_UDP,
                local
                    .local_mtu
                    .map(|m| format!("; this host's route MTU is {m}"))
                    .unwrap_or_default()
            ));
        }
        if down && max_down < Some(need) {
            let got = max_down.unwrap_or(0);
            problems.push(format!(
                "from {host}, the largest datagram that arrived is {got} bytes (path MTU {})",
                got + IP_UDP
            ));
        }
        if problems.is_empty() {
            out(Check::pass(
                "mtu",
                format!(
                    "ferry's {need}-byte datagrams (IP packets of {}) pass {}",
                    need + IP_UDP,
                    match (up, down) {
                        (true, true) => "both ways",
                        (true, false) => "to the server",
                        _ => "from the server",
                    }
                ),
            ));
        } else {
            out(Check::fail(
                "mtu",
                ErrorCode::PathMtu,
                format!(
                    "ferry sends {need}-byte datagrams (IP packets of {}) but {}: raise the MTU \
                     of the links or tunnels on the path to {}, or let ICMP \
                     'fragmentation needed' through",
                    need + IP_UDP,
                    problems.join("; "),
                    need + IP_UDP
                ),
            ));
        }
    }

    // Clock: the server's time against the middle of the round trip that fetched it.
    let local_mid = sent_unix + ready_unix.saturating_sub(sent_unix) / 2;
    let skew_ms = ready.time_unix_ms as i64 - local_mid as i64;
    let uncertainty = ready_unix.saturating_sub(sent_unix) / 2;
    let how = if skew_ms >= 0 { "ahead of" } else { "behind" };
    let skew = Duration::from_millis(skew_ms.unsigned_abs());
    if skew <= MAX_SKEW {
        out(Check::pass(
            "clock",
            format!(
                "{host}'s clock is {} ms {how} this host's (± {uncertainty} ms)",
                skew.as_millis()
            ),
        ));
    } else {
        out(Check::fail(
            "clock",
            ErrorCode::ClockSkew,
            format!(
                "{host}'s clock is {:.1} s {how} this host's (more than {} s): enable NTP on \
                 both hosts (timedatectl set-ntp true, or chrony)",
                skew.as_secs_f64(),
                MAX_SKEW.as_secs()
            ),
        ));
    }
}

fn control_host(server: SocketAddr) -> String {
    server.ip().to_string()
}

fn skip_rest(out: &mut dyn FnMut(Check), from_udp: usize, why: &str) {
    for name in CHECKS.iter().skip(5 + from_udp) {
        out(Check {
            name,
            status: Status::Skip,
            detail: why.to_string(),
        });
    }
}

/// What the client's side of the probe saw.
#[derive(Default)]
struct ClientSide {
    /// Sizes of the server's probes that arrived.
    received: Vec<u32>,
    /// The local route's MTU, where a probe was too large to leave.
    local_mtu: Option<u32>,
}

fn probe(buf: &mut [u8], token: u64, dir: u8) {
    buf[..8].copy_from_slice(MAGIC);
    buf[8..16].copy_from_slice(&token.to_be_bytes());
    buf[16] = dir;
}

fn is_probe(buf: &[u8], token: u64, dir: u8) -> bool {
    buf.len() >= HEADER && &buf[..8] == MAGIC && buf[8..16] == token.to_be_bytes() && buf[16] == dir
}

/// Sends the client's probes to `to` every round while collecting the server's.
fn client_probe(
    s: &UdpSocket,
    to: SocketAddr,
    token: u64,
    sizes: &[u32],
    time: Duration,
) -> ClientSide {
    let mut side = ClientSide::default();
    let mut out = vec![0u8; 65_536];
    probe(&mut out, token, TO_SERVER);
    let mut buf = vec![0u8; 65_536];
    let end = Instant::now() + time;
    let mut next = Instant::now();
    while Instant::now() < end {
        if Instant::now() >= next {
            for &size in sizes {
                let size = (size as usize).clamp(HEADER, out.len());
                if let Err(e) = s.send_to(&out[..size], to)
                    && e.raw_os_error() == Some(libc::EMSGSIZE)
                {
                    side.local_mtu = route_mtu(s, to);
                }
            }
            next += ROUND;
        }
        if let Ok((n, from)) = s.recv_from(&mut buf)
            && from.ip() == to.ip()
            && is_probe(&buf[..n], token, TO_CLIENT)
            && !side.received.contains(&(n as u32))
        {
            side.received.push(n as u32);
        }
    }
    side
}

/// The kernel's idea of the path MTU towards `to` (`IP_MTU` on a connected socket).
fn route_mtu(s: &UdpSocket, to: SocketAddr) -> Option<u32> {
    let c = UdpSocket::bind(s.local_addr().ok().map(|a| SocketAddr::new(a.ip(), 0))?).ok()?;
    c.connect(to).ok()?;
    let (level, opt) = if to.is_ipv4() {
        (libc::IPPROTO_IP, libc::IP_MTU)
    } else {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU)
    };
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are live locals of the sizes passed.
    let r = unsafe {
        libc::getsockopt(
            c.as_raw_fd(),
            level,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (r == 0 && v > 0).then_some(v as u32)
}

/// "Don't fragment", and no path MTU discovery behind our back: a datagram larger than the
/// path is dropped (or refused here with `EMSGSIZE`), never split.
fn set_dont_fragment(s: &UdpSocket, v4: bool) -> io::Result<()> {
    let (level, opt, val) = if v4 {
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_PROBE,
        )
    } else {
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_PROBE,
        )
    };
    // SAFETY: setsockopt with a pointer to a live c_int and its size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            opt,
            (&val as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// ferryd's side of the probe: answers [`ProbeReady`], probes the client from the data
/// port `data` and listens for the client's probes for the time asked, then answers
/// [`ProbeResult`]. Returns whether it all went out.
pub async fn answer_probe(
    channel: &Channel<Msg>,
    peer: SocketAddr,
    data: SocketAddr,
    req: ProbeRequest,
) -> bool {
    let send = async |msg: &ServerMsg| channel.data_bytes(encode_line(msg)).await.is_ok();
    let client = SocketAddr::new(peer.ip(), req.client_udp);
    let socket = match probe_socket(data, client) {
        Ok(s) => s,
        Err((code, msg)) => {
            send(&ServerMsg::Error(ErrorMsg::new(code, msg))).await;
            return false;
        }
    };
    let ready = ProbeReady {
        udp_port: data.port(),
        time_unix_ms: now_unix_ms(),
    };
    if !send(&ServerMsg::ProbeReady(ready)).await {
        return false;
    }
    let time = Duration::from_millis(req.millis.clamp(200, 5000) as u64);
    let result = tokio::task::spawn_blocking(move || server_probe(&socket, &req, time))
        .await
        .unwrap_or_default();
    tracing::info!(
        "{peer}: doctor probe: received {:?} of the client's probes",
        result.received
    );
    send(&ServerMsg::ProbeResult(result)).await
}

/// A socket on the data port (beside the data plane's, through `SO_REUSEPORT`), connected
/// to the client's probe port so that only its datagrams come here.
fn probe_socket(data: SocketAddr, client: SocketAddr) -> Result<UdpSocket, ControlError> {
    use std::os::fd::AsFd;
    let fail = |e: io::Error| {
        (
            ErrorCode::Io,
            format!("ferryd cannot open a probe socket on UDP {data}: {e}"),
        )
    };
    let opts = ferry_io::udp::SocketOptions {
        reuse_port: true,
        ..Default::default()
    };
    let s = ferry_io::udp::UdpSocket::bind(data, &opts).map_err(fail)?;
    s.connect(client).map_err(fail)?;
    let s = UdpSocket::from(s.as_fd().try_clone_to_owned().map_err(fail)?);
    s.set_nonblocking(false).map_err(fail)?;
    s.set_read_timeout(Some(Duration::from_millis(20)))
        .map_err(fail)?;
    set_dont_fragment(&s, !matches!(client.ip(), IpAddr::V6(_))).map_err(fail)?;
    Ok(s)
}

fn server_probe(s: &UdpSocket, req: &ProbeRequest, time: Duration) -> ProbeResult {
    let mut result = ProbeResult::default();
    let mut out = vec![0u8; 65_536];
    probe(&mut out, req.token, TO_CLIENT);
    let mut buf = vec![0u8; 65_536];
    let sizes: Vec<u32> = req.sizes.iter().take(16).copied().collect();
    let end = Instant::now() + time;
    let mut next = Instant::now();
    while Instant::now() < end {
        if Instant::now() >= next {
            for &size in &sizes {
                let n = (size as usize).clamp(HEADER, out.len());
                if s.send(&out[..n]).is_ok() && !result.sent.contains(&size) {
                    result.sent.push(size);
                }
            }
            next += ROUND;
        }
        if let Ok(n) = s.recv(&mut buf)
            && is_probe(&buf[..n], req.token, TO_SERVER)
            && !result.received.contains(&(n as u32))
        {
            result.received.push(n as u32);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_start_with_what_ferry_needs() {
        assert_eq!(probe_sizes(1472), vec![1472, 1464, 1392, 1372, 1252, 548]);
        assert_eq!(probe_sizes(65_507)[..2], [65_507, 8972]);
    }

    #[test]
    fn probes_are_told_apart() {
        let mut b = [0u8; 64];
        probe(&mut b, 7, TO_SERVER);
        assert!(is_probe(&b, 7, TO_SERVER));
        assert!(!is_probe(&b, 8, TO_SERVER));
        assert!(!is_probe(&b, 7, TO_CLIENT));
        assert!(!is_probe(&b[..10], 7, TO_SERVER));
    }

    #[test]
    fn every_check_is_reported_once_in_order() {
        // A name that cannot resolve: dns fails, the rest are skipped.
        let mut opts = ClientOptions::new("no-such-host.invalid", "nobody");
        opts.connect_timeout = Duration::from_secs(1);
        let mut seen = Vec::new();
        let all = run(&opts, None, |c| seen.push(c.name));
        assert_eq!(seen, CHECKS);
        assert!(matches!(
            all[0].status,
            Status::Fail(ErrorCode::NameResolution)
        ));
        assert!(all[1..].iter().all(|c| c.status == Status::Skip));
    }
}
