//! `manifold builds --since T`: a point in time as RFC 3339 or as a duration ago.

use std::str::FromStr;

/// A lower bound on when builds were created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// This long before now, in ms (`90s`, `15m`, `2h`, `7d`).
    Ago(i64),
    /// At this Unix time in ms (`2026-12-01T08:00:00Z`, `2026-12-01T09:00:00+01:00`).
    At(i64),
}

impl Since {
    /// The Unix time in ms it names, `now_ms` being now.
    pub fn resolve(self, now_ms: i64) -> i64 {
        match self {
            Since::Ago(ms) => now_ms.saturating_sub(ms),
            Since::At(ms) => ms,
        }
    }
}

impl FromStr for Since {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(ms) = duration_ms(s) {
            return Ok(Since::Ago(ms));
        }
        rfc3339_ms(s).map(Since::At).ok_or_else(|| {
            format!(
                "`{s}` is neither a duration (a number and s, m, h or d: `2h`) nor an RFC 3339 time (`2026-12-01T08:00:00Z`)"
            )
        })
    }
}

fn duration_ms(s: &str) -> Option<i64> {
    let unit = match s.chars().last()? {
        's' => 1_000,
        'm' => 60_000,
        'h' => 3_600_000,
        'd' => 86_400_000,
        _ => return None,
    };
    let n = &s[..s.len() - 1];
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse::<i64>().ok()?.checked_mul(unit)
}

/// `YYYY-MM-DDTHH:MM:SS[.fff…](Z|±HH:MM)` as Unix ms.
fn rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut ms = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let f = &frac[..digits];
        ms = format!("{:0<3}", &f[..digits.min(3)]).parse().ok()?;
        rest = &frac[digits..];
    }
    let offset_s = match rest {
        "Z" | "z" => 0,
        _ => {
            let o = rest.as_bytes();
            if o.len() != 6 || o[3] != b':' {
                return None;
            }
            let sign = match o[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let oh: i64 = rest[1..3].parse().ok()?;
            let om: i64 = rest[4..6].parse().ok()?;
            if oh > 23 || om > 59 {
                return None;
            }
            sign * (oh * 3600 + om * 60)
        }
    };
    let days = days_from_civil(y, mo, d);
    Some(((days * 86_400 + h * 3600 + mi * 60 + sec - offset_s) * 1000) + ms)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations_and_rfc3339() {
        let table: &[(&str, Since)] = &[
            ("90s", Since::Ago(90_000)),
            ("15m", Since::Ago(900_000)),
            ("2h", Since::Ago(7_200_000)),
            ("7d", Since::Ago(604_800_000)),
            ("1970-01-01T00:00:00Z", Since::At(0)),
            ("2026-12-01T08:00:00Z", Since::At(1_796_112_000_000)),
            ("2026-12-01T09:00:00+01:00", Since::At(1_796_112_000_000)),
            ("2026-12-01T08:00:00.25Z", Since::At(1_796_112_000_250)),
            ("2000-02-29T12:30:15-02:30", Since::At(951_836_415_000)),
        ];
        for (s, want) in table {
            assert_eq!(s.parse::<Since>(), Ok(*want), "{s}");
        }
    }

    #[test]
    fn refuses_other_text_by_name() {
        for s in [
            "",
            "2",
            "h",
            "-2h",
            "2w",
            "2026-12-01",
            "2026-12-01T08:00:00",
            "2026-13-01T08:00:00Z",
            "2026-12-01T08:00:00+1",
        ] {
            let err = s.parse::<Since>().unwrap_err();
            assert!(err.contains(&format!("`{s}`")), "{err}");
        }
    }

    #[test]
    fn resolves_against_now() {
        assert_eq!(Since::Ago(7_200_000).resolve(10_000_000), 2_800_000);
        assert_eq!(Since::At(5).resolve(10_000_000), 5);
    }
}
