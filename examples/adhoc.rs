use cyb::config::ModelConfig;
use cyb::cpu::model::Model;
use cyb::decode::{Decoder, Policy};
use cyb::rng::Rng;
fn main() {
    let c = ModelConfig {
        vocab: 10,
        d_model: 16,
        n_layer: 2,
        n_head: 4,
        t_max: 48,
        k_max: 3,
    };
    let m: Model<f64> = Model::init(c, &mut Rng::new(3)).unwrap();
    let mut m = m;
    let mut rng = Rng::new(5);
    for (_, _, t) in m.params.tensors_mut() {
        t.iter_mut().for_each(|x| *x += 0.3 * rng.normal());
    }
    let toks: Vec<i32> = (0..48).map(|i| (i * 7 % 10) as i32).collect();
    let full = m.forward(&toks, 1, 48, 3).unwrap();
    let mut dec = Decoder::new(&m, 3, Policy::ForcedK, 0).unwrap();
    let mut maxd: f64 = 0.0;
    for t in 0..48 {
        let got = dec.push(toks[t] as usize).unwrap();
        let want = &full[t * 11..][..11];
        for (g, w) in got.iter().zip(want) {
            maxd = maxd.max((g - w).abs());
        }
        for k in 1..=3 {
            let got = dec.pause().unwrap();
            let want = &full[(k * 48 + t) * 11..][..11];
            for (g, w) in got.iter().zip(want) {
                maxd = maxd.max((g - w).abs());
            }
        }
    }
    println!("max diff {maxd:e}");
}
