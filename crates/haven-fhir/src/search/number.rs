//! Implicit precision ranges of decimals (R4 `search.html#number`): a value is as precise as
//! its last written digit, so `5.40` stands for [5.395, 5.405) and `100` for [99.5, 100.5).
//!
//! The bounds are computed on the decimal text (mantissa × 10 ± 5, one place further) and
//! only then converted to `f64`, so each bound is the double nearest to the exact decimal
//! bound: `5.395`, not `5.40 - 0.005 = 5.3950000000000005`.

/// A decimal's text and its implicit range `[lower, upper)`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Bounds {
    pub text: String,
    pub lower: f64,
    pub upper: f64,
}

/// The bounds of a JSON number (`-12.50`, `1e2`, `6.02E+23`); `None` if `text` is not one.
pub(super) fn bounds(text: &str) -> Option<Bounds> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (number, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (&unsigned[..at], unsigned[at + 1..].parse::<i32>().ok()?),
        None => (unsigned, 0),
    };
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty()
        || (number.contains('.') && frac.is_empty())
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    // value = digits × 10^-scale; the half unit of the last place is 5 × 10^-(scale+1).
    let scale = i32::try_from(frac.len()).ok()? - exponent;
    let digits = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    let (lower, upper) = match digits.parse::<i128>() {
        Ok(m) if digits.len() <= 36 => {
            let m = if negative { -m } else { m };
            let at = |n: i128| format!("{n}e{}", -(scale + 1)).parse::<f64>();
            (at(m * 10 - 5).ok()?, at(m * 10 + 5).ok()?)
        }
        // Zero, or more digits than i128 holds: f64 arithmetic is as good as it gets.
        _ => {
            let value: f64 = text.parse().ok()?;
            let half = 5.0 * 10f64.powi(-(scale + 1));
            (value - half, value + half)
        }
    };
    Some(Bounds {
        text: text.to_owned(),
        lower,
        upper,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(text: &str) -> (f64, f64) {
        let b = bounds(text).unwrap();
        (b.lower, b.upper)
    }

    #[test]
    fn implicit_precision_of_the_spec_examples() {
        assert_eq!(range("100"), (99.5, 100.5));
        assert_eq!(range("100.00"), (99.995, 100.005));
        assert_eq!(range("5.40"), (5.395, 5.405));
        assert_eq!(range("-5.40"), (-5.405, -5.395));
        assert_eq!(range("0.1"), (0.05, 0.15));
        assert_eq!(range("0"), (-0.5, 0.5));
        assert_eq!(range("0.000"), (-0.0005, 0.0005));
        // An exponent moves the last place: 1e2 is precise to the hundreds.
        assert_eq!(range("1e2"), (50.0, 150.0));
        assert_eq!(range("1.5E-3"), (0.00145, 0.00155));
        // Beyond what a double can tell apart, the bounds collapse onto the value.
        let text = "123456789012345678901234567890123456789012.5";
        let (value, big) = (text.parse::<f64>().unwrap(), range(text));
        assert!(big.0 <= value && value <= big.1);
    }

    #[test]
    fn non_numbers_are_refused() {
        for text in [
            "",
            "-",
            ".5",
            "1.",
            "1e",
            "abc",
            "1.2.3",
            "--1",
            "1e99999999999",
        ] {
            assert!(bounds(text).is_none(), "{text}");
        }
        assert_eq!(bounds("1.").map(|b| b.text), None);
    }
}
