//! Numbers as people read them, everywhere the crate prints one: [`Num`] never shows
//! `-0.00` (a mean over nothing, `-1e-9` rounded), and without a precision it writes
//! very small or very large values in exponent form (`1e-300`, not a 300-digit line of
//! zeros, which is what Rust's `{}` prints for an `f64`).

use std::fmt;

/// An `f64` for `format!`: `{:.2}` rounds as usual but drops the sign of a result that
/// reads as zero; `{}` is the shortest form that reads back exactly, in exponent form
/// below 1e-4 or from 1e16 on.
///
/// ```
/// use cyb::number::Num;
/// assert_eq!(format!("{:.2}", Num(-0.0)), "0.00");
/// assert_eq!(format!("{:.2}", Num(-0.004)), "0.00");
/// assert_eq!(format!("{:.2}", Num(-0.006)), "-0.01");
/// assert_eq!(format!("{}", Num(1e-300)), "1e-300");
/// assert_eq!(format!("{}", Num(0.003)), "0.003");
/// assert_eq!(format!("{}", Num(-0.0)), "0");
/// assert_eq!(format!("{}", Num(1e30)), "1e30");
/// assert_eq!(format!("{:>6.1}", Num(2.0)), "   2.0");
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Num(pub f64);

impl fmt::Display for Num {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let x = self.0;
        let text = match f.precision() {
            Some(p) => {
                let s = format!("{x:.p$}");
                match s.strip_prefix('-') {
                    Some(rest) if rest.bytes().all(|b| b == b'0' || b == b'.') => rest.to_string(),
                    _ => s,
                }
            }
            None if x == 0.0 => "0".to_string(),
            None if x.is_finite() && (x.abs() < 1e-4 || x.abs() >= 1e16) => format!("{x:e}"),
            None => format!("{x}"),
        };
        // Width, alignment and `+` as for any number (`{:>8.3}` lines up columns).
        f.pad_integral(!text.starts_with('-'), "", text.trim_start_matches('-'))
    }
}

/// An `f32` as the shortest decimal that reads back as the same `f32` (`0.003`, not the
/// `0.003000000026077032` of its exact `f64` value).
impl From<f32> for Num {
    fn from(x: f32) -> Self {
        Num(x.to_string().parse().unwrap_or(f64::from(x)))
    }
}

/// `x` rounded to `digits` significant digits, for messages (`333.3`, `-3e27`, not
/// `333.3333333333333` or `-3.0000000000000003e27`).
///
/// ```
/// use cyb::number::sig;
/// assert_eq!(sig(1.0 / 0.003, 4).to_string(), "333.3");
/// assert_eq!(sig(1.0 - 0.003 * 1e30, 4).to_string(), "-3e27");
/// ```
pub fn sig(x: f64, digits: usize) -> Num {
    let text = format!("{x:.*e}", digits.saturating_sub(1));
    Num(text.parse().unwrap_or(x))
}
