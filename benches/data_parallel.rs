//! The overhead of the data-parallel machinery on one GPU: the bf16 training step at the
//! GPT-2-small shape of ANCHORS.md (V=32000, d=768, L=12, H=12, T=1024, K=3, B=8,
//! objective `ap`) on one device ([`cyb::gpu::model::GpuModel`], forward, backward,
//! AdamW, the loss read back), and the same step through
//! [`cyb::gpu::data_parallel::DataParallel`] with one replica (its thread, the NCCL
//! all-reduce of the 124M f32 gradients, the f64 loss all-reduce, the answer over a
//! channel), once with the gradients all-reduced in 25 MiB buckets on a second stream
//! overlapping the backward (the default) and once in one all-reduce after the
//! backward (`--bucket-mb 0`). Wall-clock time per step (all wait for the step's loss),
//! median of 5; one line `gpu data_parallel N=1 ...` with the three and the
//! differences, plus the gradient bytes every step all-reduces (the volume that the
//! README's scaling estimate starts from). With more than one GPU, one more line at N
//! = all of them (B = 8 per GPU), bucketed against unbucketed: what the overlap gains
//! there. Scaling across GPUs cannot be measured on one GPU.
//!
//! Needs feature `nccl`, a GPU and libnccl (see README "Data parallel"); anything
//! missing is said and the bench skipped.

use criterion::{criterion_group, criterion_main, Criterion};

#[cfg(feature = "nccl")]
mod gpu {
    use criterion::Criterion;
    use cyb::config::ModelConfig;
    use cyb::cpu::model::Model;
    use cyb::gpu::data_parallel::{DataParallel, ReplicaSettings};
    use cyb::gpu::model::{GpuModel, Precision};
    use cyb::gpu::GpuContext;
    use cyb::launch::Launch;
    use cyb::rng::seeded;
    use cyb::Objective;
    use rand::RngExt;
    use std::time::Instant;

    fn median_ms(mut f: impl FnMut()) -> f64 {
        f(); // warm-up: allocations, module loads, cuBLAS handles
        let mut runs: Vec<f64> = (0..5)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        runs.sort_by(f64::total_cmp);
        runs[2]
    }

    pub fn bench(_c: &mut Criterion) {
        let gpu = match GpuContext::new(0) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("data-parallel bench skipped: {e}");
                return;
            }
        };
        if gpu.is_emulator() {
            eprintln!("data-parallel bench skipped: the device is the CPU emulator, not a GPU");
            return;
        }
        if let Err(e) = cyb::gpu::data_parallel::check_nccl_library() {
            eprintln!("data-parallel bench skipped: {e}");
            return;
        }
        let config = ModelConfig {
            vocab: 32000,
            d_model: 768,
            n_layer: 12,
            n_head: 12,
            t_max: 1024,
            k_max: 3,
            pause_attention: cyb::config::PauseAttention::Private,
            dk_bias: 0.0,
            layer_norm_eps: 1e-5,
        };
        let (b, t, k) = (8, 1024, 3);
        let gpus = cyb::gpu::device_count().max(1);
        let mut rng = seeded(11);
        let cpu: Model<f32> = Model::init(config.clone(), &mut rng).expect("model");
        // B = 8 per device for the largest N; N = 1 takes the first 8 sequences.
        let tokens: Vec<i32> = (0..gpus * b * t)
            .map(|_| rng.random_range(0..32000))
            .collect();
        let targets: Vec<i32> = (0..gpus * b * t)
            .map(|_| rng.random_range(0..32000))
            .collect();
        let obj = Objective::ap_default().resolve(k).expect("objective");
        let params = cpu
            .params
            .tensors()
            .iter()
            .map(|(_, _, x)| x.len())
            .sum::<usize>();

        // One device, the plain step; its loss read back as the trainer does.
        let one = {
            let mut m = match GpuModel::with_precision(&gpu, &cpu, Precision::Bf16) {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("data-parallel bench skipped: {e}");
                    return;
                }
            };
            m.optimizer_mut().weight_decay = 0.1;
            median_ms(|| {
                let s = m
                    .forward_backward(&tokens[..b * t], &targets[..b * t], b, t, k, &obj)
                    .expect("step");
                m.step(1e-4, 1.0).expect("update");
                s.loss().expect("loss");
            })
        }; // the model's memory is freed before the replica's is taken
        let settings = ReplicaSettings {
            precision: Precision::Bf16,
            weight_decay: 0.1,
            ..ReplicaSettings::default()
        };
        // ms/step of `n` replicas (B = 8 each) with gradient buckets of `bucket_bytes`
        // (one replica set at a time: each holds a whole model per device).
        let dp_ms = |n: usize, bucket_bytes: usize| -> Option<f64> {
            let mut launch = Launch::single_process(n).expect("launch");
            launch.bucket_bytes = bucket_bytes;
            let mut dp = match DataParallel::new(&cpu, &launch, &settings) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("data-parallel bench skipped: {e}");
                    return None;
                }
            };
            let rows = n * b * t;
            Some(median_ms(|| {
                dp.step(
                    &tokens[..rows],
                    &targets[..rows],
                    n * b,
                    t,
                    k,
                    &obj,
                    1e-4,
                    1.0,
                )
                .expect("data-parallel step");
            }))
        };
        let bucketed = cyb::launch::DEFAULT_BUCKET_BYTES;
        let (Some(unbucketed_1), Some(bucketed_1)) = (dp_ms(1, 0), dp_ms(1, bucketed)) else {
            return;
        };
        println!(
            "gpu data_parallel N=1 bf16 GPT-2-small B={b} T={t} K={k}: one device {one:.1} \
             ms/step, through NCCL unbucketed {unbucketed_1:.1} ms/step ({:+.1}%), 25 MiB \
             buckets overlapping the backward {bucketed_1:.1} ms/step ({:+.1}%); all-reduce \
             volume {:.0} MB of f32 gradients per step",
            100.0 * (unbucketed_1 / one - 1.0),
            100.0 * (bucketed_1 / one - 1.0),
            (params * 4) as f64 / 1e6
        );
        if gpus > 1 {
            let (Some(unbucketed), Some(overlapped)) = (dp_ms(gpus, 0), dp_ms(gpus, bucketed))
            else {
                return;
            };
            println!(
                "gpu data_parallel N={gpus} bf16 GPT-2-small B={b}/GPU T={t} K={k}: unbucketed \
                 {unbucketed:.1} ms/step, 25 MiB buckets overlapping the backward \
                 {overlapped:.1} ms/step ({:+.1}%)",
                100.0 * (overlapped / unbucketed - 1.0)
            );
        }
    }
}

fn bench(c: &mut Criterion) {
    #[cfg(feature = "nccl")]
    gpu::bench(c);
    #[cfg(not(feature = "nccl"))]
    {
        let _ = c;
        eprintln!("data-parallel bench skipped: built without feature `nccl`");
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
