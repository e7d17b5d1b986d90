use proptest::prelude::*;

use super::*;
use crate::wire::{self, BlockRef, DATA_HEADER_LEN, Kind, Packet};

fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2));
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Runs a generic test body once per backend compiled in. RustCrypto is always there in
/// tests (aes-gcm is a dev-dependency); aws-lc and ring only with their features.
macro_rules! each_backend {
    ($f:ident) => {{
        #[cfg(feature = "aws-lc")]
        $f::<AwsLc>();
        #[cfg(feature = "ring")]
        $f::<Ring>();
        $f::<RustCrypto>();
    }};
}

struct Vector {
    key: &'static str,
    iv: &'static str,
    aad: &'static str,
    pt: &'static str,
    ct: &'static str,
    tag: &'static str,
}

const P64: &str = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
                   1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255";
const P60: &str = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
                   1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39";
const K128: &str = "feffe9928665731c6d6a8f9467308308";
const K256: &str = "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308";
const IV: &str = "cafebabefacedbaddecaf888";
const AAD: &str = "feedfacedeadbeeffeedfacedeadbeefabaddad2";

/// McGrew and Viega, "The Galois/Counter Mode of Operation (GCM)", test cases 3, 4, 15, 16.
const VECTORS: [Vector; 4] = [
    Vector {
        key: K128,
        iv: IV,
        aad: "",
        pt: P64,
        ct: "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e\
             21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985",
        tag: "4d5c2af327cd64a62cf35abd2ba6fab4",
    },
    Vector {
        key: K128,
        iv: IV,
        aad: AAD,
        pt: P60,
        ct: "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e\
             21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091",
        tag: "5bc94fbc3221a5db94fae95ae7121a47",
    },
    Vector {
        key: K256,
        iv: IV,
        aad: "",
        pt: P64,
        ct: "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
             8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad",
        tag: "b094dac5d93471bdec1a502270e3cc6c",
    },
    Vector {
        key: K256,
        iv: IV,
        aad: AAD,
        pt: P60,
        ct: "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
             8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
        tag: "76fc6ece0f4e1768cddf8853bb2d551b",
    },
];

fn gcm_vectors<A: Aead>() {
    for (i, v) in VECTORS.iter().enumerate() {
        let a = A::new(&hex(v.key)).unwrap();
        let nonce: [u8; 12] = hex(v.iv).try_into().unwrap();
        let aad = hex(v.aad);
        let mut buf = hex(v.pt);
        let tag = a.seal_in_place(&nonce, &aad, &mut buf);
        assert_eq!(buf, hex(v.ct), "vector {i} ciphertext");
        assert_eq!(tag.to_vec(), hex(v.tag), "vector {i} tag");
        a.open_in_place(&nonce, &aad, &mut buf, &tag).unwrap();
        assert_eq!(buf, hex(v.pt), "vector {i} opened");

        let mut bad = tag;
        bad[15] ^= 1;
        let mut buf = hex(v.ct);
        assert_eq!(
            a.open_in_place(&nonce, &aad, &mut buf, &bad),
            Err(Error::Authentication)
        );
    }
}

#[test]
fn gcm_test_vectors() {
    each_backend!(gcm_vectors);
}

fn rejects_bad_key_lengths<A: Aead>() {
    for len in [0, 15, 17, 24, 31, 33] {
        assert!(A::new(&vec![0; len]).is_none(), "{len}");
    }
}

#[test]
fn bad_key_lengths() {
    each_backend!(rejects_bad_key_lengths);
}

const SECRET: [u8; 32] = {
    let mut s = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        s[i] = i as u8;
        i += 1;
    }
    s
};

/// Pins the key schedule; values computed independently with Python's hmac module.
#[test]
fn key_schedule_known_answer() {
    let c2s = "2eef6396ff65b6a6c60e2f49235a0e559d4847f561e96b44ba578b314f6b0276";
    let s2c = "74e7fa8db5bd87ffb85017e95a8b49aac0c79ce6a013ab4d3ffdd98b759fda0b";
    let s = derive_keys(&SECRET, Cipher::Aes256Gcm, Direction::ClientToServer);
    assert_eq!(s.key(), hex(c2s));
    assert_eq!(s.iv.to_vec(), hex("d5c00901db8e4c4b99ee74d3"));
    let s = derive_keys(&SECRET, Cipher::Aes128Gcm, Direction::ClientToServer);
    assert_eq!(s.key(), &hex(c2s)[..16]);
    let s = derive_keys(&SECRET, Cipher::Aes256Gcm, Direction::ServerToClient);
    assert_eq!(s.key(), hex(s2c));
    assert_eq!(s.iv.to_vec(), hex("85b919b77b7c75455972df87"));
    let s = derive_keys(&SECRET, Cipher::None, Direction::ServerToClient);
    assert!(s.key().is_empty());
}

#[test]
fn cipher_names() {
    for c in Cipher::ALL {
        assert_eq!(c.to_string().parse::<Cipher>(), Ok(c));
    }
    assert_eq!("aes128".parse(), Ok(Cipher::Aes128Gcm));
    assert_eq!("AES128".parse::<Cipher>(), Err(Error::BadCipher));
    assert_eq!("".parse::<Cipher>(), Err(Error::BadCipher));
    assert_eq!(Cipher::None.trailer_len(), 4);
    assert_eq!(Cipher::Aes256Gcm.trailer_len(), 16);
    assert_eq!(Cipher::Aes256Gcm.key_len(), 32);
}

/// A data datagram of `payload` bytes with packet number `pn`, sealed; returns the buffer
/// trimmed to the datagram.
fn sealed_data<A: Aead>(key: &PacketKey<A>, pn: u64, payload: &[u8]) -> Vec<u8> {
    let p = Packet::Data {
        header: wire::Header {
            kind: Kind::Data,
            flags: 0,
            session: 77,
            pn,
            send_ts_us: 123_456,
        },
        block: BlockRef {
            file: 1,
            offset: 4096,
            len: 0,
        },
        payload,
    };
    let mut buf = vec![0u8; DATA_HEADER_LEN + payload.len() + TAG_LEN];
    let n = p.encode(&mut buf).unwrap();
    let n = key
        .seal(&mut buf, DATA_HEADER_LEN, n - DATA_HEADER_LEN)
        .unwrap();
    buf.truncate(n);
    buf
}

/// The nonce is IV XOR (0u32 || pn): check against the raw AEAD with a hand-built nonce.
fn nonce_construction<A: Aead>() {
    for cipher in [Cipher::Aes128Gcm, Cipher::Aes256Gcm] {
        let dir = Direction::ServerToClient;
        let key = PacketKey::<A>::new(&SECRET, cipher, dir);
        let pn = 0x0102_0304_0506_0708u64;
        let dg = sealed_data(&key, pn, b"hello");

        let s = derive_keys(&SECRET, cipher, dir);
        let mut nonce = s.iv;
        for (i, b) in [1u8, 2, 3, 4, 5, 6, 7, 8].into_iter().enumerate() {
            nonce[4 + i] ^= b;
        }
        let raw = A::new(s.key()).unwrap();
        let mut body = *b"hello";
        let tag = raw.seal_in_place(&nonce, &dg[..DATA_HEADER_LEN], &mut body);
        assert_eq!(&dg[DATA_HEADER_LEN..DATA_HEADER_LEN + 5], &body);
        assert_eq!(&dg[DATA_HEADER_LEN + 5..], &tag);
    }
}

#[test]
fn nonce_is_iv_xor_pn() {
    each_backend!(nonce_construction);
}

fn every_bit_flip_is_caught<A: Aead>() {
    for cipher in Cipher::ALL {
        let key = PacketKey::<A>::new(&SECRET, cipher, Direction::ClientToServer);
        let good = sealed_data(&key, 9, b"some file bytes");
        let mut copy = good.clone();
        assert_eq!(key.open(&mut copy), Ok(good.len() - cipher.trailer_len()));
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut d = good.clone();
                d[i] ^= 1 << bit;
                let r = key.open(&mut d);
                // Bytes 0..4 (version, kind, flags) may fail header decoding first.
                if i >= 4 {
                    let want = match cipher {
                        Cipher::None => Error::Checksum,
                        _ => Error::Authentication,
                    };
                    assert_eq!(r, Err(want), "{cipher} byte {i} bit {bit}");
                } else {
                    assert!(r.is_err(), "{cipher} byte {i} bit {bit}");
                }
            }
        }
    }
}

#[test]
fn bit_flips_fail() {
    each_backend!(every_bit_flip_is_caught);
}

fn wrong_key_fails<A: Aead>() {
    for cipher in [Cipher::Aes128Gcm, Cipher::Aes256Gcm] {
        let c2s = PacketKey::<A>::new(&SECRET, cipher, Direction::ClientToServer);
        let s2c = PacketKey::<A>::new(&SECRET, cipher, Direction::ServerToClient);
        let mut d = sealed_data(&c2s, 1, b"payload");
        assert_eq!(s2c.open(&mut d.clone()), Err(Error::Authentication));
        let mut other = SECRET;
        other[0] ^= 1;
        let stranger = PacketKey::<A>::new(&other, cipher, Direction::ClientToServer);
        assert_eq!(stranger.open(&mut d.clone()), Err(Error::Authentication));
        assert!(c2s.open(&mut d).is_ok());
    }
    // 128 and 256 share a key prefix from HKDF, but must still not open each other.
    let k128 = PacketKey::<A>::new(&SECRET, Cipher::Aes128Gcm, Direction::ClientToServer);
    let k256 = PacketKey::<A>::new(&SECRET, Cipher::Aes256Gcm, Direction::ClientToServer);
    let mut d = sealed_data(&k128, 1, b"payload");
    assert_eq!(k256.open(&mut d), Err(Error::Authentication));
}

#[test]
fn wrong_direction_or_secret_fails() {
    each_backend!(wrong_key_fails);
}

fn size_errors<A: Aead>() {
    for cipher in Cipher::ALL {
        let key = PacketKey::<A>::new(&SECRET, cipher, Direction::ClientToServer);
        let t = cipher.trailer_len();
        let mut buf = vec![0u8; DATA_HEADER_LEN + 10 + t - 1];
        assert_eq!(
            key.seal(&mut buf, DATA_HEADER_LEN, 10),
            Err(Error::BufferTooSmall)
        );
        assert_eq!(
            key.seal(&mut buf, DATA_HEADER_LEN, usize::MAX),
            Err(Error::BufferTooSmall)
        );
        assert_eq!(key.seal(&mut buf, 8, 0), Err(Error::Truncated));

        // Too short to hold a data header plus trailer, though the common header decodes.
        let good = sealed_data(&key, 3, b"x");
        for n in 0..good.len() {
            assert!(
                key.open(&mut good[..n].to_vec()).is_err(),
                "{cipher} len {n}"
            );
        }
        assert_eq!(
            key.open(&mut good[..DATA_HEADER_LEN + t - 1].to_vec()),
            Err(Error::Truncated)
        );
    }
}

#[test]
fn buffer_and_length_errors() {
    each_backend!(size_errors);
}

/// An [`Aead`] as a trait object, so one test can hold every backend.
trait Sealer {
    fn seal(&self, nonce: &[u8; 12], aad: &[u8], inout: &mut [u8]) -> [u8; TAG_LEN];
    fn open(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        inout: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), Error>;
}

impl<A: Aead> Sealer for A {
    fn seal(&self, nonce: &[u8; 12], aad: &[u8], inout: &mut [u8]) -> [u8; TAG_LEN] {
        self.seal_in_place(nonce, aad, inout)
    }
    fn open(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        inout: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), Error> {
        self.open_in_place(nonce, aad, inout, tag)
    }
}

fn arb_cipher() -> impl Strategy<Value = Cipher> {
    prop::sample::select(Cipher::ALL.to_vec())
}

/// Seal with one backend, open with the other, and the reverse; plus a wire round trip.
fn round_trip<A: Aead, B: Aead>(
    cipher: Cipher,
    secret: &[u8; 32],
    o: &wire::tests::Owned,
) -> Result<(), TestCaseError> {
    let sealer = PacketKey::<A>::new(secret, cipher, Direction::ServerToClient);
    let opener = PacketKey::<B>::new(secret, cipher, Direction::ServerToClient);
    let p = o.packet();
    let mut buf = vec![0u8; 4096];
    let n = p.encode(&mut buf)?;
    let plain = buf[..n].to_vec();
    let hlen = p.header().kind.header_len();
    let len = sealer.seal(&mut buf, hlen, n - hlen)?;
    prop_assert_eq!(len, n + cipher.trailer_len());
    if cipher != Cipher::None && n > hlen {
        prop_assert_ne!(&buf[hlen..n], &plain[hlen..], "body left in clear");
    }
    let opened = opener.open(&mut buf[..len])?;
    prop_assert_eq!(opened, n);
    prop_assert_eq!(&buf[..n], &plain[..]);
    prop_assert_eq!(wire::parse(&buf[..n])?, p);
    Ok(())
}

proptest! {
    #[test]
    fn seal_open_round_trip(
        cipher in arb_cipher(),
        secret in any::<[u8; 32]>(),
        o in wire::tests::arb_owned(),
    ) {
        round_trip::<RustCrypto, RustCrypto>(cipher, &secret, &o)?;
        #[cfg(feature = "aws-lc")]
        {
            round_trip::<AwsLc, AwsLc>(cipher, &secret, &o)?;
            round_trip::<AwsLc, RustCrypto>(cipher, &secret, &o)?;
            round_trip::<RustCrypto, AwsLc>(cipher, &secret, &o)?;
        }
        #[cfg(feature = "ring")]
        {
            round_trip::<Ring, Ring>(cipher, &secret, &o)?;
            round_trip::<Ring, RustCrypto>(cipher, &secret, &o)?;
            round_trip::<RustCrypto, Ring>(cipher, &secret, &o)?;
        }
        #[cfg(all(feature = "aws-lc", feature = "ring"))]
        {
            round_trip::<AwsLc, Ring>(cipher, &secret, &o)?;
            round_trip::<Ring, AwsLc>(cipher, &secret, &o)?;
        }
    }

    /// Every backend built in seals to the same bytes and opens every other's, and the
    /// dispatcher does so on each of the backends it can choose.
    #[test]
    fn backends_agree(
        key in prop_oneof![
            prop::collection::vec(any::<u8>(), 16),
            prop::collection::vec(any::<u8>(), 32),
        ],
        nonce in any::<[u8; 12]>(),
        aad in prop::collection::vec(any::<u8>(), 0..64),
        pt in prop::collection::vec(any::<u8>(), 0..2000),
    ) {
        #[allow(unused_mut)] // nothing to push with the pure-Rust backend alone
        let mut backends: Vec<Box<dyn Sealer>> = vec![Box::new(RustCrypto::new(&key).unwrap())];
        #[cfg(feature = "aws-lc")]
        backends.push(Box::new(AwsLc::new(&key).unwrap()));
        #[cfg(feature = "ring")]
        backends.push(Box::new(Ring::new(&key).unwrap()));
        #[cfg(all(feature = "aws-lc", feature = "ring"))]
        for b in Backend::ALL {
            let f = Fastest::on(b, &key).unwrap();
            prop_assert_eq!(f.backend(), b);
            backends.push(Box::new(f));
        }
        let sealed: Vec<(Vec<u8>, [u8; TAG_LEN])> = backends
            .iter()
            .map(|k| {
                let mut c = pt.clone();
                let tag = k.seal(&nonce, &aad, &mut c);
                (c, tag)
            })
            .collect();
        for (c, tag) in &sealed {
            prop_assert_eq!(c, &sealed[0].0);
            prop_assert_eq!(tag, &sealed[0].1);
        }
        for k in &backends {
            let mut c = sealed[0].0.clone();
            k.open(&nonce, &aad, &mut c, &sealed[0].1)?;
            prop_assert_eq!(&c, &pt);
        }
    }

    /// Sealing out of place (from a mapped file, say) gives the very datagram sealing in
    /// place does, for every backend and cipher.
    #[test]
    fn sealing_from_elsewhere_matches_sealing_in_place(
        cipher in arb_cipher(),
        secret in any::<[u8; 32]>(),
        pn in any::<u64>(),
        body in prop::collection::vec(any::<u8>(), 0..3000),
    ) {
        fn check<A: Aead>(cipher: Cipher, secret: &[u8; 32], pn: u64, body: &[u8]) -> Result<(), TestCaseError> {
            let key = PacketKey::<A>::new(secret, cipher, Direction::ClientToServer);
            let header_len = wire::DATA_HEADER_LEN;
            let mut in_place = vec![0u8; header_len + body.len() + key.trailer_len()];
            in_place[8..16].copy_from_slice(&pn.to_be_bytes());
            in_place[header_len..header_len + body.len()].copy_from_slice(body);
            let mut from = in_place.clone();
            from[header_len..].fill(0xAA);
            let a = key.seal(&mut in_place, header_len, body.len()).unwrap();
            let b = key.seal_from(&mut from, header_len, body).unwrap();
            prop_assert_eq!(a, b);
            prop_assert_eq!(&in_place, &from);
            // No room for the trailer: refused, not a panic.
            let mut short = vec![0u8; header_len + body.len()];
            prop_assert_eq!(key.seal_from(&mut short, header_len, body), Err(Error::BufferTooSmall));
            Ok(())
        }
        check::<RustCrypto>(cipher, &secret, pn, &body)?;
        #[cfg(feature = "aws-lc")]
        check::<AwsLc>(cipher, &secret, pn, &body)?;
        #[cfg(feature = "ring")]
        check::<Ring>(cipher, &secret, pn, &body)?;
    }

    #[test]
    fn open_never_panics(
        cipher in arb_cipher(),
        mut bytes in prop::collection::vec(any::<u8>(), 0..200),
        valid_prefix in any::<bool>(),
    ) {
        if valid_prefix && bytes.len() >= 2 {
            // Get past header decoding so the trailer checks see the input.
            bytes[0] = wire::VERSION;
            bytes[1] = (bytes[1] % 4) + 1;
        }
        let key = PacketKey::<RustCrypto>::new(&SECRET, cipher, Direction::ClientToServer);
        if let Ok(n) = key.open(&mut bytes) {
            prop_assert!(n + cipher.trailer_len() == bytes.len());
            let _ = wire::parse(&bytes[..n]);
        }
    }
}
