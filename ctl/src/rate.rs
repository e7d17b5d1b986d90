//! Rates as people type and read them: bits per second with `k`, `m`, `g`, `t` suffixes.
//!
//! The one grammar for ferryd's config, `ferry -l` and `ferryctl set-rate`: it lives here
//! because ferryctl cannot link the engine, and the engine re-exports it.

/// Parses a rate in bits per second: a number with an optional `k`, `m`, `g` or `t` suffix
/// (powers of 1000, any case, an optional `bps` after it): `800k`, `500m`, `10g`, `1.5g`,
/// `250000`.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix("bps").unwrap_or(&t);
    let t = t.strip_suffix("bit/s").unwrap_or(t);
    let (num, mult) = match t.as_bytes().last() {
        Some(b'k') => (&t[..t.len() - 1], 1e3),
        Some(b'm') => (&t[..t.len() - 1], 1e6),
        Some(b'g') => (&t[..t.len() - 1], 1e9),
        Some(b't') => (&t[..t.len() - 1], 1e12),
        _ => (t, 1.0),
    };
    let bad = || format!("{s:?} is not a rate (examples: 800k, 500m, 10g, in bits per second)");
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(bad());
    }
    if let Ok(n) = num.parse::<u64>() {
        return n
            .checked_mul(mult as u64)
            .ok_or_else(|| format!("{s:?} is too large a rate"));
    }
    let v: f64 = num.parse().map_err(|_| bad())?;
    let bps = (v * mult).round();
    if !bps.is_finite() || bps >= u64::MAX as f64 {
        return Err(format!("{s:?} is too large a rate"));
    }
    Ok(bps as u64)
}

/// A rate for people: `0`, `950 bit/s`, `800 kbit/s`, `199.8 Mbit/s`, `10 Gbit/s`.
pub fn human_rate(bps: u64) -> String {
    if bps == 0 {
        return "0".into();
    }
    let units = [
        (1e12, "Tbit/s"),
        (1e9, "Gbit/s"),
        (1e6, "Mbit/s"),
        (1e3, "kbit/s"),
    ];
    let v = bps as f64;
    for (scale, unit) in units {
        if v >= scale {
            return format!("{} {unit}", trim_decimal(v / scale));
        }
    }
    format!("{bps} bit/s")
}

/// A byte count for people, in binary units: `512 B`, `1.5 KiB`, `64.0 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    let units = [
        (1u64 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    for (scale, unit) in units {
        if bytes >= scale {
            return format!("{:.1} {unit}", bytes as f64 / scale as f64);
        }
    }
    format!("{bytes} B")
}

/// One decimal, without a trailing `.0`.
fn trim_decimal(v: f64) -> String {
    let s = format!("{v:.1}");
    s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_suffixes() {
        assert_eq!(parse_rate("800k"), Ok(800_000));
        assert_eq!(parse_rate("400m"), Ok(400_000_000));
        assert_eq!(parse_rate("400M"), Ok(400_000_000));
        assert_eq!(parse_rate("10g"), Ok(10_000_000_000));
        assert_eq!(parse_rate("1.5g"), Ok(1_500_000_000));
        assert_eq!(parse_rate("2t"), Ok(2_000_000_000_000));
        assert_eq!(parse_rate("250000"), Ok(250_000));
        assert_eq!(parse_rate(" 100mbps "), Ok(100_000_000));
        assert_eq!(parse_rate("0"), Ok(0));
    }

    #[test]
    fn bad_rates_say_what_a_rate_is() {
        for bad in ["", "m", "fast", "-5m", "1e9", "1.2.3m", "10 m", "0x10"] {
            let e = parse_rate(bad).unwrap_err();
            assert!(e.contains("is not a rate"), "{bad:?}: {e}");
        }
        assert!(parse_rate("99999999999999999999t").is_err());
        assert!(parse_rate("18446744073709551615k").is_err());
    }

    #[test]
    fn rates_print_for_people() {
        assert_eq!(human_rate(0), "0");
        assert_eq!(human_rate(950), "950 bit/s");
        assert_eq!(human_rate(800_000), "800 kbit/s");
        assert_eq!(human_rate(199_800_000), "199.8 Mbit/s");
        assert_eq!(human_rate(400_000_000), "400 Mbit/s");
        assert_eq!(human_rate(10_000_000_000), "10 Gbit/s");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(64 << 20), "64.0 MiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
