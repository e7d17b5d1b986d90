//! Loss models: independent random loss and Gilbert–Elliott bursts.

use crate::rng::Rng;

/// How packets are lost on the wire (after the bottleneck queue).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Loss {
    /// Nothing is lost on the wire.
    None,
    /// Each packet is lost independently with this probability.
    Random(f64),
    /// A two-state Markov chain (Gilbert–Elliott): before each packet the state may flip,
    /// then the packet is lost with the state's loss probability.
    GilbertElliott {
        /// Probability of moving from good to bad, per packet.
        to_bad: f64,
        /// Probability of moving from bad to good, per packet (1 / mean burst length).
        to_good: f64,
        /// Loss probability in the good state.
        loss_good: f64,
        /// Loss probability in the bad state.
        loss_bad: f64,
    },
}

impl Loss {
    /// The long-run fraction of packets lost.
    pub fn mean(&self) -> f64 {
        match *self {
            Loss::None => 0.0,
            Loss::Random(p) => p,
            Loss::GilbertElliott {
                to_bad,
                to_good,
                loss_good,
                loss_bad,
            } => {
                if to_bad + to_good == 0.0 {
                    return loss_good;
                }
                let bad = to_bad / (to_bad + to_good);
                bad * loss_bad + (1.0 - bad) * loss_good
            }
        }
    }
}

/// A [`Loss`] model with its state (the Gilbert–Elliott chain's current state).
#[derive(Clone, Debug)]
pub struct LossState {
    model: Loss,
    bad: bool,
}

impl LossState {
    /// Starts in the good state.
    pub fn new(model: Loss) -> LossState {
        LossState { model, bad: false }
    }

    /// Draws the fate of one packet: true when it is lost.
    pub fn lose(&mut self, rng: &mut Rng) -> bool {
        match self.model {
            Loss::None => false,
            Loss::Random(p) => rng.chance(p),
            Loss::GilbertElliott {
                to_bad,
                to_good,
                loss_good,
                loss_bad,
            } => {
                let flip = rng.chance(if self.bad { to_good } else { to_bad });
                self.bad ^= flip;
                rng.chance(if self.bad { loss_bad } else { loss_good })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(model: Loss, n: usize) -> (f64, f64) {
        let mut s = LossState::new(model);
        let mut rng = Rng::new(3);
        let (mut lost, mut bursts, mut prev) = (0usize, 0usize, false);
        for _ in 0..n {
            let l = s.lose(&mut rng);
            lost += usize::from(l);
            bursts += usize::from(l && !prev);
            prev = l;
        }
        (lost as f64 / n as f64, lost as f64 / bursts.max(1) as f64)
    }

    #[test]
    fn random_loss_matches_p() {
        let (p, burst) = rate(Loss::Random(0.01), 1_000_000);
        assert!((p - 0.01).abs() < 0.0005, "{p}");
        assert!(burst < 1.1, "independent losses come alone: {burst}");
    }

    #[test]
    fn gilbert_elliott_matches_its_stationary_mean_and_bursts() {
        let m = Loss::GilbertElliott {
            to_bad: 0.001,
            to_good: 0.1,
            loss_good: 0.0,
            loss_bad: 1.0,
        };
        let (p, burst) = rate(m, 2_000_000);
        assert!((p - m.mean()).abs() < 0.002, "{p} vs {}", m.mean());
        // Mean time in the bad state is 1 / to_good = 10 packets.
        assert!((8.0..12.0).contains(&burst), "{burst}");
    }
}
