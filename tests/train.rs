//! The training loop: seeded determinism, learning, checkpoint round trip of a trained
//! model, and the experiment's numbers coming from its runs.

mod common;

use common::tiny_train as tiny;
use cyb::data::ModSum;
use cyb::experiment::{
    csv_files, data_fraction, decide, default_variants, efficiency_ratio, extend_depth, paper_grid,
    quantile, ranks, regime_variants, render_report, run_experiment, spearman, t_interval,
    tokens_to_reach, ExperimentConfig, Side, Verdict,
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
    // A model without a row for some of the data's ids (ModSum has 10) is refused; one
    // with more tokens than the data (a pretrained model on a built-in task) trains.
    let mut bad = tiny(Objective::CeFinal, 1, 1);
    bad.model.vocab = 9;
    assert!(matches!(
        train(&bad, &ModSum::default(), None, false),
        Err(cyb::CybError::Data(_))
    ));
    let mut wider = tiny(Objective::CeFinal, 1, 1);
    wider.model.vocab = 12;
    assert!(train(&wider, &ModSum::default(), None, false).is_ok());
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

/// A tiny experiment with pretraining and a second data regime: every number of the
/// report is recomputed from the CSV files.
#[test]
fn experiment_report_numbers_come_from_its_csv_files() {
    let arms = default_variants(2);
    let mut all = arms.clone();
    all.extend(regime_variants(&arms, &[1, 2]));
    let names: Vec<&str> = all.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "no-pause",
            "tbys-1",
            "tbys-2",
            "cyb-ap",
            "cyb-va",
            "cyb-dp",
            "no-pause x2",
            "tbys-2 x2",
            "cyb-ap x2"
        ]
    );
    let cfg = ExperimentConfig {
        pretrain: 4,
        ..ExperimentConfig::new(tiny(Objective::CeFinal, 2, 8), all, vec![1, 2])
    };
    let mut labels = Vec::new();
    let res = run_experiment(&cfg, &ModSum::default(), false, |i, n, l| {
        labels.push(format!("[{}/{n}] {l}", i + 1))
    })
    .unwrap();
    assert_eq!(res.runs.len(), 18);
    assert_eq!(labels.len(), 20, "a pretraining and nine arms per seed");
    assert!(labels[0].contains("pretrain no-pause seed 1"), "{labels:?}");
    assert!(labels[19].contains("cyb-ap x2 seed 2, 16 steps") && labels[19].contains("left"));
    let files: std::collections::HashMap<&str, String> = csv_files(&res).into_iter().collect();
    let rows = |f: &str| -> Vec<Vec<String>> {
        files[f]
            .lines()
            .skip(1)
            .map(|l| l.splitn(8, ',').map(String::from).collect())
            .collect()
    };
    let num = |x: &str| x.parse::<f64>().unwrap();
    let report = render_report(&res, "cyb experiment --test");
    let line = |start: &str| -> String {
        report
            .lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no line {start} in\n{report}"))
            .to_string()
    };
    let pm = |xs: &[f64], p: usize| {
        let m = xs.iter().sum::<f64>() / xs.len() as f64;
        let sd = (xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / xs.len() as f64).sqrt();
        format!("{m:.p$} ± {sd:.p$}")
    };

    // Curves: the final quality of each arm is the mean of the CSV's last points.
    let curves = rows("curves.csv");
    assert_eq!(curves.len(), (6 * 2 + 3 * 4) * 2, "2 points a run, 4 at 2x");
    let curve_of = |arm: &str, seed: &str| -> Vec<(f64, f64)> {
        curves
            .iter()
            .filter(|r| r[0] == arm && r[1] == seed)
            .map(|r| (num(&r[3]), num(&r[4])))
            .collect()
    };
    // The final numbers are the test split's (test.csv), not the validation curve's.
    let test = rows("test.csv");
    assert_eq!(test.len(), 9 * 2, "every arm and seed at its one rate");
    let test_of = |arm: &str, seed: &str| -> &Vec<String> {
        test.iter()
            .find(|r| r[0] == arm && r[1] == seed)
            .unwrap_or_else(|| panic!("no test row {arm} {seed}"))
    };
    let finals = |arm: &str| -> Vec<f64> {
        ["1", "2"]
            .iter()
            .map(|s| num(&test_of(arm, s)[3]))
            .collect()
    };
    for v in &cfg.variants {
        let f = finals(&v.name);
        let ppl: Vec<f64> = f.iter().map(|x| x.exp()).collect();
        let l = line(&format!("| {} | {} |", v.name, v.objective));
        assert!(l.contains(&pm(&f, 4)) && l.contains(&pm(&ppl, 3)), "{l}");
        // The rate column: the only rate, the base --lr.
        assert!(l.contains(&format!("| {}x | 0.003 |", v.regime)), "{l}");
        for seed in ["1", "2"] {
            let row = test_of(&v.name, seed);
            assert_eq!(row[2], "0.003");
            // Other positions than validation's: a report reading the validation
            // curve instead would show other numbers.
            let validation = curve_of(&v.name, seed).last().unwrap().1;
            assert_ne!(num(&row[3]), validation, "{row:?}");
        }
    }
    // One rate: nothing chosen, no sweep table; sweep.csv holds every run's validation
    // quality, each chosen.
    assert!(!report.contains("## Learning-rate sweep"), "{report}");
    let sweep = rows("sweep.csv");
    assert_eq!(sweep.len(), 18);
    for r in &sweep {
        let validation = curve_of(&r[0], &r[1]).last().unwrap().1;
        assert_eq!(
            (num(&r[3]), r[2].as_str(), r[4].as_str()),
            (validation, "0.003", "true")
        );
    }
    // Fractions and ratios from the curves.
    for r in rows("fractions.csv") {
        let want = data_fraction(&curve_of(&r[0], &r[2]), &curve_of(&r[1], &r[2]));
        match want {
            // The CSV holds the same f64 printed with `{}` (which round-trips) and the test
            // recomputes it with the same function: equal in practice; 1e-12 absolute on
            // fractions in [0, 1] only guards against a change of printing format.
            Some(x) => approx::assert_abs_diff_eq!(num(&r[3]), x, epsilon = 1e-12),
            None => assert_eq!(r[3], "", "{r:?}"),
        }
    }
    assert_eq!(
        rows("fractions.csv").len(),
        2 * 5 * 2,
        "2 baselines x 5 arms x 2 seeds"
    );
    for r in rows("ratios.csv") {
        let want = efficiency_ratio(&curve_of(&r[0], &r[2]), &curve_of(&r[1], &r[2]));
        match want {
            // As for the fractions: ratios of order 1, printed with `{}`.
            Some(x) => approx::assert_abs_diff_eq!(num(&r[3]), x, epsilon = 1e-12),
            None => assert_eq!(r[3], "", "{r:?}"),
        }
    }
    assert_eq!(rows("ratios.csv").len(), 3 * 2 * 2);
    let fr: Vec<Vec<String>> = rows("fractions.csv");
    let per = |arm: &str, base: &str| -> String {
        fr.iter()
            .filter(|r| r[0] == arm && r[1] == base)
            .map(|r| match r[3].as_str() {
                "" => format!("{}: not reached", r[2]),
                x => format!("{}: {:.3}", r[2], num(x)),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let l = line("| cyb-ap | no-pause |");
    assert!(l.contains(&per("cyb-ap", "no-pause")), "{l}");
    // Regimes: the final qualities again, by regime.
    let reg = rows("regimes.csv");
    assert_eq!(reg.len(), 18);
    for r in &reg {
        assert_eq!(r[4], test_of(&r[0], &r[3])[3], "{r:?}: the test quality");
    }
    let in_section = |heading: &str, start: &str| -> String {
        report
            .split("\n## ")
            .find(|sec| sec.starts_with(heading))
            .and_then(|sec| sec.lines().find(|l| l.starts_with(start)))
            .unwrap_or_else(|| panic!("no {start} under {heading}"))
            .to_string()
    };
    let l2 = in_section("Data regimes", "| cyb-ap |");
    assert!(
        l2.contains(&format!(
            "| {} | {} |",
            pm(&finals("cyb-ap"), 4),
            pm(&finals("cyb-ap x2"), 4)
        )),
        "{l2}"
    );
    // Calibration and halting: mean ± std over seeds, mean of h.
    let cal = rows("calibration.csv");
    assert_eq!(cal.len(), 2 * (1 + 2 + 2 + 2 + 2 + 2 + 2));
    let cal_of = |arm: &str, k: &str| -> Vec<f64> {
        cal.iter()
            .filter(|r| r[0] == arm && r[2] == k)
            .map(|r| num(&r[3]))
            .collect()
    };
    let cal_line = &in_section("Calibration", "| cyb-ap |");
    assert!(
        cal_line.contains(&format!(
            "| {} | {} |",
            pm(&cal_of("cyb-ap", "0"), 3),
            pm(&cal_of("cyb-ap", "1"), 3)
        )),
        "{cal_line}"
    );
    let halt = rows("halting.csv");
    for r in &res.runs {
        let name = &cfg.variants[r.variant].name;
        let hs: Vec<f64> = halt
            .iter()
            .filter(|x| &x[0] == name && x[1] == r.seed.to_string())
            .map(|x| num(&x[3]))
            .collect();
        assert_eq!(hs.len(), cfg.variants[r.variant].pauses + 1);
        // A halting distribution averaged in f64 over thousands of positions: each
        // position's h sums to 1 up to ulps, and the averaging adds ~n ulps, far below 1e-9;
        // a missing or doubled h_k would be off by >= 1e-3.
        approx::assert_abs_diff_eq!(hs.iter().sum::<f64>(), 1.0, epsilon = 1e-9);
    }
    let h_of = |arm: &str, k: &str| -> f64 {
        halt.iter()
            .filter(|r| r[0] == arm && r[2] == k)
            .map(|r| num(&r[3]))
            .sum::<f64>()
            / 2.0
    };
    let lat = rows("latency.csv");
    let l1 = lat
        .iter()
        .find(|r| r[0] == "cyb-ap" && r[1] == "1")
        .unwrap();
    let lat_line = &in_section("Latency", "| cyb-ap |");
    let want = format!(
        "| cyb-ap | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
        h_of("cyb-ap", "0"),
        h_of("cyb-ap", "1"),
        h_of("cyb-ap", "2"),
        num(&l1[2]),
        num(&l1[3]),
        num(&l1[4]),
        num(&l1[5])
    );
    assert_eq!(lat_line, &want);
    // Table 3: every token shown sits in its cell with its median/variance.
    let toks = rows("tokens.csv");
    assert!(!toks.is_empty());
    let t3 = line("| low variance |");
    for r in toks
        .iter()
        .filter(|r| r[0] == "cyb-ap" && r[6].ends_with("low variance"))
    {
        let name = r[7].trim_matches('"');
        let shown = format!("`{name}` {:.2}/{:.3}", num(&r[4]), num(&r[5]));
        let cell = if r[6].starts_with("low median") { 1 } else { 2 };
        let cells: Vec<&str> = t3.split(" | ").collect();
        if t3.contains(&format!("`{name}` ")) {
            assert!(cells[cell].contains(&shown), "{shown} in {t3}");
        }
    }
    // Verdicts: the per-seed values from the other CSV files, the interval and verdict
    // of every row from them.
    let ver = rows("verdicts.csv");
    let csv_values = |key: &str| -> Vec<(String, f64)> {
        ver.iter()
            .filter(|r| r[0] == format!("\"{key}\""))
            .map(|r| (r[3].clone(), num(&r[4])))
            .collect()
    };
    let per_seed = |f: &dyn Fn(&str) -> f64| -> Vec<(String, f64)> {
        ["1", "2"].iter().map(|s| (s.to_string(), f(s))).collect()
    };
    // The final numbers the verdicts compare are the test split's.
    let last = |arm: &str, seed: &str| num(&test_of(arm, seed)[3]);
    let fraction = |arm: &str, base: &str, seed: &str| -> f64 {
        let r = fr
            .iter()
            .find(|r| r[0] == arm && r[1] == base && r[2] == seed);
        // A seed that never reached counts as 1 (see the report's note).
        r.map_or(f64::NAN, |r| if r[3].is_empty() { 1.0 } else { num(&r[3]) })
    };
    let lat_mean = |seed: &str| -> f64 {
        let r = lat.iter().find(|r| r[0] == "cyb-ap" && r[1] == seed);
        num(&r.unwrap()[2])
    };
    // (key in verdicts.csv, start of its report row, decimals, per-seed values)
    struct Expected(String, String, usize, Vec<(String, f64)>);
    let mut claims = Vec::new();
    for other in ["no-pause", "tbys-2", "cyb-va", "cyb-dp"] {
        claims.push(Expected(
            format!("perplexity cyb-ap - {other}"),
            format!("| CYB-AP perplexity below {other} ("),
            4,
            per_seed(&|s| last("cyb-ap", s).exp() - last(other, s).exp()),
        ));
    }
    for base in ["no-pause", "tbys-2"] {
        claims.push(Expected(
            format!("fraction cyb-ap of {base}"),
            format!("| CYB-AP needs a fraction of {base}'s"),
            3,
            per_seed(&|s| fraction("cyb-ap", base, s)),
        ));
    }
    claims.push(Expected(
        "quality cyb-ap - tbys-2 x2".into(),
        "| CYB-AP at 1x matches tbys-2 with 2x".into(),
        4,
        per_seed(&|s| last("cyb-ap", s) - last("tbys-2 x2", s)),
    ));
    for k in ["0", "1"] {
        let values = cal_of("cyb-ap", k).into_iter().zip(["1", "2"]);
        claims.push(Expected(
            format!("calibration cyb-ap k={k}"),
            format!("| d_{k} positively correlated"),
            3,
            values.map(|(x, s)| (s.to_string(), x)).collect(),
        ));
    }
    claims.push(Expected(
        "mean expected pauses cyb-ap".into(),
        "| CYB-AP does not take every pause".into(),
        3,
        per_seed(&lat_mean),
    ));
    assert_eq!(
        ver.len(),
        claims.len() * 2,
        "two seeds a claim; no 3x run, no values"
    );
    for Expected(key, start, prec, want) in &claims {
        let got = csv_values(key);
        assert_eq!(got.len(), 2, "{key}");
        for ((gs, gx), (ws, wx)) in got.iter().zip(want) {
            assert_eq!(gs, ws);
            // Values printed with `{}` (round-trip) and recomputed from other CSV files
            // printed the same way; the latency mean is summed in another order: 1e-9.
            approx::assert_abs_diff_eq!(*gx, *wx, epsilon = 1e-9);
        }
        let r = ver.iter().find(|r| r[0] == format!("\"{key}\"")).unwrap();
        let t = num(&r[2]);
        let side = if r[1] == "below" {
            Side::Below(t)
        } else {
            Side::Above(t)
        };
        let xs: Vec<f64> = got.iter().map(|v| v.1).collect();
        let iv = t_interval(&xs);
        let mut verdict = decide(&iv, side);
        if key.starts_with("fraction") && xs.contains(&1.0) && verdict == Verdict::Holds {
            verdict = Verdict::Inconclusive(2);
        }
        let l = in_section("Verdict", start);
        let cells = format!(
            "| 2 | {:.prec$} | {} | {verdict} |",
            iv.mean,
            iv.text(*prec)
        );
        assert!(l.ends_with(&cells), "{l}\nwant {cells}");
    }
    let l = in_section("Verdict", "| CYB-AP at 1x matches no-pause with 3x");
    assert!(
        l.contains("no 3x regime") && l.ends_with("| 0 | — | — | inconclusive (0 seeds) |"),
        "{l}"
    );
    assert!(report.contains(cyb::experiment::VERDICT_RULE));
    assert!(report.contains("cyb experiment --test") && report.contains("## Verdict"));
    assert!(report.contains("pretrained for 4 steps"));
    // One seed has no spread: no "± 0" anywhere.
    let one = ExperimentConfig {
        seeds: vec![1],
        variants: arms.clone(),
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
    // One seed: every comparison inconclusive; calibration by a bootstrap over positions.
    let verdict_rows: Vec<&str> = single
        .split("\n## ")
        .find(|sec| sec.starts_with("Verdict"))
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| claim"))
        .collect();
    assert_eq!(verdict_rows.len(), 4 + 2 + 2 + 1, "{single}");
    for l in verdict_rows {
        if l.starts_with("| d_") {
            assert!(l.contains("(bootstrap, ") && l.contains(" | 1 | "), "{l}");
        } else {
            assert!(l.ends_with("inconclusive (1 seed) |"), "{l}");
        }
    }
    let dir = std::env::temp_dir().join(format!("cyb-exp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    cyb::experiment::plot_experiment(&dir, &res).unwrap();
    for f in ["curves.png", "pauses.png", "halting.png"] {
        let bytes = std::fs::read(dir.join(f)).unwrap();
        assert_eq!(&bytes[1..4], b"PNG", "{f} is a PNG");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--lrs` with two rates: every arm at both, each arm's rate the one with the better
/// mean validation quality over seeds (recomputed here from `sweep.csv`), the reported
/// numbers the test split's at that rate (`test.csv`), and the sweep table's cells the
/// CSV's means.
#[test]
fn experiment_lr_sweep_chooses_on_validation_and_reports_test() {
    use cyb::number::Num;
    let arms = default_variants(1);
    let rates = [1e-5f32, 3e-3];
    let cfg = ExperimentConfig {
        pretrain: 4,
        lrs: rates.to_vec(),
        ..ExperimentConfig::new(tiny(Objective::CeFinal, 1, 8), arms.clone(), vec![1, 2])
    };
    let mut labels = Vec::new();
    let res = run_experiment(&cfg, &ModSum::default(), false, |i, n, l| {
        labels.push(format!("[{}/{n}] {l}", i + 1))
    })
    .unwrap();
    assert_eq!(
        labels.len(),
        2 * (1 + 5 * 2),
        "a pretraining, 5 arms x 2 rates"
    );
    assert!(
        labels[1].contains("no-pause seed 1, lr 1e-5, 8 steps"),
        "{labels:?}"
    );
    assert!(
        labels[2].contains("no-pause seed 1, lr 0.003, 8 steps"),
        "{labels:?}"
    );
    let files: std::collections::HashMap<&str, String> = csv_files(&res).into_iter().collect();
    let rows = |f: &str| -> Vec<Vec<String>> {
        files[f]
            .lines()
            .skip(1)
            .map(|l| l.split(',').map(String::from).collect())
            .collect()
    };
    let num = |x: &str| x.parse::<f64>().unwrap();
    let report = render_report(&res, "cyb experiment --lrs");
    let sweep = rows("sweep.csv");
    assert_eq!(sweep.len(), 5 * 2 * 2, "every arm, seed and rate");
    let test = rows("test.csv");
    assert_eq!(test.len(), 5 * 2, "every arm and seed at its rate");
    let table: Vec<&str> = report
        .split("\n## ")
        .find(|sec| sec.starts_with("Learning-rate sweep"))
        .expect("a sweep table")
        .lines()
        .collect();
    assert!(table.contains(&"| arm | 1e-5 | 0.003 |"), "{table:?}");
    for v in &arms {
        // The mean validation quality over seeds at each rate, from the CSV.
        let mean = |lr: f32| -> f64 {
            let q: Vec<f64> = sweep
                .iter()
                .filter(|r| r[0] == v.name && r[2].parse::<f32>().unwrap() == lr)
                .map(|r| num(&r[3]))
                .collect();
            assert_eq!(q.len(), 2, "{} at {lr}: both seeds", v.name);
            q.iter().sum::<f64>() / 2.0
        };
        let means: Vec<f64> = rates.iter().map(|&lr| mean(lr)).collect();
        let best = if means[1] < means[0] {
            rates[1]
        } else {
            rates[0]
        };
        for r in sweep.iter().filter(|r| r[0] == v.name) {
            let lr: f32 = r[2].parse().unwrap();
            assert_eq!(r[4], (lr == best).to_string(), "{r:?}");
        }
        // The sweep table: both means, the chosen one in bold.
        let row = table
            .iter()
            .find(|l| l.starts_with(&format!("| {} |", v.name)))
            .unwrap();
        let cell = |i: usize| {
            let m = format!("{:.4}", Num(means[i]));
            if rates[i] == best {
                format!("**{m}**")
            } else {
                m
            }
        };
        assert_eq!(*row, format!("| {} | {} | {} |", v.name, cell(0), cell(1)));
        // The reported numbers: the test split's at the chosen rate.
        let t: Vec<&Vec<String>> = test.iter().filter(|r| r[0] == v.name).collect();
        assert!(
            t.iter().all(|r| r[2].parse::<f32>().unwrap() == best),
            "{t:?}"
        );
        let q: Vec<f64> = t.iter().map(|r| num(&r[3])).collect();
        let m = q.iter().sum::<f64>() / 2.0;
        let sd = (q.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / 2.0).sqrt();
        let l = report
            .lines()
            .find(|l| l.starts_with(&format!("| {} | {} |", v.name, v.objective)))
            .unwrap();
        let shown = format!("| {} | {m:.4} ± {sd:.4} |", Num::from(best));
        assert!(l.contains(&shown), "{shown} in {l}");
        // Chosen on validation, reported on test: the two differ.
        for r in &t {
            let val = sweep
                .iter()
                .find(|s| s[0] == r[0] && s[1] == r[1] && s[2] == r[2])
                .unwrap();
            assert_ne!(num(&r[3]), num(&val[3]), "{r:?} vs {val:?}");
        }
    }
    // Every other table describes the chosen runs: the curves are theirs.
    assert_eq!(res.runs.len(), 5 * 2);
    for r in &res.runs {
        assert_eq!(r.lr, res.chosen[r.variant]);
    }
    for c in rows("curves.csv") {
        let arm = arms.iter().position(|v| v.name == c[0]).unwrap();
        assert_eq!(c[10].parse::<f32>().unwrap(), res.chosen[arm], "{c:?}");
    }
}

/// The sweep's choice: the lowest mean over seeds, the first of equal ones, never NaN,
/// never a rate at which a seed diverged; none when no rate is left.
#[test]
fn best_rates_take_the_lowest_mean_the_first_of_ties_and_never_nan() {
    use cyb::experiment::{best_rates, diverged_at, mean_quality, SweepPoint};
    let p = |variant, seed, lr, quality| SweepPoint {
        variant,
        seed,
        lr,
        quality,
        diverged: None,
    };
    let diverged = |variant, seed, lr, step| SweepPoint {
        diverged: Some(step),
        ..p(variant, seed, lr, f64::NAN)
    };
    let points = [
        // Arm 0: means 1.5 (1e-3), 1.5 (3e-4), 1.4 (1e-4): the last.
        p(0, 1, 1e-3, 1.0),
        p(0, 2, 1e-3, 2.0),
        p(0, 1, 3e-4, 1.5),
        p(0, 2, 3e-4, 1.5),
        p(0, 1, 1e-4, 1.3),
        p(0, 2, 1e-4, 1.5),
        // Arm 1: a tie between 1e-3 and 3e-4 (the first given wins); 1e-4 gave NaN.
        p(1, 1, 1e-3, 0.5),
        p(1, 1, 3e-4, 0.5),
        p(1, 1, 1e-4, f64::NAN),
        // Arm 2: only NaN: no rate.
        p(2, 1, 1e-3, f64::NAN),
        // Arm 3: the best mean at 1e-3 but seed 2 diverged there (step 7): 3e-4;
        // both seeds diverged at 1e-4.
        p(3, 1, 1e-3, 0.1),
        diverged(3, 2, 1e-3, 7),
        p(3, 1, 3e-4, 0.9),
        p(3, 2, 3e-4, 0.9),
        diverged(3, 1, 1e-4, 2),
        diverged(3, 2, 1e-4, 1),
    ];
    approx::assert_abs_diff_eq!(mean_quality(&points, 0, 1e-4), 1.4, epsilon = 1e-15);
    assert!(mean_quality(&points, 2, 3e-4).is_nan(), "no run: NaN");
    assert_eq!(
        best_rates(&points, 4, &[1e-3, 3e-4, 1e-4]),
        vec![Some(1e-4), Some(1e-3), None, Some(3e-4)]
    );
    assert_eq!(
        best_rates(&points, 2, &[3e-4, 1e-3, 1e-4]),
        vec![Some(1e-4), Some(3e-4)],
        "ties go to the first in the given order"
    );
    assert_eq!(diverged_at(&points, 3, 1e-3), Some((2, 7)));
    assert_eq!(
        diverged_at(&points, 3, 1e-4),
        Some((1, 2)),
        "the first seed"
    );
    assert_eq!(diverged_at(&points, 3, 3e-4), None);
    assert_eq!(
        best_rates(&points[..15], 4, &[1e-4]),
        vec![Some(1e-4), None, None, None]
    );
}

#[test]
fn spearman_ranks_ties_and_quantiles() {
    assert_eq!(ranks(&[3.0, 1.0, 3.0, 2.0]), vec![3.5, 1.0, 3.5, 2.0]);
    // A correlation of exact ranks is +-1 up to the rounding of one division and a sqrt.
    approx::assert_abs_diff_eq!(
        spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 100.0]),
        1.0,
        epsilon = 1e-12
    );
    approx::assert_abs_diff_eq!(
        spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]),
        -1.0,
        epsilon = 1e-12
    );
    assert!(spearman(&[1.0, 1.0], &[1.0, 2.0]).is_nan());
    assert_eq!(quantile(&[4.0, 1.0, 2.0, 3.0], 0.5), 2.5);
    assert_eq!(quantile(&[4.0, 1.0, 2.0, 3.0], 1.0), 4.0);
}

/// Fine-tuning starts from the pretrained weights; the depth rows it lacks are drawn as
/// a fresh model draws them.
#[test]
fn extend_depth_keeps_the_weights_and_draws_new_depth_rows() {
    let pre = train(
        &tiny(Objective::CeFinal, 0, 2),
        &ModSum::default(),
        None,
        false,
    )
    .unwrap()
    .model;
    let mut cfg = pre.config.clone();
    cfg.k_max = 3;
    let m = extend_depth(&pre, &cfg, 7).unwrap();
    assert_eq!(m.config.k_max, 3);
    let d = cfg.d_model;
    for ((name, _, a), (_, _, b)) in m.params.tensors().into_iter().zip(pre.params.tensors()) {
        if name == "depth_emb" {
            assert_eq!(&a[..d], b, "row 0 kept");
            let fresh = &a[d..];
            assert_eq!(fresh.len(), 3 * d);
            let sd = (fresh.iter().map(|x| x * x).sum::<f32>() / fresh.len() as f32).sqrt();
            // normal(0, 0.02) rows: the RMS of 3d draws has a relative spread of about
            // 1/sqrt(6d) (~10% at d = 16), so 50% relative is ~5 sigma and still tells
            // 0.02 from a wrong scale such as 1 or 0.
            approx::assert_relative_eq!(sd, 0.02, max_relative = 0.5);
        } else {
            assert_eq!(a, b, "{name}");
        }
    }
    let mut other = cfg.clone();
    other.d_model *= 2;
    assert!(extend_depth(&pre, &other, 7).is_err());
    assert_eq!(
        extend_depth(&pre, &cfg, 7).unwrap().params,
        m.params,
        "seeded"
    );
}

#[test]
fn paper_grid_has_the_papers_settings() {
    let g = paper_grid().unwrap();
    let count = |p: &str| g.iter().filter(|v| v.name.starts_with(p)).count();
    // The grid less the default arm of each objective.
    assert_eq!(
        (count("cyb-ap"), count("cyb-va"), count("cyb-dp")),
        (3, 2, 5)
    );
    assert!(g.iter().all(|v| v.pauses == 3 && !v.name.contains(',')));
    for v in &g {
        v.objective.resolve(3).unwrap();
    }
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

/// `--lrs` with an absurd rate (1e30 without weight decay: AdamW's first update moves
/// every weight by about the rate, and the next loss is infinite): every arm diverges
/// there on every seed; the sweep records it (the step in `sweep.csv`, *diverged* in
/// the table), never chooses it and goes on. An arm whose every rate diverged is an
/// error naming each, raised before the runs after it.
#[test]
fn experiment_lr_sweep_records_diverged_rates_and_goes_on() {
    let first = common::base_seed() % 1_000_000;
    let seeds = vec![first, first + 1];
    let mut base = tiny(Objective::CeFinal, 1, 4);
    base.weight_decay = 0.0;
    let cfg = ExperimentConfig {
        pretrain: 2,
        lrs: vec![1e30, 1e-3],
        ..ExperimentConfig::new(base, default_variants(1), seeds.clone())
    };
    let mut labels = 0;
    let res = run_experiment(&cfg, &ModSum::default(), false, |_, _, _| labels += 1)
        .unwrap_or_else(|e| panic!("seeds {seeds:?}: {e}"));
    assert_eq!(labels, 2 * (1 + 5 * 2), "every run ran");
    assert_eq!(res.chosen, vec![1e-3; 5]);
    assert_eq!(res.sweep.len(), 5 * 2 * 2);
    for p in &res.sweep {
        let diverged = p.lr == 1e30;
        assert_eq!(p.diverged.is_some(), diverged, "{p:?}, seeds {seeds:?}");
        assert_eq!(p.quality.is_nan(), diverged, "{p:?}, seeds {seeds:?}");
    }
    assert_eq!(res.runs.len(), 5 * 2);
    assert!(res.runs.iter().all(|r| r.lr == 1e-3));
    let files: std::collections::HashMap<&str, String> = csv_files(&res).into_iter().collect();
    let sweep: Vec<&str> = files["sweep.csv"].lines().collect();
    assert_eq!(
        sweep[0],
        "variant,seed,lr,quality_nll,chosen,diverged_at_step"
    );
    for (line, p) in sweep[1..].iter().zip(&res.sweep) {
        let step = p.diverged.map_or(String::new(), |s| s.to_string());
        let (q, chosen) = if p.lr == 1e30 {
            ("NaN".to_string(), false)
        } else {
            (p.quality.to_string(), true)
        };
        let name = &cfg.variants[p.variant].name;
        let want = format!("{name},{},{},{q},{chosen},{step}", p.seed, p.lr);
        assert_eq!(*line, want);
    }
    let report = render_report(&res, "cyb experiment --lrs 1e30,1e-3");
    assert!(report.contains("| arm | 1e30 | 0.001 |"), "{report}");
    for (vi, v) in cfg.variants.iter().enumerate() {
        let (seed, step) = cyb::experiment::diverged_at(&res.sweep, vi, 1e30).unwrap();
        assert_eq!(seed, seeds[0]);
        let row = format!("| {} | *diverged* (seed {seed}, step {step}) | **", v.name);
        assert!(report.contains(&row), "{row} in {report}");
    }

    // Every rate diverges: an error naming the arm and each rate, after its runs.
    let all = ExperimentConfig {
        lrs: vec![1e30, 1e31],
        ..cfg
    };
    let mut labels = 0;
    let e = run_experiment(&all, &ModSum::default(), false, |_, _, _| labels += 1)
        .err()
        .unwrap_or_else(|| panic!("every rate diverges, seeds {seeds:?}"))
        .to_string();
    assert_eq!(labels, 1 + 2, "the pretraining and no-pause's two rates");
    for needle in [
        "arm no-pause has no learning rate to be reported at: 1e30 diverged (seed",
        ", 1e31 diverged (seed",
        "give lower --lrs (below 1e30, e.g. 1e29)",
    ] {
        assert!(e.contains(needle), "{needle}: {e}");
    }
}
