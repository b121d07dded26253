//! The synthetic task, text loading, and the greedy-policy metrics.

use cyb::cpu::loss::LossShape;
use cyb::data::{task_by_name, ByteText, DataSource, ModSum, Split};
use cyb::metrics::{greedy_outcomes, EvalSummary};
use cyb::rng::seeded;

#[test]
fn modsum_answers_are_sums_of_their_spans() {
    let task = ModSum::default();
    let m = task.modulus as i32;
    let b = task.sample(Split::Train, 8, 97, &mut seeded(4));
    assert_eq!(
        (b.tokens.len(), b.targets.len(), b.classes.len()),
        (8 * 97, 8 * 97, 8 * 97)
    );
    let names = task.class_names();
    let mut checked = 0;
    for s in 0..8 {
        let toks = &b.tokens[s * 97..(s + 1) * 97];
        let tgts = &b.targets[s * 97..(s + 1) * 97];
        let cls = &b.classes[s * 97..(s + 1) * 97];
        for t in 0..96 {
            assert!(
                tgts[t] == -1 || tgts[t] == toks[t + 1],
                "targets are the next tokens or ignored"
            );
        }
        for t in 0..97 {
            let name = &names[cls[t] as usize];
            if let Some(k) = name.strip_prefix("sum/") {
                let k: usize = k.parse().unwrap();
                // Input at t is '=', preceded by k digits and the marker [Lk].
                if t > k {
                    assert_eq!(toks[t], m, "'=' before the answer");
                    let digits = &toks[t - k..t];
                    assert!(digits.iter().all(|&d| d < m));
                    assert_eq!(toks[t - k - 1], m + k as i32, "marker [L{k}]");
                    assert_eq!(tgts[t], digits.iter().sum::<i32>() % m);
                    checked += 1;
                }
            } else if name == "equals" {
                assert_eq!(tgts[t], m);
            } else {
                // Random digits and markers are unpredictable, hence ignored.
                assert!(name == "digit" || name == "marker", "{name}");
                assert_eq!(tgts[t], -1);
                if t + 1 < 97 {
                    assert!(if name == "digit" {
                        toks[t + 1] < m
                    } else {
                        toks[t + 1] > m
                    });
                }
            }
        }
    }
    assert!(checked > 20, "only {checked} answers checked");
    // Seeded: the same seed gives the same batch.
    let again = task.sample(Split::Train, 8, 97, &mut seeded(4));
    assert_eq!(again.tokens, b.tokens);
    assert!(task_by_name("nope").is_err());
}

#[test]
fn text_files_are_checked() {
    let dir = std::env::temp_dir().join(format!("cyb-text-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, b"").unwrap();
    let binary = dir.join("bin.txt");
    std::fs::write(&binary, [0xff, 0xfe, 0x00, 0x41].repeat(100)).unwrap();
    let short = dir.join("short.txt");
    std::fs::write(&short, "hello").unwrap();
    let good = dir.join("good.txt");
    std::fs::write(
        &good,
        "the quick brown fox jumps over the lazy dog. ".repeat(40),
    )
    .unwrap();
    for (p, needle) in [(&empty, "empty"), (&binary, "UTF-8"), (&short, "too few")] {
        let e = ByteText::from_file(p, 16).expect_err("error").to_string();
        assert!(e.contains(needle), "{e}");
    }
    assert!(ByteText::from_file(&dir.join("missing.txt"), 16).is_err());
    let text = ByteText::from_file(&good, 16).unwrap();
    let b = text.sample(Split::Validation, 3, 16, &mut seeded(1));
    assert_eq!(&b.tokens[1..16], &b.targets[..15]);
    assert!(b.tokens.iter().all(|&t| (0..256).contains(&t)));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Logits where step k of every position says DK with probability `p_dk[k]` and puts
/// its answer mass on `answer[k]`.
fn scripted_logits(shape: LossShape, p_dk: &[f64], answer: &[usize]) -> Vec<f64> {
    let w = shape.vocab + 1;
    let mut z = vec![0.0; shape.rows() * w];
    for b in 0..shape.batch {
        for k in 0..=shape.pauses {
            for t in 0..shape.seq {
                let row = &mut z[shape.row(b, k, t) * w..][..w];
                row[answer[k]] = 4.0;
                // r = logsumexp(real) is fixed; choose e so that sigmoid(e - r) = p_dk.
                let r = (4f64.exp() + (shape.vocab - 1) as f64).ln();
                row[shape.vocab] = r + (p_dk[k] / (1.0 - p_dk[k])).ln();
            }
        }
    }
    z
}

#[test]
fn greedy_policy_follows_the_threshold() {
    let shape = LossShape {
        batch: 2,
        pauses: 3,
        seq: 5,
        vocab: 6,
    };
    let p_dk = [0.9, 0.7, 0.2, 0.6];
    let answer = [1, 2, 3, 4];
    let z = scripted_logits(shape, &p_dk, &answer);
    let targets: Vec<i32> = (0..10).map(|i| if i == 3 { -1 } else { 3 }).collect();
    let classes = vec![0u16; 10];
    // Default threshold: DK at steps 0 and 1, answers at step 2 (token 3: correct).
    let out = greedy_outcomes(&z, &targets, &classes, shape, 0.0, 0.5).unwrap();
    assert_eq!(out.len(), 9, "ignored target skipped");
    assert!(out
        .iter()
        .all(|o| o.pauses == 2 && o.correct && !o.correct_at_0));
    // Threshold above 1 never pauses; below 0 always takes all K pauses.
    let never = greedy_outcomes(&z, &targets, &classes, shape, 0.0, 1.5).unwrap();
    assert!(never.iter().all(|o| o.pauses == 0 && !o.correct));
    let always = greedy_outcomes(&z, &targets, &classes, shape, 0.0, -0.5).unwrap();
    assert!(always.iter().all(|o| o.pauses == 3 && !o.correct));
    // E[pauses] from the halting distribution: h = (0.1, 0.9*0.3, 0.9*0.7*0.8, 0.9*0.7*0.2).
    let h = [0.1, 0.27, 0.504, 0.126];
    let e: f64 = h.iter().enumerate().map(|(k, p)| k as f64 * p).sum();
    // The halting probabilities come from sigmoids of scripted logits whose values are
    // only given to ~1e-12; 1e-9 on an expectation of ~2 leaves room for that and the
    // log-space arithmetic, and catches any wrong probability (>= 1e-3 off).
    approx::assert_abs_diff_eq!(out[0].expected_pauses, e, epsilon = 1e-9);
    let summary = EvalSummary::from_outcomes(&out, 3, &["all".to_string()]);
    assert_eq!(summary.histogram, vec![0, 0, 9, 0]);
    assert_eq!(summary.overall.accuracy, 1.0);
    assert_eq!(summary.by_class[0].1.count, 9);
    assert_eq!(summary.by_token, vec![(3, summary.overall.clone())]);
}

/// The metrics and the decoder read `d_k` with the model's DK bias: a bias `b` acts
/// like adding `b` to every DK logit.
#[test]
fn metrics_and_decoding_read_dk_with_the_dk_bias() {
    let shape = LossShape {
        batch: 1,
        pauses: 3,
        seq: 4,
        vocab: 6,
    };
    let z = scripted_logits(shape, &[0.9, 0.7, 0.2, 0.6], &[1, 2, 3, 4]);
    let mut shifted = z.clone();
    for row in 0..shape.rows() {
        shifted[row * 7 + 6] -= 1.5;
    }
    let targets = vec![3; 4];
    let classes = vec![0u16; 4];
    let biased = greedy_outcomes(&shifted, &targets, &classes, shape, 1.5, 0.5).unwrap();
    let plain = greedy_outcomes(&z, &targets, &classes, shape, 0.0, 0.5).unwrap();
    for (a, b) in biased.iter().zip(&plain) {
        assert_eq!(a.pauses, b.pauses);
        // Shifting the DK logit by -1.5 and adding the bias 1.5 back cancel exactly up to
        // one rounding of the f64 sum: 1e-12 absolute on values of order 1.
        approx::assert_abs_diff_eq!(a.expected_pauses, b.expected_pauses, epsilon = 1e-12);
        approx::assert_abs_diff_eq!(a.nll, b.nll, epsilon = 1e-12);
    }

    // Decoding: the same weights with dk_bias = b give logit(p_dk) shifted by b.
    let config = cyb::config::ModelConfig {
        vocab: 7,
        d_model: 8,
        n_layer: 1,
        n_head: 2,
        t_max: 6,
        k_max: 2,
        pause_attention: cyb::config::PauseAttention::Private,
        dk_bias: 0.0,
        layer_norm_eps: 1e-5,
    };
    let plain: cyb::Model<f64> =
        cyb::Model::init(config.clone(), &mut cyb::rng::seeded(4)).unwrap();
    let mut biased = plain.clone();
    biased.config.dk_bias = 2.5;
    let logit = |p: f64| (p / (1.0 - p)).ln();
    let p_dk = |m: &cyb::Model<f64>| {
        let mut dec = cyb::decode::Decoder::new(m, 2, cyb::decode::Policy::ForcedK, 1).unwrap();
        dec.generate(&[1, 2], 2).unwrap()[0].p_dk.clone()
    };
    let (a, b) = (p_dk(&plain), p_dk(&biased));
    assert_eq!(a.len(), 3);
    for (pa, pb) in a.iter().zip(&b) {
        // logit(sigmoid(x)) in f64 loses ~|x| * 1e-16 relative per round trip, and the
        // probabilities are near 0/1 for some rows; 1e-9 keeps a margin of 1e4 over that.
        approx::assert_abs_diff_eq!(logit(*pb) - logit(*pa), 2.5, epsilon = 1e-9);
    }
}

#[test]
fn bpe_learns_words_and_encodes_back_to_the_text() {
    use cyb::tokenizer::TextTokenizer;
    let text = "the cat sat on the mat. the cat ate the rat, then the cat sat again.\n".repeat(20);
    let bpe = TextTokenizer::train_bpe(&text, 300).unwrap();
    assert!(
        bpe.vocab() > 256 && bpe.vocab() <= 300,
        "V = {}",
        bpe.vocab()
    );
    let ids = bpe.encode(&text).unwrap();
    assert!(
        ids.len() < text.len() / 2,
        "{} tokens for {} bytes",
        ids.len(),
        text.len()
    );
    assert_eq!(bpe.decode(&ids).unwrap(), text);
    let cat = (0..bpe.vocab() as u32)
        .find(|&i| bpe.token_text(i) == " cat")
        .expect("a word with its space");
    assert!(TextTokenizer::train_bpe(&text, 100).is_err());
    use cyb::data::{DataSource, Split, TokenText};
    let src = TokenText::from_text("t".into(), &text, 300, 8).unwrap();
    assert_eq!(src.vocab(), bpe.vocab());
    let b = src.sample(Split::Validation, 2, 8, &mut cyb::rng::seeded(1));
    assert_eq!(b.tokens.len(), 16);
    assert!(b.targets.iter().all(|&t| (t as usize) < src.vocab()));
    // Trained on the first 90% of the same text: the same vocabulary here.
    assert_eq!(src.token_name(cat as usize), "␣cat");
    assert_eq!(src.token_name(src.vocab()), "<PAUSE>");
    // Classes by the first visible character: " cat" a letter, "." punctuation.
    let names = src.class_names();
    assert_eq!(names[src.class_of(cat) as usize], "letter");
    let dot = bpe.encode(".").unwrap()[0];
    assert_eq!(names[src.class_of(dot) as usize], "punctuation");
}

/// The three splits of every source never overlap, and validation is what it was
/// before the test split existed (the last 10% of a text, the validation shards, the
/// validation generator), so validation numbers did not move.
#[test]
fn every_source_has_disjoint_train_test_and_validation_splits() {
    use cyb::data::{split_points, TokenText};
    use cyb::train::{eval_rng, validation_rng};
    use rand::RngExt;
    let seq = 8;
    // Bytes: 80% 'a', 10% 'b', 10% 'c': each split's windows hold only its letter.
    let bytes: Vec<u8> = [(b'a', 800), (b'b', 100), (b'c', 100)]
        .iter()
        .flat_map(|&(c, n)| std::iter::repeat_n(c, n))
        .collect();
    assert_eq!(split_points(bytes.len()), (800, 900));
    let text = ByteText::from_bytes("abc".into(), bytes.clone(), seq).unwrap();
    for (split, letter) in [
        (Split::Train, b'a'),
        (Split::Test, b'b'),
        (Split::Validation, b'c'),
    ] {
        let b = text.sample(split, 64, seq, &mut seeded(3));
        assert!(
            b.tokens
                .iter()
                .chain(&b.targets)
                .all(|&t| t == letter as i32),
            "{split:?}"
        );
    }
    // Validation windows: the last 10%, drawn exactly as before (a start uniform over
    // the part's window starts, from the caller's generator).
    let varied: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
    let text = ByteText::from_bytes("varied".into(), varied.clone(), seq).unwrap();
    let b = text.sample(Split::Validation, 4, seq, &mut validation_rng(5));
    let mut rng = validation_rng(5);
    for w in 0..4 {
        let start = 900 + rng.random_range(0..100 - seq);
        let want: Vec<i32> = varied[start..start + seq]
            .iter()
            .map(|&x| x as i32)
            .collect();
        assert_eq!(&b.tokens[w * seq..(w + 1) * seq], &want[..]);
    }
    // Too short for three splits of seq + 1: the error says how much is needed.
    let e = ByteText::from_bytes("short".into(), vec![b'x'; 85], seq).unwrap_err();
    assert!(e.to_string().contains("too few for context 8"), "{e}");

    // Tokens: each part encoded on its own, the BPE learnt on the training part only.
    let words = format!(
        "{}{}{}",
        "alpha ".repeat(800),
        "beta ".repeat(120),
        "gamma ".repeat(100)
    );
    assert_eq!(
        split_points(words.len()),
        (4800, 5400),
        "cut between the words"
    );
    let tok = TokenText::from_text("words".into(), &words, 260, seq).unwrap();
    // Letters only the other splits' words have.
    for (split, foreign) in [
        (Split::Train, "betgm"),
        (Split::Test, "lphgm"),
        (Split::Validation, "lphbet"),
    ] {
        let b = tok.sample(split, 32, seq, &mut seeded(9));
        let ids: Vec<u32> = b.tokens.iter().map(|&t| t as u32).collect();
        let decoded = tok.tokenizer().decode(&ids).unwrap();
        assert!(
            !decoded.chars().any(|c| foreign.contains(c)),
            "{split:?}: {decoded:?}"
        );
    }

    // The generated task: the split is the generator; test batches are their own.
    let task = ModSum::default();
    let val = task.sample(
        Split::Validation,
        4,
        32,
        &mut eval_rng(Split::Validation, 1),
    );
    let again = task.sample(Split::Validation, 4, 32, &mut validation_rng(1));
    let test = task.sample(Split::Test, 4, 32, &mut eval_rng(Split::Test, 1));
    assert_eq!(val.tokens, again.tokens);
    assert_ne!(val.tokens, test.tokens);
}

/// Shards: the test part is the last `min(validation, training / 9)` training tokens,
/// which training windows never reach; validation windows are the validation shards'.
#[test]
fn shard_test_part_is_cut_from_the_end_of_training() {
    use cyb::shard_data::ShardData;
    use cyb::shards::{ShardMeta, ShardWriter, TokenWidth};
    let dir = std::env::temp_dir().join(format!("cyb-split-shards-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Two training shards of 600 and 300 tokens (tokens 0..600 and 2000..2300, so a
    // window across them would show), validation tokens 1000..1200 (200 tokens): the
    // test part is the last min(200, 900 / 9 = 100) training tokens, 2200..2300.
    let write = |name: &str, tokens: Vec<u32>| {
        let mut w = ShardWriter::create(&dir.join(name), TokenWidth::U16).unwrap();
        w.write(&tokens).unwrap();
        w.finish().unwrap();
    };
    write("train_000000.bin", (0..600).collect());
    write("train_000001.bin", (2000..2300).collect());
    write("val_000000.bin", (1000..1200).collect());
    ShardMeta {
        vocab: 2300,
        tokenizer: "test".into(),
        eot: None,
        train_tokens: 900,
        val_tokens: 200,
    }
    .write(&dir)
    .unwrap();
    let seq = 8;
    let data = ShardData::open(dir.to_str().unwrap(), None, seq).unwrap();
    assert_eq!(data.tokens(), (800, 200));
    assert_eq!(data.test_tokens(), 100);
    for (split, parts) in [
        (Split::Train, &[(0, 600), (2000, 2200)][..]),
        (Split::Test, &[(2200, 2300)]),
        (Split::Validation, &[(1000, 1200)]),
    ] {
        let b = data.sample(split, 256, seq, &mut seeded(2));
        let mut seen = vec![false; parts.len()];
        for w in 0..256 {
            let first = b.tokens[w * seq];
            let last = b.targets[(w + 1) * seq - 1];
            // A window is `seq + 1` consecutive tokens inside one part of the split.
            let part = parts
                .iter()
                .position(|&(lo, hi)| (lo..hi).contains(&first) && (lo..hi).contains(&last));
            assert!(part.is_some(), "{split:?}: window {first}..={last}");
            assert_eq!(last - first, seq as i32, "{split:?}");
            seen[part.unwrap()] = true;
        }
        assert!(seen.iter().all(|&s| s), "{split:?}: every part drawn");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
