//! The training loop: seeded determinism, learning, checkpoint round trip of a trained
//! model, and the experiment's numbers coming from its runs.

mod common;

use common::tiny_train as tiny;
use cyb::data::ModSum;
use cyb::experiment::{
    curves_csv, default_variants, efficiency_ratio, ratios_csv, render_report, run_experiment,
    tokens_to_reach, ExperimentConfig,
};
use cyb::train::train;
use cyb::Objective;

#[test]
fn training_twice_with_one_seed_gives_the_same_numbers() {
    let cfg = tiny(Objective::ap_default(), 2, 12);
    let a = train(&cfg, &ModSum::default(), None, false).unwrap();
    let b = train(&cfg, &ModSum::default(), None, false).unwrap();
    assert_eq!(a.history, b.history);
    assert_eq!(a.curve, b.curve);
    assert_eq!(a.model.params, b.model.params);
    assert_eq!(a.curve.len(), 3, "evaluations at steps 4, 8, 12");
    let mut other = cfg.clone();
    other.seed = 10;
    let c = train(&other, &ModSum::default(), None, false).unwrap();
    assert_ne!(
        a.history[0].loss, c.history[0].loss,
        "another seed, other numbers"
    );
}

#[test]
fn training_lowers_the_loss_and_rejects_bad_configs() {
    let mut cfg = tiny(Objective::CeFinal, 0, 60);
    cfg.eval_every = 0;
    cfg.lr = 1e-2;
    let out = train(&cfg, &ModSum::default(), None, false).unwrap();
    let first: f64 = out.history[..5].iter().map(|s| s.loss).sum::<f64>() / 5.0;
    let last: f64 = out.history[55..].iter().map(|s| s.loss).sum::<f64>() / 5.0;
    assert!(last < first - 0.05, "loss {first} -> {last}");
    assert_eq!(out.curve.len(), 1, "evaluated once at the end");

    let mut bad = tiny(Objective::CeFinal, 1, 1);
    bad.pauses = 2;
    assert!(matches!(
        train(&bad, &ModSum::default(), None, false),
        Err(cyb::CybError::TooManyPauses { .. })
    ));
    let mut bad = tiny(Objective::CeFinal, 1, 1);
    bad.seq = 17;
    assert!(train(&bad, &ModSum::default(), None, false).is_err());
    let mut bad = tiny(Objective::CeFinal, 1, 1);
    bad.model.vocab = 12;
    assert!(matches!(
        train(&bad, &ModSum::default(), None, false),
        Err(cyb::CybError::Data(_))
    ));
}

#[test]
fn interpolation_and_ratio_follow_the_curves() {
    let curve = [(100.0, 3.0), (200.0, 2.0), (300.0, 1.0)];
    assert_eq!(tokens_to_reach(&curve, 3.5), Some(100.0));
    assert_eq!(tokens_to_reach(&curve, 1.5), Some(250.0));
    assert_eq!(tokens_to_reach(&curve, 0.5), None);
    let cyb = [(50.0, 2.5), (100.0, 1.5)];
    assert_eq!(efficiency_ratio(&cyb, &curve), Some(2.5));
}

#[test]
fn experiment_report_numbers_come_from_the_runs() {
    let cfg = ExperimentConfig {
        base: tiny(Objective::CeFinal, 2, 8),
        variants: default_variants(2),
        seeds: vec![1, 2],
    };
    let res = run_experiment(&cfg, &ModSum::default(), false, |_, _, _| {}).unwrap();
    assert_eq!(res.runs.len(), 10);
    let csv = curves_csv(&res);
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), 10 * 2, "two evaluation points per run");
    for r in &rows {
        for x in &r[4..] {
            assert!(x.parse::<f64>().unwrap().is_finite(), "{r:?}");
        }
    }
    // Recompute every ratio from the CSV curves and compare with ratios.csv.
    let curve_of = |variant: &str, seed: &str| -> Vec<(f64, f64)> {
        rows.iter()
            .filter(|r| r[0] == variant && r[1] == seed)
            .map(|r| (r[3].parse().unwrap(), r[4].parse().unwrap()))
            .collect()
    };
    let ratios = ratios_csv(&res);
    let mut checked = 0;
    for line in ratios.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let want = efficiency_ratio(&curve_of(f[0], f[2]), &curve_of(f[1], f[2]));
        match want {
            Some(x) => assert!((f[3].parse::<f64>().unwrap() - x).abs() < 1e-12, "{line}"),
            None => assert_eq!(f[3], "", "{line}"),
        }
        checked += 1;
    }
    assert_eq!(checked, 3 * 2 * 2, "3 CYB variants x 2 baselines x 2 seeds");
    // The Markdown's final quality of each variant is the mean of the CSV's last points.
    let report = render_report(&res, "cyb experiment --test");
    for v in &cfg.variants {
        let finals: Vec<f64> = ["1", "2"]
            .iter()
            .map(|s| curve_of(&v.name, s).last().unwrap().1)
            .collect();
        let mean = (finals[0] + finals[1]) / 2.0;
        let line = report
            .lines()
            .find(|l| l.starts_with(&format!("| {} |", v.name)))
            .unwrap();
        assert!(
            line.contains(&format!("{mean:.4} ±")),
            "{line} should show {mean:.4}"
        );
    }
    assert!(report.contains("cyb experiment --test"));
    assert!(report.contains("mean ± std over seeds") && report.contains("higher = CYB better"));
    // One seed has no spread: no "± 0" anywhere.
    let one = ExperimentConfig {
        seeds: vec![1],
        ..cfg.clone()
    };
    let single = render_report(
        &run_experiment(&one, &ModSum::default(), false, |_, _, _| {}).unwrap(),
        "one seed",
    );
    assert!(
        single.contains("one seed") && !single.contains("± 0"),
        "{single}"
    );
    let dir = std::env::temp_dir().join(format!("cyb-exp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    cyb::experiment::plot_experiment(&dir, &res).unwrap();
    for f in ["curves.png", "pauses.png"] {
        let bytes = std::fs::read(dir.join(f)).unwrap();
        assert_eq!(&bytes[1..4], b"PNG", "{f} is a PNG");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The trainer hands the model's DK bias to the loss: at the first step (logits near 0)
/// a bias of +20 makes every step say DK (E[pauses] near K), -20 none.
#[test]
fn the_loss_reads_dk_with_the_models_dk_bias() {
    let first_pauses = |dk_bias: f64| {
        let mut cfg = tiny(Objective::ap_default(), 2, 1);
        cfg.model.dk_bias = dk_bias;
        cfg.eval_every = 0;
        train(&cfg, &ModSum::default(), None, false)
            .unwrap()
            .history[0]
            .mean_pauses
    };
    let (high, low) = (first_pauses(20.0), first_pauses(-20.0));
    assert!(
        high > 1.99 && low < 1e-6,
        "E[pauses] {high} (b = 20), {low} (b = -20)"
    );
}
