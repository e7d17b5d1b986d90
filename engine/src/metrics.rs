//! Prometheus metrics: an opt-in HTTP endpoint (`metrics_listen` in ferryd.toml, meant
//! for localhost) that answers every GET with the OpenMetrics text of the data plane.
//!
//! Nothing is counted twice: each scrape reads the data plane's own snapshots (sessions
//! every 100 ms, lane counters and latency histograms every second) through a
//! [`prometheus_client`] collector, on the endpoint's own thread; the data threads never
//! see a scrape.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::data::DataPlane;

/// A scraper that does not send its request within this long is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the metrics of `plane` on `addr` from a thread of its own; returns the bound
/// address (port 0 picks one).
pub fn serve(addr: SocketAddr, plane: DataPlane) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    let mut registry = Registry::default();
    registry.register_collector(Box::new(PlaneCollector { plane }));
    let registry = Arc::new(registry);
    std::thread::Builder::new()
        .name("ferry-metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                // One scrape at a time: they are rare and each takes microseconds.
                if let Err(e) = answer(stream, &registry) {
                    eprintln!("ferryd: metrics: {e}");
                }
            }
        })?;
    Ok(local)
}

/// Reads one HTTP request (its head only) and answers with the metrics.
fn answer(stream: TcpStream, registry: &Registry) -> io::Result<()> {
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    stream.set_write_timeout(Some(READ_TIMEOUT))?;
    let mut reader = BufReader::new(&stream);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // The rest of the head, up to the blank line; bounded like the first line.
    let mut line = String::new();
    for _ in 0..100 {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let (status, content_type, body) = if request.starts_with("GET ") {
        let mut body = String::new();
        prometheus_client::encoding::text::encode(&mut body, registry)
            .map_err(|e| io::Error::other(e.to_string()))?;
        (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body,
        )
    } else {
        (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        )
    };
    let mut out = &stream;
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    out.flush()
}

#[derive(Debug)]
struct PlaneCollector {
    plane: DataPlane,
}

/// Labels as the encoder takes them.
type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// One metric family of constant values.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut f = encoder.encode_descriptor(name, help, None, kind)?;
    for (l, m) in samples {
        m.encode(f.encode_family(&l)?)?;
    }
    Ok(())
}

impl Collector for PlaneCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let sessions = self.plane.sessions();
        let lanes = self.plane.lane_stats();
        let caps = self.plane.caps().settings();
        let dirs = ["send", "recv"];
        let of = |dir: &'static str| sessions.iter().filter(move |s| s.direction == dir);

        family(
            &mut e,
            "ferry_sessions",
            "Sessions running, by what this host does in them",
            MetricType::Gauge,
            dirs.map(|d| {
                (
                    labels(&[("direction", d)]),
                    ConstGauge::new(of(d).count() as i64),
                )
            }),
        )?;
        family(
            &mut e,
            "ferry_rate_bits_per_second",
            "Payload delivered per second by the running sessions",
            MetricType::Gauge,
            dirs.map(|d| {
                let r: u64 = of(d).map(|s| s.rate_bps).sum();
                (labels(&[("direction", d)]), ConstGauge::new(r as i64))
            }),
        )?;
        family(
            &mut e,
            "ferry_session_rate_bits_per_second",
            "Payload delivered per second, by session",
            MetricType::Gauge,
            sessions.iter().map(|s| {
                let id = s.id.to_string();
                let user = s.user.clone().unwrap_or_default();
                let l = labels(&[
                    ("session", &id),
                    ("direction", s.direction),
                    ("user", &user),
                    ("policy", &s.policy),
                ]);
                (l, ConstGauge::new(s.rate_bps as i64))
            }),
        )?;
        family(
            &mut e,
            "ferry_cap_bits_per_second",
            "Host-wide caps that are set",
            MetricType::Gauge,
            [
                ("inbound", caps.inbound_bps),
                ("outbound", caps.outbound_bps),
                ("background", caps.background_bps),
            ]
            .into_iter()
            .filter_map(|(k, v)| Some((labels(&[("cap", k)]), ConstGauge::new(v? as i64)))),
        )?;

        let lane_label = |l: &crate::stats::LaneStats| {
            let core = l.core.map_or_else(|| "none".to_string(), |c| c.to_string());
            labels(&[("core", &core), ("port", &l.port.to_string())])
        };
        let per_lane =
            |f: &dyn Fn(&crate::stats::Counters) -> u64| -> Vec<(Labels, ConstCounter<u64>)> {
                lanes
                    .iter()
                    .map(|l| (lane_label(l), ConstCounter::new(f(&l.totals()))))
                    .collect()
            };
        family(
            &mut e,
            "ferry_sessions_started",
            "Sessions started, by lane",
            MetricType::Counter,
            per_lane(&|c| c.sessions_started),
        )?;
        family(
            &mut e,
            "ferry_sessions_failed",
            "Sessions that ended with an error, by lane",
            MetricType::Counter,
            per_lane(&|c| c.sessions_failed),
        )?;
        family(
            &mut e,
            "ferry_sent_bytes",
            "Payload delivered by sessions this host sends",
            MetricType::Counter,
            per_lane(&|c| c.bytes_sent),
        )?;
        family(
            &mut e,
            "ferry_received_bytes",
            "Payload delivered to sessions this host receives",
            MetricType::Counter,
            per_lane(&|c| c.bytes_received),
        )?;
        family(
            &mut e,
            "ferry_wire_sent_bytes",
            "UDP payload bytes sent, all kinds",
            MetricType::Counter,
            per_lane(&|c| c.wire_bytes_sent),
        )?;
        family(
            &mut e,
            "ferry_retransmitted_bytes",
            "Payload bytes sent again (NACKs, probes, tail copies)",
            MetricType::Counter,
            per_lane(&|c| c.retransmitted_bytes),
        )?;
        family(
            &mut e,
            "ferry_dropped_datagrams",
            "Inbound datagrams dropped, by reason",
            MetricType::Counter,
            lanes.iter().flat_map(|l| {
                let base = lane_label(l);
                l.totals().drops.into_iter().map(move |(reason, n)| {
                    let mut ls = base.clone();
                    ls.push(("reason".into(), reason.into()));
                    (ls, ConstCounter::new(n))
                })
            }),
        )?;
        family(
            &mut e,
            "ferry_core_busy_seconds",
            "Time each data thread spent working rather than asleep",
            MetricType::Counter,
            lanes
                .iter()
                .map(|l| (lane_label(l), ConstCounter::new(l.busy.as_secs_f64()))),
        )?;
        family(
            &mut e,
            "ferry_latency_seconds",
            "Latency percentiles since ferryd started (feedback RTT, queueing delay, disk)",
            MetricType::Gauge,
            lanes.iter().flat_map(|l| {
                let base = lane_label(l);
                l.latencies().into_iter().flat_map(move |p| {
                    let base = base.clone();
                    [
                        ("0.5", p.p50_us),
                        ("0.9", p.p90_us),
                        ("0.99", p.p99_us),
                        ("0.999", p.p999_us),
                        ("1", p.max_us),
                    ]
                    .into_iter()
                    .map(move |(q, us)| {
                        let mut ls = base.clone();
                        ls.push(("name".into(), p.name.into()));
                        ls.push(("quantile".into(), q.into()));
                        (ls, ConstGauge::new(us as f64 / 1e6))
                    })
                })
            }),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_scrape_answers_openmetrics_text() {
        let plane = DataPlane::start("127.0.0.1:0".parse().unwrap()).unwrap();
        plane.caps().set(crate::caps::CapSettings {
            inbound_bps: Some(300_000_000),
            ..Default::default()
        });
        let addr = serve("127.0.0.1:0".parse().unwrap(), plane).unwrap();
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        for want in [
            "ferry_sessions{direction=\"send\"} 0",
            "ferry_cap_bits_per_second{cap=\"inbound\"} 300000000",
            "# TYPE ferry_sent_bytes counter",
            "# EOF",
        ] {
            assert!(reply.contains(want), "no {want:?} in:\n{reply}");
        }
    }
}
