//! The KV-cache decoder against full recomputes of the expanded sequence.

use cyb::config::{ModelConfig, PauseAttention};
use cyb::cpu::model::Model;
use cyb::decode::{Decoder, Policy};
use cyb::rng::seeded;
use cyb::CybError;
use rand::RngExt;
use rand_distr::StandardNormal;

const MODES: [PauseAttention; 2] = [PauseAttention::Shared, PauseAttention::Private];

fn model(mode: PauseAttention, k_max: usize, seed: u64) -> Model<f64> {
    let c = ModelConfig {
        vocab: 11,
        d_model: 12,
        n_layer: 2,
        n_head: 3,
        t_max: 9,
        k_max,
        pause_attention: mode,
        dk_bias: 0.3,
        layer_norm_eps: 1e-5,
    };
    let mut m: Model<f64> = Model::init(c, &mut seeded(seed)).unwrap();
    // Larger-than-init weights so attention is far from uniform and DK varies.
    let mut rng = seeded(seed + 100);
    for (_, _, t) in m.params.tensors_mut() {
        t.iter_mut()
            .for_each(|x| *x += 0.3 * rng.sample::<f64, _>(StandardNormal));
    }
    m
}

/// Logits of step `(t, k)` in a `[1, K+1, seq, V+1]` tensor.
fn row(logits: &[f64], seq: usize, v1: usize, k: usize, t: usize) -> &[f64] {
    &logits[(k * seq + t) * v1..][..v1]
}

/// At every position and every step taken, the cached decoder's logits equal the
/// full recompute of the expanded sequence so far. Private: any pause pattern (pauses
/// never enter the cache); shared: every position runs all K steps at `push`, and
/// `pause` reads them (the pattern only says how many are read).
#[test]
fn cached_steps_equal_full_recompute_for_any_pause_pattern() {
    for mode in MODES {
        for (k_max, pattern) in [
            (0usize, vec![0usize; 9]),
            (1, vec![1, 0, 1, 1, 0, 0, 1, 0, 1]),
            (3, vec![3, 0, 2, 1, 3, 0, 0, 2, 3]),
        ] {
            let m = model(mode, k_max, 7 + k_max as u64);
            let tokens: Vec<i32> = (0..9i32).map(|i| (i * 7 + 3) % 11).collect();
            let v1 = 12;
            let mut dec = Decoder::new(&m, k_max, Policy::ForcedK, 0).unwrap();
            for t in 0..9 {
                let full = m.forward(&tokens[..=t], 1, t + 1, k_max).unwrap();
                let got = dec.push(tokens[t] as usize).unwrap();
                let want = row(&full, t + 1, v1, 0, t);
                // f64 incremental decoding against the full f64 forward: the same math in a
                // different order (cached keys, one row at a time), so logits of order 1
                // agree to ~1e-14; 1e-10 absolute leaves margin and catches any wrong mask.
                for (g, w) in got.iter().zip(want) {
                    approx::assert_abs_diff_eq!(*g, *w, epsilon = 1e-10);
                }
                for k in 1..=pattern[t] {
                    let got = dec.pause().unwrap();
                    let want = row(&full, t + 1, v1, k, t);
                    for (g, w) in got.iter().zip(want) {
                        // As above: same f64 math, another order.
                        approx::assert_abs_diff_eq!(*g, *w, epsilon = 1e-10);
                    }
                }
                if pattern[t] == k_max {
                    assert!(matches!(dec.pause(), Err(CybError::TooManyPauses { .. })));
                }
            }
            assert_eq!(dec.len(), 9);
        }
    }
}

/// Each emitted token reports p(DK) with the model's DK bias at every step, and
/// E[pauses] from them; shared mode always has all K+1 steps, private mode only
/// with `with_full_halting` (else the steps it took).
#[test]
fn emitted_tokens_report_p_dk_with_bias_and_expected_pauses() {
    for mode in MODES {
        let m = model(mode, 3, 5);
        let prompt = [2usize, 7, 1];
        for full in [false, true] {
            let dec = Decoder::new(&m, 3, Policy::Greedy { threshold: 0.5 }, 0).unwrap();
            let mut dec = if full { dec.with_full_halting() } else { dec };
            let out = dec.generate(&prompt, 4).unwrap();
            let mut seq: Vec<i32> = prompt.iter().map(|&x| x as i32).collect();
            for e in &out {
                let all = mode == PauseAttention::Shared || full;
                let n = if all { 4 } else { e.pauses + 1 };
                assert_eq!(e.p_dk.len(), n, "{mode} full={full}");
                // p(DK) from the full recompute, e = z[V] + b_DK.
                let t = seq.len();
                let logits = m.forward(&seq, 1, t, 3).unwrap();
                for (k, &p) in e.p_dk.iter().enumerate() {
                    let z = row(&logits, t, 12, k, t - 1);
                    let r = z[..11].iter().map(|x| x.exp()).sum::<f64>().ln();
                    let ee = z[11] + 0.3;
                    let want = ee.exp() / (ee.exp() + r.exp());
                    // A probability recomputed from the same f64 logits by another formula
                    // (plain exp instead of log-sum-exp): a few ulps of 1 apart.
                    approx::assert_abs_diff_eq!(p, want, epsilon = 1e-12);
                }
                // Greedy: S is the first step with p(DK) <= threshold (K if none).
                let s = e.p_dk[..e.p_dk.len().min(3)]
                    .iter()
                    .position(|&p| p <= 0.5)
                    .unwrap_or(3);
                assert_eq!(e.pauses, s);
                match e.expected_pauses {
                    // E[pauses] is there exactly when all K+1 p(DK) are known: always in
                    // shared mode or with full halting, and in private mode also when the
                    // policy itself took all K pauses.
                    Some(x) => {
                        assert!(all || e.pauses == 3, "{mode} full={full}");
                        let d = &e.p_dk;
                        let h = [
                            1.0 - d[0],
                            d[0] * (1.0 - d[1]),
                            d[0] * d[1] * (1.0 - d[2]),
                            d[0] * d[1] * d[2],
                        ];
                        let want: f64 = h.iter().enumerate().map(|(k, h)| k as f64 * h).sum();
                        // Same products of the same p_dk, summed the same way up to
                        // order: ulps of a value <= 3.
                        approx::assert_abs_diff_eq!(x, want, epsilon = 1e-12);
                    }
                    None => assert!(!all && e.pauses < 3),
                }
                seq.push(e.token as i32);
            }
        }
    }
}

#[test]
fn policies_behave_at_their_extremes() {
    for mode in MODES {
        policies_behave_at_their_extremes_in(mode);
    }
}

fn policies_behave_at_their_extremes_in(mode: PauseAttention) {
    let m = model(mode, 3, 1);
    let prompt = [1usize, 4, 2];
    let never = Decoder::new(&m, 3, Policy::Greedy { threshold: 1.5 }, 0)
        .unwrap()
        .generate(&prompt, 5)
        .unwrap();
    let steps = |pauses: usize| match mode {
        PauseAttention::Shared => 4,
        PauseAttention::Private => pauses + 1,
    };
    assert!(never
        .iter()
        .all(|e| e.pauses == 0 && e.p_dk.len() == steps(0)));
    let always = Decoder::new(&m, 3, Policy::Greedy { threshold: -0.5 }, 0)
        .unwrap()
        .generate(&prompt, 5)
        .unwrap();
    assert!(always.iter().all(|e| e.pauses == 3 && e.p_dk.len() == 4));
    // Forced K answers with the argmax of teacher-forced step K.
    let forced = Decoder::new(&m, 3, Policy::ForcedK, 0)
        .unwrap()
        .generate(&prompt, 5)
        .unwrap();
    let mut seq: Vec<i32> = prompt.iter().map(|&x| x as i32).collect();
    for e in &forced {
        let t = seq.len();
        let full = m.forward(&seq, 1, t, 3).unwrap();
        let r = row(&full, t, 12, 3, t - 1);
        let best = (0..11)
            .max_by(|&a, &b| r[a].total_cmp(&r[b]).then(b.cmp(&a)))
            .unwrap();
        assert_eq!(e.token, best);
        assert_eq!(e.pauses, 3);
        seq.push(e.token as i32);
    }
    // Sampling is seeded and stays in the vocabulary and the top-k set.
    let policy = Policy::Sample {
        temperature: 0.8,
        top_k: 3,
        top_p: 0.9,
    };
    let a = Decoder::new(&m, 3, policy.clone(), 42)
        .unwrap()
        .generate(&prompt, 6)
        .unwrap();
    let b = Decoder::new(&m, 3, policy, 42)
        .unwrap()
        .generate(&prompt, 6)
        .unwrap();
    assert_eq!(a, b);
    assert!(a.iter().all(|e| e.token < 11 && e.pauses <= 3));
}

#[test]
fn bad_decoding_inputs_are_errors() {
    let m = model(PauseAttention::Shared, 2, 3);
    let mut dec = Decoder::new(&m, 2, Policy::Greedy { threshold: 0.5 }, 0).unwrap();
    assert!(matches!(
        dec.push(11),
        Err(CybError::VocabRange { id: 11, .. })
    ));
    assert!(
        matches!(dec.pause(), Err(CybError::Shape(_))),
        "pause before any token"
    );
    assert!(
        matches!(dec.generate(&[1; 12], 1), Err(CybError::Shape(_))),
        "prompt longer than the context"
    );
    assert!(matches!(dec.generate(&[], 1), Err(CybError::Shape(_))));
    let no_pauses = model(PauseAttention::Private, 0, 4);
    assert!(matches!(
        Decoder::new(&no_pauses, 1, Policy::ForcedK, 0),
        Err(CybError::TooManyPauses { k: 1, k_max: 0 })
    ));
    assert!(Decoder::new(
        &m,
        2,
        Policy::Sample {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0
        },
        0
    )
    .is_err());
}
