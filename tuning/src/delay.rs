//! The delay-based engine behind `fair`, `high` and `low`.
//!
//! The law is FAST TCP's (Wei, Jin, Low, Hegde 2006) in window form,
//! `w ← w + γ·(base_rtt/rtt · w + α − w)` once per round trip, with the window enforced on
//! bytes in flight (a self-clock, which is what keeps a delayed rate loop stable at 600 ms)
//! and the pacing rate `w / rtt` smoothing the departures. At equilibrium each flow keeps
//! `α` bytes of its own in the bottleneck queue, so flows with equal `α` share evenly and a
//! flow with `2α` takes twice as much; random loss does not move the window at all.
//!
//! Against a buffer-filling TCP flow a pure delay-based flow starves. Like Copa's
//! competitive mode, a flow allowed to compete notices queue-overflow loss (loss while the
//! queue is near the deepest it has been) and then runs Reno's AIMD on its window until
//! the queue drains again.

use core::time::Duration;

use crate::Timestamp;
use crate::controller::{Controller, PathSignal, RateLimits};
use crate::filter::{BaseDelay, WindowedMax};

/// Parameters of a delay-based controller.
#[derive(Clone, Debug, PartialEq)]
pub struct DelayConfig {
    /// Time of queue, at the bottleneck's measured capacity, this flow aims to keep filled
    /// with its own bytes. Every flow on a bottleneck measures the same capacity, so the
    /// resulting byte count (FAST's α) is the same for all of them and they share evenly.
    pub alpha_delay: f64,
    /// Least α, bytes: enough datagrams that the queue does not run dry between bursts.
    pub alpha_min: f64,
    /// α before any capacity estimate, bytes.
    pub alpha_initial: f64,
    /// Fraction of the distance to the equilibrium window closed per round trip.
    pub gamma: f64,
    /// Switch to AIMD when a buffer-filling flow shares the bottleneck.
    pub competitive: bool,
    /// Share of the bottleneck's capacity to seek against a buffer-filling competitor.
    pub competitive_share: f64,
    /// Bytes per datagram.
    pub mss: f64,
    /// Rate before the path has said anything, bytes per second.
    pub initial_rate: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Startup,
    Steady,
    Competitive,
}

/// A delay-based window-and-rate controller (see the module docs).
#[derive(Clone, Debug)]
pub struct DelayBased {
    cfg: DelayConfig,
    limits: RateLimits,
    phase: Phase,
    /// Window in bytes.
    window: f64,
    base: BaseDelay,
    queue_delay: f64,
    min_rtt: f64,
    capacity: WindowedMax,
    /// The most delivered per second lately.
    delivered: WindowedMax,
    /// Queueing delay at which the path's buffer overflowed, seconds.
    buffer: Option<f64>,
    /// The deepest queue seen lately, in seconds; decays slowly.
    queue_max: f64,
    last_update: Option<Timestamp>,
    last_cut: Timestamp,
    /// α while competing with a buffer filler.
    competitive_alpha: Option<f64>,
    /// Long-run loss rate (bytes lost over bytes sent): the channel's, as congestion is rare.
    channel_loss: f64,
    /// Smoothed time between feedbacks, seconds.
    feedback_gap: f64,
    lost_total: f64,
    delivered_total: f64,
    epoch: LossEpoch,
}

/// Loss and delivery over one round trip.
#[derive(Clone, Copy, Debug, Default)]
struct LossEpoch {
    start: Timestamp,
    lost: f64,
    delivered: f64,
    queue_max: f64,
}

const MIN_RTT_FLOOR: f64 = 0.001;

impl DelayBased {
    /// A controller with `cfg`, starting within `limits`.
    pub fn new(cfg: DelayConfig, limits: RateLimits) -> Self {
        let window = cfg.initial_rate * 0.1;
        DelayBased {
            limits,
            phase: Phase::Startup,
            window,
            base: BaseDelay::new(Duration::from_secs(60), 10),
            queue_delay: 0.0,
            min_rtt: f64::INFINITY,
            capacity: WindowedMax::new(Duration::from_secs(10)),
            delivered: WindowedMax::new(Duration::from_secs(10)),
            buffer: None,
            queue_max: 0.0,
            last_update: None,
            last_cut: Timestamp::ZERO,
            competitive_alpha: None,
            channel_loss: 0.0,
            feedback_gap: 0.0,
            lost_total: 0.0,
            delivered_total: 0.0,
            epoch: LossEpoch::default(),
            cfg,
        }
    }

    /// FAST's α in bytes (see [`DelayConfig::alpha_delay`]), from the most the path has
    /// delivered lately: burst dispersion can overstate a bottleneck (on loopback it
    /// measures how fast the receiver reads), and an α sized from it would ask for more
    /// queue than the path has.
    fn alpha(&self) -> f64 {
        let Some(c) = self.delivered.get().or(self.capacity.get()) else {
            return self.cfg.alpha_initial;
        };
        // Never more than a quarter of a buffer that has been seen to overflow: FAST's
        // equilibrium needs the queue to hold every flow's α.
        let delay = match self.buffer {
            Some(b) => self.cfg.alpha_delay.min(b / 4.0),
            None => self.cfg.alpha_delay,
        };
        (c * delay).max(self.cfg.alpha_min)
    }

    /// Competitive mode, after Copa's: a delay-based flow keeps α bytes queued, a loss-based
    /// one fills the buffer, so at FAST's equilibrium (`rate = α / queue delay`) the delay
    /// flow starves. Instead of emulating TCP's sawtooth, adapt α so that this flow's
    /// delivery rate approaches an even split of the measured capacity with one competitor
    /// (`competitive_share`); FAST's own law then holds that rate.
    fn seek_share(&mut self, per_rtt: f64, signal: &PathSignal) {
        let base_alpha = self.alpha();
        let alpha = self.competitive_alpha.get_or_insert(base_alpha);
        let (Some(c), Some(rate)) = (self.capacity.get(), signal.delivery_rate) else {
            return;
        };
        let share = rate / c;
        let error = (self.cfg.competitive_share - share) / self.cfg.competitive_share;
        // A dead band: delivery rates are noisy, and a share within 10 % is fair enough.
        if error.abs() > 0.1 {
            *alpha *= (1.0 + error.clamp(-0.5, 1.0) * per_rtt * 0.25).max(0.5);
        }
        // Never below the flow's own α, never more than its share of the deepest queue
        // seen: past that, more α only overflows the buffer.
        let ceiling = self.cfg.competitive_share * self.queue_max * c;
        *alpha = alpha.min(ceiling).max(base_alpha);
    }

    fn rtt(&self) -> f64 {
        self.base_rtt() + self.queue_delay
    }

    /// The loop's delay without queueing: the path's least RTT plus two feedback intervals,
    /// since that is how late the window learns of deliveries, even on a path with no
    /// delay at all.
    fn base_rtt(&self) -> f64 {
        if self.min_rtt.is_finite() {
            (self.min_rtt + 2.0 * self.feedback_gap).max(MIN_RTT_FLOOR)
        } else {
            0.1
        }
    }

    fn clamp_window(&mut self) {
        let rtt = self.rtt();
        let max = self.limits.target_bps as f64 / 8.0 * rtt + self.alpha();
        let min = (self.limits.min_bps as f64 / 8.0 * rtt).max(2.0 * self.cfg.mss);
        self.window = self.window.clamp(min, max.max(min));
    }

    /// Closes the current loss epoch (at least a round trip long) and says whether its loss
    /// came from a full queue rather than the channel: the queue stood deep (near the
    /// deepest seen, and past 10 ms) and the epoch lost clearly more than the long-run
    /// channel loss rate. An epoch of a round trip holds enough datagrams that random loss
    /// does not pass for congestion.
    fn end_epoch(&mut self, now: Timestamp, signal: &PathSignal) -> bool {
        self.epoch.lost += signal.lost_bytes as f64;
        self.epoch.delivered += signal.delivered_bytes as f64;
        self.epoch.queue_max = self.epoch.queue_max.max(self.queue_delay);
        let length = now.saturating_since(self.epoch.start).as_secs_f64();
        if length < self.rtt().max(0.02) {
            return false;
        }
        let e = core::mem::replace(
            &mut self.epoch,
            LossEpoch {
                start: now,
                ..LossEpoch::default()
            },
        );
        let ratio = e.lost / (e.lost + e.delivered).max(1.0);
        // Random loss does not depend on the queue, overflow does: classify only against a
        // channel loss rate learnt from epochs whose queue stayed low.
        let known_channel = self.lost_total + self.delivered_total >= 64.0 * self.cfg.mss;
        // Before that, only a deep standing queue (which delay-based flows alone do not
        // build) makes loss look like overflow.
        let deep = e.queue_max >= if known_channel { 0.0005 } else { 0.010 };
        let congested = e.lost > 0.0
            && deep
            && e.queue_max >= 0.5 * self.queue_max
            && ratio > 2.0 * self.channel_loss + 0.02;
        if congested {
            // The queue overflowed at about this depth: the path's buffer.
            self.buffer = Some(self.buffer.map_or(e.queue_max, |b: f64| b.min(e.queue_max)));
        }
        // Only epochs whose queue stayed well short of full say what the channel loses.
        if !congested && e.queue_max < (0.5 * self.queue_max).max(0.002) {
            self.lost_total += e.lost;
            self.delivered_total += e.delivered;
            self.channel_loss = self.lost_total / (self.lost_total + self.delivered_total).max(1.0);
        }
        congested
    }
}

impl Controller for DelayBased {
    fn on_sent(&mut self, _now: Timestamp, _bytes: usize) {}

    fn on_feedback(&mut self, now: Timestamp, signal: &PathSignal) {
        let dt = self
            .last_update
            .map_or(0.0, |t| now.saturating_since(t).as_secs_f64());
        self.last_update = Some(now);
        if dt > 0.0 {
            // Gaps longer than 100 ms are silences, not the feedback cadence.
            self.feedback_gap += (dt.min(0.1) - self.feedback_gap) / 8.0;
        }
        let min_rtt = signal.min_rtt.as_secs_f64();
        if min_rtt > 0.0 {
            self.min_rtt = min_rtt;
        }
        if let Some(owd) = signal.owd_us {
            let base = self.base.update(now, owd);
            self.queue_delay = (owd - base).max(0) as f64 / 1e6;
        }
        // The deepest queue decays over ~10 s so a vanished competitor is forgotten.
        self.queue_max = (self.queue_max * (1.0 - dt / 10.0).max(0.0)).max(self.queue_delay);
        if let Some(c) = signal.capacity {
            self.capacity.update(now, c);
        }
        if let Some(d) = signal.delivery_rate {
            self.delivered.update(now, d);
        }
        let rtt = self.rtt();
        let per_rtt = (dt / rtt).min(1.0);
        let congestion = self.end_epoch(now, signal);

        match self.phase {
            Phase::Startup => {
                // The first window assumed a 100 ms path; keep the initial rate on this one.
                self.window = self.window.max(self.cfg.initial_rate * self.base_rtt());
                if let Some(c) = self.capacity.get() {
                    // Jump start: fill the pipe the bursts measured, half of it if a queue
                    // already stands (someone else is there).
                    let share = if self.queue_delay > 0.002 { 0.5 } else { 1.0 };
                    self.window = self.window.max(c * share * self.base_rtt() + self.alpha());
                    self.phase = Phase::Steady;
                } else if self.queue_delay > 0.005 {
                    self.phase = Phase::Steady;
                } else {
                    self.window *= 2f64.powf(per_rtt);
                }
            }
            Phase::Steady | Phase::Competitive => {
                if congestion && self.phase == Phase::Competitive {
                    // Overflow is what the buffer filler does; the share seeking below
                    // answers it.
                    self.last_cut = now;
                } else if congestion && now.saturating_since(self.last_cut).as_secs_f64() > rtt {
                    // Queue-overflow loss: slow down, whoever filled the queue. With a
                    // buffer deep enough for delay-based flows (10 ms and more), only a
                    // buffer filler explains it: compete.
                    self.window *= 0.7;
                    self.last_cut = now;
                    if self.cfg.competitive && self.buffer.is_some_and(|b| b >= 0.010) {
                        self.phase = Phase::Competitive;
                    }
                }
                if self.phase == Phase::Competitive {
                    self.seek_share(per_rtt, signal);
                    // Back to plain delay-based after a long spell without overflow loss:
                    // the buffer filler is gone (loss-based flows overflow the buffer every
                    // few seconds; CUBIC's epoch is its K).
                    if now.saturating_since(self.last_cut).as_secs_f64() > (20.0 * rtt).max(5.0) {
                        self.phase = Phase::Steady;
                        self.competitive_alpha = None;
                    }
                }
                let alpha = self.competitive_alpha.unwrap_or_else(|| self.alpha());
                let mut target = self.base_rtt() / rtt * self.window + alpha;
                // An all but empty queue with capacity to spare: the pipe is not full (a
                // competitor left, or the start was cautious). FAST alone would add only
                // alpha per round trip; head for the measured pipe instead.
                if let Some(c) = self.capacity.get()
                    && self.queue_delay < 0.25 * alpha / c
                {
                    target = target.max(c * self.base_rtt() + alpha);
                }
                let next = self.window + self.cfg.gamma * per_rtt * (target - self.window);
                self.window = next.min(self.window * 2f64.powf(per_rtt));
            }
        }
        self.clamp_window();
    }

    fn on_silence(&mut self, _now: Timestamp, _since: Duration) {
        self.window *= 0.5;
        self.clamp_window();
    }

    fn set_limits(&mut self, limits: RateLimits) {
        self.limits = limits;
        self.clamp_window();
    }

    fn limits(&self) -> RateLimits {
        self.limits
    }

    fn rate(&self) -> f64 {
        self.limits.clamp_bytes(self.window / self.rtt())
    }

    fn window(&self) -> Option<f64> {
        Some(self.window)
    }

    fn queue_delay(&self) -> Option<Duration> {
        Some(Duration::from_secs_f64(self.queue_delay))
    }

    fn phase(&self) -> &'static str {
        match self.phase {
            Phase::Startup => "startup",
            Phase::Steady => "steady",
            Phase::Competitive => "competitive",
        }
    }
}
