//! A size in bytes as a person writes it: `512M`, `2G`, `1536K`, `1000`.

use std::fmt;
use std::str::FromStr;

/// A number of bytes. Parsed from digits and an optional binary unit (`K`, `M`, `G`, `T`:
/// powers of 1024, in either case, optionally followed by `B` or `iB`); displayed with the
/// largest unit that divides it exactly, so `Display` reads back to the same value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

const UNITS: [(&str, u32); 4] = [("T", 40), ("G", 30), ("M", 20), ("K", 10)];

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<ByteSize, String> {
        let text = text.trim();
        let digits = text.bytes().take_while(u8::is_ascii_digit).count();
        let (number, unit) = text.split_at(digits);
        let number: u64 = number
            .parse()
            .map_err(|_| "expected a size such as 512M or 2G".to_owned())?;
        let unit = unit.trim_start().to_ascii_uppercase();
        let unit = unit
            .strip_suffix("IB")
            .or_else(|| unit.strip_suffix('B'))
            .unwrap_or(&unit);
        let shift = match unit {
            "" => 0,
            _ => match UNITS.iter().find(|(name, _)| *name == unit) {
                Some((_, shift)) => *shift,
                None => return Err("unknown unit; use K, M, G or T (powers of 1024)".to_owned()),
            },
        };
        number
            .checked_mul(1u64 << shift)
            .map(ByteSize)
            .ok_or_else(|| "too large".to_owned())
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.0;
        for (name, shift) in UNITS {
            let unit = 1u64 << shift;
            if bytes != 0 && bytes.is_multiple_of(unit) {
                return write!(f, "{}{name}", bytes / unit);
            }
        }
        write!(f, "{bytes}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_powers_of_1024_and_display_reads_back() {
        let cases = [
            ("512M", 512 << 20),
            ("2G", 2 << 30),
            ("2g", 2 << 30),
            ("1536K", 1536 << 10),
            ("1.5G", 0),
            ("100", 100),
            ("4MiB", 4 << 20),
            ("4 MB", 4 << 20),
            ("1T", 1 << 40),
        ];
        for (text, bytes) in cases {
            match text.parse::<ByteSize>() {
                Ok(size) => {
                    assert_eq!(size.0, bytes, "{text}");
                    assert_eq!(size.to_string().parse::<ByteSize>(), Ok(size));
                }
                Err(_) => assert_eq!(bytes, 0, "{text} refused"),
            }
        }
        assert_eq!(ByteSize(512 << 20).to_string(), "512M");
        assert_eq!(ByteSize(1536 << 10).to_string(), "1536K");
        assert_eq!(ByteSize(1 << 30).to_string(), "1G");
        assert_eq!(ByteSize(1000).to_string(), "1000");
        for bad in ["", "M", "12X", "-1G", "99999999999T"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad:?} accepted");
        }
    }
}
