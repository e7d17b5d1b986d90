//! The protocol under hostile networks: every byte must still arrive exactly once, intact.

use core::time::Duration;

use ferry_proto::crypto::Cipher;
use ferry_sim::scenario::{self, Report, ScenarioConfig};

fn run(cfg: ScenarioConfig) -> Report {
    let r = scenario::run(&cfg);
    assert!(
        r.completed && r.bytes_ok,
        "seed {}: {:?} {:?}",
        cfg.seed,
        r.errors,
        r.flows
    );
    r
}

fn base(seed: u64) -> ScenarioConfig {
    ScenarioConfig {
        rtt: Duration::from_millis(40),
        link_mbps: 200.0,
        bytes: 8 << 20,
        seed,
        ..ScenarioConfig::default()
    }
}

#[test]
fn reordering_duplication_and_jitter() {
    for seed in 1..=4 {
        let r = run(ScenarioConfig {
            reorder: 0.05,
            duplicate: 0.05,
            jitter: Duration::from_millis(1),
            ..base(seed)
        });
        // Duplicated datagrams are caught by the replay window or the block set.
        assert!(r.retransmit_ratio < 0.1, "{r:?}");
    }
}

/// Jitter larger than the spacing of a burst fools the dispersion capacity estimate (bursts
/// arrive compressed), the start overshoots and re-sends a lot — a known weakness, see
/// ARCHITECTURE.md. What must hold regardless: every byte arrives once, intact.
#[test]
fn large_jitter_still_delivers_exactly() {
    for seed in 1..=4 {
        run(ScenarioConfig {
            jitter: Duration::from_millis(3),
            ..base(seed)
        });
    }
}

#[test]
fn corruption_is_dropped_and_counted_never_delivered() {
    for cipher in [Cipher::Aes128Gcm, Cipher::Aes256Gcm, Cipher::None] {
        let r = run(ScenarioConfig {
            corrupt: 0.03,
            cipher,
            ..base(7)
        });
        let drops: u64 = r.flows[0].drops.iter().map(|(_, n)| n).sum();
        assert!(drops > 0, "{cipher}: no corrupted datagram was caught");
    }
}

#[test]
fn bursty_loss() {
    for seed in 1..=3 {
        run(ScenarioConfig {
            burst_loss: Some((0.01, 0.3, 0.5)),
            ..base(seed)
        });
    }
}

#[test]
fn heavy_loss_and_small_datagrams() {
    run(ScenarioConfig {
        loss: 0.2,
        mtu: 1500,
        bytes: 2 << 20,
        ..base(3)
    });
}

#[test]
fn many_flows_share_one_bottleneck() {
    let r = run(ScenarioConfig {
        flows: 4,
        loss: 0.01,
        ..base(5)
    });
    assert!(r.jain > 0.9, "{r:?}");
}

#[test]
fn empty_and_tiny_transfers() {
    for bytes in [0, 1, 100, 65_535] {
        run(ScenarioConfig {
            bytes,
            loss: 0.1,
            ..base(bytes)
        });
    }
}

/// Beside one bulk CUBIC flow, `fair` settles near an even split and `low` steps aside,
/// across a few paths (not only the acceptance script's one).
#[test]
fn sharing_with_tcp_across_paths() {
    use ferry_tuning::Policy;
    for (rtt, mbps) in [(30, 200.0), (50, 100.0), (80, 200.0)] {
        let cfg = |policy| ScenarioConfig {
            rtt: Duration::from_millis(rtt),
            link_mbps: mbps,
            bytes: 32 << 20,
            tcp_flows: 1,
            policy,
            ..ScenarioConfig::default()
        };
        let fair = run(cfg(Policy::Fair)).tcp_share.unwrap();
        assert!(
            (0.3..=0.7).contains(&fair),
            "fair, {rtt} ms, {mbps} Mbit/s: tcp {fair}"
        );
        if mbps <= 100.0 {
            let low = run(cfg(Policy::Low)).tcp_share.unwrap();
            assert!(low >= 0.8, "low, {rtt} ms, {mbps} Mbit/s: tcp {low}");
        }
    }
}
