//! The token-shard loader alone (`cyb::shard_data::ShardData::sample`: random windows of
//! memory-mapped shards), in real tokens per second, next to the training step's rate,
//! so that the loader is never what a GPU waits on.
//!
//! It writes ~64 MB of byte-level shards (this crate's README, repeated) to a temporary
//! folder, then draws batches of the GPT-2-small step of ANCHORS.md (8 x 1024) and of
//! the default CPU run (32 x 16) for about two seconds each. The printed ratio is to
//! PyTorch's 84,000 tok/s (torch.compile, the GPU step the crate's own is measured
//! against): a loader ratio far above 1 means batches cost a small fraction of a step.
//! The shards' pages are warm in the page cache after the first pass; a corpus larger
//! than RAM reads cold pages from disk at random, which this does not measure.

use cyb::data::{DataSource, Split};
use cyb::shard_data::ShardData;
use cyb::tokenize::{tokenize, TokenizeConfig, TokenizerSpec};
use std::time::Instant;

const TORCH_TOK_S: f64 = 84_000.0;

fn main() {
    let dir = std::env::temp_dir().join(format!("cyb-bench-loader-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary folder");
    let readme = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let input = dir.join("corpus.txt");
    std::fs::write(&input, readme.repeat((64 << 20) / readme.len() + 1)).expect("corpus");
    let out = dir.join("shards");
    tokenize(
        &TokenizeConfig {
            inputs: vec![input],
            tokenizer: TokenizerSpec::Bytes,
            out: out.clone(),
            val_tokens: 1 << 20,
            shard_tokens: 16 << 20,
            version: None,
        },
        false,
    )
    .expect("tokenize");
    for (batch, seq) in [(8usize, 1024usize), (32, 16)] {
        let data = ShardData::open(out.to_str().expect("utf-8 path"), None, seq).expect("open");
        let mut rng = cyb::rng::seeded(1);
        let (mut tokens, mut checksum) = (0usize, 0i64);
        let t0 = Instant::now();
        while t0.elapsed().as_secs_f64() < 2.0 {
            let b = data.sample(Split::Train, batch, seq, &mut rng);
            checksum += b.targets.iter().map(|&t| t as i64).sum::<i64>();
            tokens += batch * seq;
        }
        let rate = tokens as f64 / t0.elapsed().as_secs_f64();
        println!(
            "loader {batch} x {seq}: {rate:.3e} real tokens/s ({:.0}x PyTorch's {TORCH_TOK_S} tok/s GPU step; checksum {checksum})",
            rate / TORCH_TOK_S
        );
    }
    std::fs::remove_dir_all(&dir).expect("clean up");
}
