//! The experiment's verdict intervals against values computed independently (a t table,
//! by hand), the three verdict outcomes, and the seeded bootstrap.

use approx::assert_abs_diff_eq;
use cyb::experiment::{
    bootstrap_interval, decide, spearman, t_975, t_interval, IntervalKind, Side, Verdict,
};

#[test]
fn t_quantiles_match_a_printed_table() {
    // Two-sided 95% (one-sided 0.975) critical values of Student's t, as printed in
    // standard tables to 6 decimals (e.g. NIST/SEMATECH e-Handbook, table 1.3.6.7.2);
    // 5e-7 is half a unit of the table's last digit.
    for (dof, want) in [
        (1, 12.706205),
        (2, 4.302653),
        (3, 3.182446),
        (4, 2.776445),
        (9, 2.262157),
        (29, 2.045230),
        (100, 1.983972),
    ] {
        assert_abs_diff_eq!(t_975(dof), want, epsilon = 5e-7);
    }
}

#[test]
fn t_interval_matches_a_hand_computation() {
    // xs = 0.1, 0.3, 0.2: mean 0.2, sample variance ((-0.1)^2 + 0.1^2 + 0) / 2 = 0.01,
    // s = 0.1, s / sqrt(3) = 0.0577350; half-width 4.302653 * 0.0577350 = 0.2484138.
    let iv = t_interval(&[0.1, 0.3, 0.2]);
    assert_eq!((iv.n, iv.kind), (3, IntervalKind::Seeds));
    // The table's t has 7 significant digits: 1e-6 covers its rounding times s / sqrt(n).
    assert_abs_diff_eq!(iv.mean, 0.2, epsilon = 1e-12);
    assert_abs_diff_eq!(iv.lo, 0.2 - 0.2484138, epsilon = 1e-6);
    assert_abs_diff_eq!(iv.hi, 0.2 + 0.2484138, epsilon = 1e-6);
    assert_eq!(iv.text(3), "[-0.048, 0.448]");
    // n = 5: 1, 2, 3, 4, 5 has mean 3, s^2 = 10 / 4 = 2.5; half-width
    // 2.776445 * sqrt(2.5 / 5) = 1.9632432.
    let iv = t_interval(&[1.0, 2.0, 3.0, 4.0, 5.0]);
    assert_abs_diff_eq!(iv.hi - iv.mean, 1.9632432, epsilon = 1e-6);
}

#[test]
fn the_three_outcomes_and_one_seed() {
    let below = t_interval(&[-0.02, -0.03, -0.025]);
    let above = t_interval(&[0.02, 0.03, 0.025]);
    let across = t_interval(&[-0.02, 0.03, 0.0]);
    assert_eq!(decide(&below, Side::Below(0.0)), Verdict::Holds);
    assert_eq!(decide(&above, Side::Below(0.0)), Verdict::DoesNotHold);
    assert_eq!(decide(&across, Side::Below(0.0)), Verdict::Inconclusive(3));
    assert_eq!(decide(&above, Side::Above(0.0)), Verdict::Holds);
    assert_eq!(decide(&below, Side::Above(0.0)), Verdict::DoesNotHold);
    // A threshold of 1/3 (the paper's data fraction): an interval wholly below holds.
    let fractions = t_interval(&[0.2, 0.25, 0.22]);
    assert_eq!(decide(&fractions, Side::Below(1.0 / 3.0)), Verdict::Holds);
    assert_eq!(
        decide(&fractions, Side::Below(0.15)),
        Verdict::DoesNotHold,
        "{fractions:?}"
    );
    // One seed: no interval, every comparison inconclusive, however large the value.
    let one = t_interval(&[-5.0]);
    assert!(one.lo.is_infinite() && one.hi.is_infinite());
    assert_eq!(one.text(3), "—");
    assert_eq!(decide(&one, Side::Below(0.0)), Verdict::Inconclusive(1));
    assert_eq!(decide(&one, Side::Above(0.0)), Verdict::Inconclusive(1));
    assert_eq!(
        Verdict::Inconclusive(1).to_string(),
        "inconclusive (1 seed)"
    );
    assert_eq!(
        Verdict::Inconclusive(3).to_string(),
        "inconclusive (3 seeds)"
    );
    // Identical values: a zero-width interval still decides (it is not NaN).
    let same = t_interval(&[0.5, 0.5]);
    assert_eq!(decide(&same, Side::Above(0.0)), Verdict::Holds);
    // NaN values decide nothing.
    let nan = t_interval(&[f64::NAN, 1.0]);
    assert_eq!(decide(&nan, Side::Above(0.0)), Verdict::Inconclusive(2));
}

#[test]
fn bootstrap_is_seeded_and_brackets_the_statistic() {
    // 400 positions, d and gain positively related with noise (a fixed LCG, no rand).
    let mut x = 12345u64;
    let mut next = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    let pairs: Vec<(f64, f64)> = (0..400)
        .map(|_| {
            let d = next();
            (d, d + next())
        })
        .collect();
    let stat = |xs: &[(f64, f64)]| {
        let (d, g): (Vec<f64>, Vec<f64>) = xs.iter().copied().unzip();
        spearman(&d, &g)
    };
    let a = bootstrap_interval(&pairs, 7, stat);
    let b = bootstrap_interval(&pairs, 7, stat);
    let c = bootstrap_interval(&pairs, 8, stat);
    assert_eq!(a, b, "same seed, same interval");
    assert_ne!((a.lo, a.hi), (c.lo, c.hi), "another seed, other resamples");
    assert_eq!(a.kind, IntervalKind::Bootstrap { positions: 400 });
    assert_eq!(a.mean, stat(&pairs));
    assert!(a.lo < a.mean && a.mean < a.hi, "{a:?}");
    // d and d + noise of equal spread correlate at about 0.7: clearly above 0.
    assert_eq!(decide(&a, Side::Above(0.0)), Verdict::Holds, "{a:?}");
    // Spearman's standard error at n = 400 and rho 0.7 is about 0.026: a 95% interval
    // is about 0.1 wide; 0.04..0.2 only guards against a degenerate or runaway bootstrap.
    assert!(a.hi - a.lo > 0.04 && a.hi - a.lo < 0.2, "{a:?}");
    // Nothing to resample: unbounded, inconclusive.
    let none = bootstrap_interval(&[] as &[(f64, f64)], 1, stat);
    assert_eq!(decide(&none, Side::Above(0.0)), Verdict::Inconclusive(1));
}
