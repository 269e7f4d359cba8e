//! Durations and byte sizes as operators write them (`"30s"`, `"1h 30m"`, `"256MB"`, `"512MiB"`,
//! Docker's `"256m"`), parsed and printed the same way everywhere: config sections, manifests
//! and messages. A leaf: it imports nothing of ours, so any layer may use it.

use std::time::Duration;

/// A positive duration for `key`, or a violation naming it.
pub fn parse_duration(key: &str, value: &str, violations: &mut Vec<String>) -> Option<Duration> {
    match humantime::parse_duration(value) {
        Ok(d) if !d.is_zero() => Some(d),
        Ok(_) => {
            violations.push(format!("{key} = {value:?}: must be greater than zero"));
            None
        }
        Err(e) => {
            violations.push(format!(
                "{key} = {value:?}: not a duration ({e}); use e.g. \"30s\", \"5m\" or \"1h 30m\""
            ));
            None
        }
    }
}

/// Parses a byte size such as `256MB`, `1GB`, `512MiB` or `256m`, naming `key` on error.
/// See [`parse_size`] for the units.
pub fn parse_byte_size(key: &str, value: &str) -> Result<u64, String> {
    parse_size(value).map_err(|e| {
        format!("{key} = {value:?}: not a size ({e}); use e.g. \"256MB\", \"512MiB\" or \"1g\"")
    })
}

/// Parses a byte size. `KB`/`MB`/`GB`/`TB` are decimal (SI: `256MB` = 256,000,000 bytes),
/// `KiB`/`MiB`/`GiB`/`TiB` binary, and a lone `k`/`m`/`g`/`t` (either case) is binary like
/// Docker's `--memory 256m` (= 256 MiB), so limits copied from a `docker run` line mean the
/// same here. A bare number is bytes; fractions are allowed (`1.5GiB`). Units: the `bytesize`
/// crate, except the lone letters, which it would read as decimal.
pub fn parse_size(value: &str) -> Result<u64, String> {
    let value = value.trim();
    if !value.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("must start with a number".to_owned());
    }
    let split = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let shift = match unit.trim() {
        "k" | "K" => 10,
        "m" | "M" => 20,
        "g" | "G" => 30,
        "t" | "T" => 40,
        _ => {
            return value
                .parse::<bytesize::ByteSize>()
                .map(|b| b.as_u64())
                .map_err(|e| e.to_string());
        }
    };
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{number:?} is not a number"))?;
    let bytes = number * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err("too large".to_owned());
    }
    Ok(bytes.round() as u64)
}

/// A byte size of `section.key` that must lie in `min..=max`; records a violation otherwise
/// (and returns 0).
pub fn bounded_size(
    section: &str,
    key: &str,
    value: &str,
    (min, max): (u64, u64),
    violations: &mut Vec<String>,
) -> u64 {
    let name = format!("{section}.{key}");
    match parse_byte_size(&name, value) {
        Ok(bytes) if (min..=max).contains(&bytes) => bytes,
        Ok(bytes) => {
            violations.push(format!(
                "{name} = {value:?} ({bytes} bytes): must be between {} and {}",
                format_bytes(min),
                format_bytes(max)
            ));
            0
        }
        Err(e) => {
            violations.push(e);
            0
        }
    }
}

/// A byte count in the largest unit that divides it exactly, binary first (`2GiB`, `256MB`,
/// `1234B`), so a limit reads back the way it was probably written.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [(u64, &str); 6] = [
        (1 << 30, "GiB"),
        (1_000_000_000, "GB"),
        (1 << 20, "MiB"),
        (1_000_000, "MB"),
        (1 << 10, "KiB"),
        (1_000, "KB"),
    ];
    for (size, unit) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    format!("{bytes}B")
}

/// A duration as `humantime` prints it (`1m 30s`), for `check` and messages.
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_print_in_the_unit_they_divide() {
        assert_eq!(format_bytes(2 << 30), "2GiB");
        assert_eq!(format_bytes(256_000_000), "256MB");
        assert_eq!(format_bytes(1234), "1234B");
    }

    #[test]
    fn byte_sizes_accept_the_documented_forms_and_reject_others() {
        assert_eq!(parse_byte_size("k", "256MB").unwrap(), 256_000_000);
        assert_eq!(parse_byte_size("k", "512MiB").unwrap(), 512 * 1024 * 1024);
        assert_eq!(parse_byte_size("k", "1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_byte_size("k", "256m").unwrap(), 256 * 1024 * 1024);
        assert_eq!(parse_byte_size("k", "2G").unwrap(), 2 << 30);
        assert_eq!(parse_byte_size("k", "1.5GiB").unwrap(), 3 << 29);
        for bad in ["-1", "12XB", "", "m", "1.2.3m"] {
            assert!(parse_byte_size("k", bad).is_err(), "{bad:?} was accepted");
        }
        let err = parse_byte_size("sandbox.max_memory", "lots").unwrap_err();
        assert!(
            err.contains("sandbox.max_memory") && err.contains("lots"),
            "{err}"
        );
    }
}
