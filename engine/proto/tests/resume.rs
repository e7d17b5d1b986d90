//! A resumed session sends only what the receiver lacks: a lossless in-memory link between
//! a `Sender` and a `Receiver` that both start from the same held blocks.

use core::time::Duration;

use ferry_proto::crypto::{Cipher, Direction};
use ferry_proto::{
    Manifest, RangeSet, Receiver, ReceiverConfig, ReceiverEvent, Sender, SenderConfig, SenderEvent,
    SlotBuffers, Timestamp, wire,
};
use ferry_tuning::{Policy, RateLimits};

const BLOCK: u32 = 1000;
const SECRET: [u8; 32] = [9; 32];

/// What a finished run saw.
struct Run {
    /// Global blocks written by the receiver, in order of arrival.
    written: Vec<u64>,
    /// Payload bytes the sender sent for the first time.
    new_bytes: u64,
    complete: bool,
}

/// Runs the session to its end; every `drop_every`-th data datagram is lost (0: none).
fn run(sizes: Vec<u64>, held: RangeSet, drop_every: u64) -> Run {
    let manifest = Manifest::new(sizes, BLOCK).unwrap();
    let mut scfg = SenderConfig::new(7, Cipher::None, SECRET, Direction::ClientToServer);
    scfg.policy = Policy::Fixed;
    scfg.limits = RateLimits::new(1_000_000_000, 0);
    scfg.initial_rtt = Duration::from_millis(1);
    let rcfg = ReceiverConfig::new(7, Cipher::None, SECRET, Direction::ClientToServer);
    let mut now = Timestamp::ZERO;
    let mut tx: Sender = Sender::new_resuming(scfg, manifest.clone(), held.clone(), now);
    let mut rx: Receiver = Receiver::new_resuming(rcfg, manifest.clone(), held, now);
    let mut bufs = SlotBuffers::new(64, BLOCK, Cipher::None.trailer_len());
    let mut fb = vec![0u8; 2048];
    let mut out = Run {
        written: Vec::new(),
        new_bytes: 0,
        complete: false,
    };
    let mut sent = 0u64;
    for _ in 0..200_000 {
        while let Some(ev) = tx.poll_event() {
            match ev {
                SenderEvent::Read { slot, block } => {
                    let buf = &mut bufs.slots[slot as usize][wire::DATA_HEADER_LEN..];
                    buf[..block.len as usize].fill(block.file as u8);
                    tx.handle_read_done(now, slot, Ok(()));
                }
                SenderEvent::Complete => out.complete = true,
                SenderEvent::Failed(f) => panic!("sender failed: {f:?}"),
            }
        }
        while let Some(t) = tx.poll_transmit(now, &mut bufs) {
            let mut d = bufs.bytes(&t).to_vec();
            sent += 1;
            if drop_every > 0 && sent.is_multiple_of(drop_every) {
                continue;
            }
            if let Some(del) = rx.handle_datagram(now, &mut d) {
                let r = wire::BlockRef {
                    file: del.file,
                    offset: del.offset,
                    len: del.payload.len() as u32,
                };
                out.written.push(manifest.global(&r).expect("on the grid"));
                rx.handle_write_done(now, Ok(()));
            }
        }
        while let Some(ev) = rx.poll_event() {
            assert!(!matches!(ev, ReceiverEvent::Failed(_)), "{ev:?}");
        }
        while let Some(len) = rx.poll_transmit(now, &mut fb) {
            tx.handle_datagram(now, &mut fb[..len].to_vec());
        }
        if tx.is_done() {
            out.new_bytes = tx.stats().new_bytes;
            return out;
        }
        let next = [tx.poll_timeout(), rx.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now);
        now = next.max(now + Duration::from_micros(10));
        tx.handle_timeout(now);
        rx.handle_timeout(now);
    }
    panic!("the transfer did not finish");
}

#[test]
fn a_resumed_transfer_sends_only_the_missing_blocks() {
    // Three files of 50, 0 and 30.5 blocks: 81 blocks in all.
    let sizes = vec![50_000, 0, 30_500];
    let held = RangeSet::from_ranges([0..20, 25..40, 60..81]);
    let r = run(sizes.clone(), held.clone(), 0);
    assert!(r.complete);
    let mut written = r.written.clone();
    written.sort();
    written.dedup();
    assert_eq!(written.len(), r.written.len(), "a block was written twice");
    let want: Vec<u64> = (0..81).filter(|b| !held.contains(*b)).collect();
    assert_eq!(written, want);
    assert_eq!(r.new_bytes, 25 * 1000);

    // With loss, the gaps are re-sent, never the blocks held at the start.
    let r = run(sizes, held.clone(), 7);
    assert!(r.complete);
    let mut written = r.written;
    written.sort();
    assert_eq!(written, want);
}

#[test]
fn a_fresh_transfer_sends_everything() {
    let r = run(vec![12_345], RangeSet::new(), 0);
    assert!(r.complete);
    assert_eq!(r.written.len(), 13);
    assert_eq!(r.new_bytes, 12_345);
}

#[test]
fn everything_held_completes_without_data() {
    let r = run(
        vec![5_000, 7_000],
        RangeSet::from_ranges(std::iter::once(0..12)),
        0,
    );
    assert!(r.complete);
    assert!(r.written.is_empty());
    assert_eq!(r.new_bytes, 0);
}

#[test]
fn only_the_final_block_missing() {
    let r = run(
        vec![10_500],
        RangeSet::from_ranges(std::iter::once(0..10)),
        0,
    );
    assert!(r.complete);
    assert_eq!(r.written, vec![10]);
    assert_eq!(r.new_bytes, 500);
}
