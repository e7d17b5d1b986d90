//! Host-wide bandwidth caps: a virtual link for all inbound, all outbound and all
//! background (`low` policy) traffic of a ferryd, shared by every session on every core.
//!
//! A cap has no queue for the delay-based controllers to feel, so ferryd divides it itself:
//! a sharer thread looks at the sessions ten times a second, splits each direction's cap by
//! policy with [`ferry_tuning::share::allocate`] and gives each session a **ceiling**
//! ([`SessionOp::Ceiling`]). A sending session bounds its own rate by it at once; a
//! receiving one relays it to its sender over the SSH control channel. A new session gets
//! its share before its first datagram, from the last round's picture.
//!
//! The ceilings follow demand: a session that delivered clearly less than its ceiling
//! (its path or its peer holds it back) is counted at 1.25 × what it delivered, so the rest
//! goes to others, and it grows back by a quarter per round when it can use more.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_tuning::share::{Claim, allocate};
use ferry_tuning::{Policy, RateLimits};

use crate::data::{DataPlane, Role, SessionInfo, SessionOp};

/// How often the sharer divides the caps.
pub const SHARE_INTERVAL: Duration = Duration::from_millis(100);
/// A ceiling changes only when the new one differs by more than this fraction.
const HYSTERESIS: f64 = 0.03;
/// Headroom over the delivered rate for a session that does not use its ceiling.
const DEMAND_HEADROOM: f64 = 1.25;
/// Below this share of its ceiling a session counts as held back elsewhere.
const USES_CEILING: f64 = 0.8;
/// Rounds a running session gets to ramp up before its demand is judged (2 s).
const GRACE_ROUNDS: u32 = 20;

/// The caps, bits per second; `None` is uncapped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CapSettings {
    /// All data this host receives (uploads to it).
    pub inbound_bps: Option<u64>,
    /// All data this host sends (downloads from it).
    pub outbound_bps: Option<u64>,
    /// All `low`-policy sessions together, either direction.
    pub background_bps: Option<u64>,
}

impl CapSettings {
    fn for_role(&self, role: Role) -> Option<u64> {
        match role {
            Role::Sender => self.outbound_bps,
            Role::Receiver => self.inbound_bps,
        }
    }
}

/// The caps of one ferryd and the sharer's last picture of its sessions. Clones share them.
#[derive(Clone, Debug, Default)]
pub struct HostCaps {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    settings: CapSettings,
    /// Claims of the sessions seen in the last round, by direction.
    claims: HashMap<u32, (Role, Claim)>,
}

impl HostCaps {
    /// Caps as configured.
    pub fn new(settings: CapSettings) -> Self {
        let caps = HostCaps::default();
        caps.set(settings);
        caps
    }

    /// The caps now.
    pub fn settings(&self) -> CapSettings {
        self.inner.lock().map(|i| i.settings).unwrap_or_default()
    }

    /// Replaces the caps; sessions get their new ceilings within [`SHARE_INTERVAL`].
    pub fn set(&self, settings: CapSettings) {
        if let Ok(mut i) = self.inner.lock() {
            i.settings = settings;
        }
    }

    /// The ceiling a new session should start with: its share beside the sessions of the
    /// last round, or `None` where its direction is uncapped.
    pub fn initial_ceiling(&self, role: Role, policy: Policy, limits: RateLimits) -> Option<u64> {
        let inner = self.inner.lock().ok()?;
        let cap = inner.settings.for_role(role)?;
        let mut claims: Vec<Claim> = inner
            .claims
            .values()
            .filter(|(r, _)| *r == role)
            .map(|(_, c)| *c)
            .collect();
        claims.push(Claim {
            policy,
            target_bps: limits.target_bps,
            min_bps: limits.min_bps,
            demand_bps: None,
        });
        let background = inner.settings.background_bps;
        allocate(cap, background, &claims).last().copied()
    }
}

/// Divides the caps among `plane`'s sessions every [`SHARE_INTERVAL`], on a thread of its
/// own, for as long as the process runs.
pub fn spawn_sharer(plane: DataPlane) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("ferry-caps".into())
        .spawn(move || {
            let mut sharer = Sharer::default();
            loop {
                std::thread::sleep(SHARE_INTERVAL);
                for (id, ceiling) in sharer.round(plane.caps(), &plane.sessions()) {
                    // A session that just ended is no error.
                    let _ = plane.control(id, SessionOp::Ceiling(ceiling));
                }
            }
        })
        .map(|_| ())
}

/// One round after another of dividing the caps: smoothed rates in, ceiling changes out.
#[derive(Debug, Default)]
pub struct Sharer {
    /// Each session's delivered rate, smoothed over a few rounds, and the rounds it has
    /// been running.
    smoothed: HashMap<u32, (f64, u32)>,
}

impl Sharer {
    /// Looks at `sessions` and returns the ceilings to change, by session id.
    pub fn round(&mut self, caps: &HostCaps, sessions: &[SessionInfo]) -> Vec<(u32, Option<u64>)> {
        let settings = caps.settings();
        self.smoothed
            .retain(|id, _| sessions.iter().any(|s| s.id == *id));
        let mut claims = HashMap::new();
        let mut changes = Vec::new();
        for role in [Role::Sender, Role::Receiver] {
            let members: Vec<&SessionInfo> = sessions
                .iter()
                .filter(|s| role_of(s) == role && s.state != "finishing")
                .collect();
            let Some(cap) = settings.for_role(role) else {
                // Uncapped: lift any ceiling left from before.
                changes.extend(
                    members
                        .iter()
                        .filter(|s| s.ceiling_bps.is_some())
                        .map(|s| (s.id, None)),
                );
                continue;
            };
            let role_claims: Vec<Claim> = members.iter().map(|s| self.claim(s)).collect();
            let shares = allocate(cap, settings.background_bps, &role_claims);
            for ((s, claim), share) in members.iter().zip(&role_claims).zip(shares) {
                claims.insert(s.id, (role, *claim));
                if differs(s.ceiling_bps, share) {
                    changes.push((s.id, Some(share)));
                }
            }
        }
        if let Ok(mut i) = caps.inner.lock() {
            i.claims = claims;
        }
        changes
    }

    fn claim(&mut self, s: &SessionInfo) -> Claim {
        let (rate, rounds) = self
            .smoothed
            .entry(s.id)
            .and_modify(|(r, n)| {
                *r += (s.rate_bps as f64 - *r) / 3.0;
                *n += u32::from(s.state == "running");
            })
            .or_insert((s.rate_bps as f64, 0));
        let demand = match s.ceiling_bps {
            // A paused session keeps only its minimum.
            _ if s.state == "paused" => Some(0),
            // A session still ramping up is not held back, just young.
            Some(c) if *rounds >= GRACE_ROUNDS && *rate < USES_CEILING * c as f64 => {
                Some((*rate * DEMAND_HEADROOM) as u64)
            }
            _ => None,
        };
        Claim {
            policy: s.policy.parse().unwrap_or(Policy::Fair),
            target_bps: s.target_bps,
            min_bps: s.min_bps,
            demand_bps: demand.map(|d| d.max(s.min_bps).max(1_000_000)),
        }
    }
}

fn role_of(s: &SessionInfo) -> Role {
    if s.direction == "send" {
        Role::Sender
    } else {
        Role::Receiver
    }
}

fn differs(old: Option<u64>, new: u64) -> bool {
    match old {
        None => true,
        Some(o) => (o as f64 - new as f64).abs() > HYSTERESIS * (o.max(1) as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1_000_000;

    fn session(id: u32, direction: &'static str, policy: &str, rate: u64) -> SessionInfo {
        SessionInfo {
            id,
            direction,
            peer: None,
            user: None,
            files: 1,
            bytes: 0,
            total: 1,
            rate_bps: rate,
            target_bps: 10_000 * M,
            min_bps: 0,
            policy: policy.into(),
            ceiling_bps: None,
            loss: 0.0,
            rtt_ms: 0.0,
            queue_ms: 0.0,
            state: "running",
            core: None,
            port: 0,
            transfer: None,
        }
    }

    #[test]
    fn each_direction_shares_its_own_cap() {
        let caps = HostCaps::new(CapSettings {
            inbound_bps: Some(300 * M),
            outbound_bps: Some(100 * M),
            background_bps: None,
        });
        let sessions = [
            session(1, "recv", "fair", 0),
            session(2, "recv", "fair", 0),
            session(3, "send", "fair", 0),
        ];
        let mut got = Sharer::default().round(&caps, &sessions);
        got.sort();
        assert_eq!(
            got,
            vec![(1, Some(150 * M)), (2, Some(150 * M)), (3, Some(100 * M))]
        );
        // A third inbound session would start at its share beside the two.
        let first =
            caps.initial_ceiling(Role::Receiver, Policy::Fair, RateLimits::new(10_000 * M, 0));
        assert_eq!(first, Some(100 * M));
        assert_eq!(
            caps.initial_ceiling(Role::Sender, Policy::Low, RateLimits::new(10_000 * M, 0)),
            Some(0)
        );
    }

    #[test]
    fn unused_share_moves_to_the_scavenger_and_lifting_the_cap_clears_ceilings() {
        let caps = HostCaps::new(CapSettings {
            outbound_bps: Some(300 * M),
            ..Default::default()
        });
        let mut sharer = Sharer::default();
        let mut fair = session(1, "send", "fair", 100 * M);
        // Past the ramp-up grace.
        for id in [1, 2] {
            sharer
                .smoothed
                .insert(id, (if id == 1 { 100e6 } else { 0.0 }, GRACE_ROUNDS));
        }
        fair.ceiling_bps = Some(300 * M);
        let mut low = session(2, "send", "low", 0);
        low.ceiling_bps = Some(0);
        let got = sharer.round(&caps, &[fair.clone(), low.clone()]);
        // The fair session delivers 100 of its 300: it is held to 125, the rest goes to the
        // scavenger.
        assert_eq!(got, vec![(1, Some(125 * M)), (2, Some(175 * M))]);

        caps.set(CapSettings::default());
        fair.ceiling_bps = Some(125 * M);
        low.ceiling_bps = Some(175 * M);
        assert_eq!(
            sharer.round(&caps, &[fair, low]),
            vec![(1, None), (2, None)]
        );
    }
}
