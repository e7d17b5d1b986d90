//! Rate-control traces, snapshot-tested: a change to a controller shows up as a diff of
//! these traces in review (`cargo insta review` to accept an intended change).

use core::time::Duration;

use ferry_sim::scenario::{self, ScenarioConfig, TcpAlgorithm};
use ferry_tuning::Policy;

/// A compact, stable rendering: one line per sample, rates in whole Mbit/s.
fn trace(cfg: &ScenarioConfig) -> String {
    let report = scenario::run(cfg);
    assert!(
        report.completed && report.bytes_ok,
        "seed {}: {:?}",
        cfg.seed,
        report.errors
    );
    let mut out = format!(
        "completed={} goodput={:.2} retransmit={:.3} jain={:.2} tcp_share={}\n",
        report.completed,
        report.goodput_ratio,
        report.retransmit_ratio,
        report.jain,
        report.tcp_share.map_or("-".into(), |s| format!("{s:.2}"))
    );
    for s in &report.trace {
        out += &format!(
            "{:6.2}s flow{} rate={:5.0} delivered={:5.0} queue={:5.1}ms {}\n",
            s.t, s.flow, s.rate_mbps, s.delivered_mbps, s.queue_ms, s.phase
        );
    }
    out
}

fn base() -> ScenarioConfig {
    ScenarioConfig {
        trace_interval: Some(Duration::from_millis(250)),
        bytes: 64 << 20,
        ..ScenarioConfig::default()
    }
}

#[test]
fn fair_alone_on_a_lossy_long_path() {
    insta::assert_snapshot!(trace(&ScenarioConfig {
        rtt: Duration::from_millis(200),
        loss: 0.05,
        bytes: 128 << 20,
        ..base()
    }));
}

#[test]
fn two_fair_flows_share() {
    insta::assert_snapshot!(trace(&ScenarioConfig {
        rtt: Duration::from_millis(100),
        loss: 0.001,
        flows: 2,
        bytes: 96 << 20,
        ..base()
    }));
}

#[test]
fn fair_beside_tcp() {
    insta::assert_snapshot!(trace(&ScenarioConfig {
        link_mbps: 100.0,
        tcp_flows: 1,
        tcp_algorithm: TcpAlgorithm::Cubic,
        ..base()
    }));
}

#[test]
fn low_yields_to_tcp() {
    insta::assert_snapshot!(trace(&ScenarioConfig {
        link_mbps: 100.0,
        tcp_flows: 1,
        policy: Policy::Low,
        bytes: 8 << 20,
        trace_interval: Some(Duration::from_secs(1)),
        ..base()
    }));
}

#[test]
fn fixed_ignores_the_path() {
    insta::assert_snapshot!(trace(&ScenarioConfig {
        policy: Policy::Fixed,
        target_bps: 400_000_000,
        loss: 0.02,
        ..base()
    }));
}
