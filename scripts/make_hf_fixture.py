#!/usr/bin/env python3
"""Writes testdata/hf/tiny-gpt2/: a tiny random GPT-2 in Hugging Face's own format,
with the logits and tokenizer ids Hugging Face itself computes, so that the Rust tests
check `cyb import` and the crate's tokenizer path against an implementation nobody here
wrote. Run by hand (never by the tests, which need no Python and no network):

    python3 -m venv /work/venv-hf
    /work/venv-hf/bin/pip install torch==2.15.0 transformers==5.25.0 \
        tokenizers==0.23.3 safetensors==0.8.0 numpy
    /work/venv-hf/bin/python scripts/make_hf_fixture.py

The versions are pinned (checked below): another version may write other tensor names
or other bytes. The output is deterministic for these versions on one machine (fixed
seeds; the BPE trainer is deterministic for a fixed corpus).

Files (all under testdata/hf/tiny-gpt2/, about 1.9 MB in all):

- `config.json`, `tokenizer.json`, `model.safetensors`: the model as
  `GPT2LMHeadModel.save_pretrained` would describe it; the weights f32, tensor names
  without the `transformer.` prefix, no causal-mask buffers and no `lm_head.weight`
  (the layout of GPT2Model files on the hub).
- `logits.json`: for a few token sequences, Hugging Face's f32 logits `[T, V]`
  (eager attention, CPU), and the largest difference between them and the same model
  run in f64 (`f32_vs_f64_max_abs`), from which the tests derive their tolerance.
- `tokenizer_ids.json`: for a set of strings (ASCII, accents, CJK, emoji, runs of
  spaces and newlines, the empty string) the ids and tokens HF's tokenizer gives.
- `f16/`: the same weights rounded to f16, written by Hugging Face's own
  `save_pretrained` (`transformer.`-prefixed names), plus an explicit `lm_head.weight`
  equal to the embedding (a tied head stored twice).
- `bf16/`: the same weights rounded to bf16, unprefixed, with the causal-mask buffers
  older checkpoints carry (`h.{i}.attn.bias` `[1, 1, n_positions, n_positions]`,
  `h.{i}.attn.masked_bias` scalar).
  Both variants hold `config.json` and `tokenizer.json` as relative symbolic links to
  the ones above.
"""

import json
import os
import shutil
import sys

import numpy as np
import safetensors
import tokenizers
import torch
import transformers
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

PINNED = {
    "torch": (torch.__version__.split("+")[0], "2.15.0"),
    "transformers": (transformers.__version__, "5.25.0"),
    "tokenizers": (tokenizers.__version__, "0.23.3"),
    "safetensors": (safetensors.__version__, "0.8.0"),
}
for name, (have, want) in PINNED.items():
    if have != want:
        sys.exit(f"{name} {have} is installed; this script is pinned to {want}")

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "testdata", "hf", "tiny-gpt2")
OUT = os.path.normpath(OUT)

# The training text of the BPE vocabulary: plain English prose written for this
# fixture (no licence questions), long enough for about a thousand merges.
CORPUS = """
The lighthouse stood at the end of a long spit of grey rock, and for most of the year
nobody but the keeper and his dog walked out to it. In winter the waves came over the
path twice a day, and the keeper learned to read the tide tables the way other people
read the morning paper. He wrote down the weather every hour: the wind, the height of
the swell, the colour of the sky at dawn, the number of ships that passed in the night.
Nobody ever asked to see the notebooks, but he kept them anyway, forty years of them,
stacked in a cupboard under the stairs that wound up to the lamp.

When the lamp was automated, the keeper was told he could stay in the cottage if he
wished. He did. He still climbed the stairs every evening, although there was nothing
left for him to do at the top except watch the beam turn and count the seconds between
the flashes. Four seconds of light, then dark, then four seconds again. His dog grew
old and slept by the stove. The keeper grew old too, more slowly, and went on writing
down the weather, because a habit of forty years does not stop when its reason does.

One spring a young woman came out along the spit with a camera and a folding chair.
She was studying birds, she said, the terns that nested on the rocks below the tower,
and she would be there every morning until the chicks had flown. The keeper showed her
where the nests were and where the path was safe. In return she told him the names of
birds he had watched for decades without knowing what they were called: the turnstone,
the purple sandpiper, the little auk that came only in the hardest winters. He wrote
the names in the margins of his old notebooks, next to the dates he had seen them.

By the end of the summer she had read most of the notebooks. She said they were the
longest record of the weather on that coast that anyone had kept, and that the
university would want to see them. The keeper laughed and said that a notebook was a
notebook, but he let her take three of them away to copy, and when they came back they
came with a letter, and the letter asked for all the rest.

Cooking is mostly a matter of patience. Onions want twenty minutes over a low flame
before they are sweet, not the five that recipes promise; bread wants a warm kitchen
and a cloth over the bowl, and it will rise in its own time whatever you do. A good
soup starts the day before, with bones and water and a few vegetables that have seen
better days, simmered until the kitchen smells of it. Salt early, taste often, and
remember that a sauce can always be thinned but rarely thickened without a lump.

The river that runs through the town is slow and brown in summer and fast and grey in
spring, when the snow melts in the hills. Children swim in it in July, above the weir,
where the water is deep and still. In March the same water would carry a grown man a
mile before he found his feet. The old bridge has stood for three hundred years; the
new one, built of concrete after the war, already needs repairs. Engineers come every
few years to measure the cracks, write a report, and go away again.

Mathematics is the art of giving the same name to different things, a famous
mathematician once said. A triangle drawn in the sand and a triangle drawn on paper
are the same triangle to a geometer, and the number seven is the same number whether
it counts apples or days of the week. The power of the subject comes from forgetting
what does not matter, and the difficulty comes from deciding what that is.

Trains leave the northern station every hour, on the hour, from six in the morning
until midnight. The first one is always full of people going to work, the last one of
people coming home from the theatre, and the ones between are half empty, carrying
students, pensioners, and the occasional tourist with a map held upside down. The
journey to the coast takes two hours and ten minutes, or three hours when it snows.

Numbers: 0 1 2 3 4 5 6 7 8 9 10 12 15 20 25 50 100 365 1024 2026; punctuation: (a, b),
[c; d], {e: f}, "quoted", 'single', question? exclamation! dash - and ellipsis...
"""

# Strings whose ids the tests compare: ASCII, accents, CJK, emoji, whitespace runs,
# and the empty string (which must encode to no ids at all).
TOKENIZER_STRINGS = [
    "The keeper wrote down the weather every hour.",
    "Hello, world!  Two  spaces and a tab\there.",
    "café déjà vu, naïve façade, Ångström, Øresund",
    "日本語のテキスト、中文文本",
    "emoji: 🙂🚀 and a flag 🇫🇷, a family 👨‍👩‍👧",
    "    four leading spaces",
    "line one\nline two\n\n\nthree newlines then   trailing spaces   ",
    "\n",
    "",
    "numbers 1234567890 and 3.14159",
]

# Token sequences whose logits Hugging Face computes: one token alone, a sentence
# from the corpus, and a longer one from outside it (fixed ids, a pause-free GPT).
LOGIT_TEXTS = [
    "The",
    "Engineers measure the cracks in the old bridge, then go away.",
]

N_EMBD, N_LAYER, N_HEAD, N_POSITIONS, VOCAB_TARGET = 64, 2, 4, 128, 1000


def train_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_TARGET,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    tok.train_from_iterator([CORPUS], trainer=trainer)
    return tok


def randomise(model, seed):
    """Every parameter random and far from its default (LayerNorm gains around 1,
    biases nonzero), so that a weight read from the wrong place or not transposed
    changes the logits well beyond the tolerance."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.15 * noise)


def symlink(target, link):
    if os.path.lexists(link):
        os.remove(link)
    os.symlink(target, link)


def main():
    torch.manual_seed(0)
    tok = train_tokenizer()
    vocab = tok.get_vocab_size()

    config = transformers.GPT2Config(
        vocab_size=vocab,
        n_positions=N_POSITIONS,
        n_embd=N_EMBD,
        n_layer=N_LAYER,
        n_head=N_HEAD,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=True,
    )
    model = transformers.GPT2LMHeadModel(config)
    model.config._attn_implementation = "eager"
    randomise(model, seed=19)
    model.eval()

    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    tok.save(os.path.join(OUT, "tokenizer.json"))

    # f16 variant through Hugging Face's own writer (prefixed names), then with the
    # tied head stored explicitly as some exporters do.
    f16_dir = os.path.join(OUT, "f16")
    model.to(torch.float16).save_pretrained(f16_dir)
    model.to(torch.float32)
    # config.json from an f32 save (the f16 one says `"dtype": "float16"`).
    f32_dir = os.path.join(OUT, "f32-tmp")
    model.save_pretrained(f32_dir)
    os.rename(os.path.join(f32_dir, "config.json"), os.path.join(OUT, "config.json"))
    shutil.rmtree(f32_dir)
    for extra in os.listdir(f16_dir):
        if extra != "model.safetensors":
            os.remove(os.path.join(f16_dir, extra))
    f16_path = os.path.join(f16_dir, "model.safetensors")
    f16 = load_file(f16_path)
    assert all(k.startswith("transformer.") or k == "lm_head.weight" for k in f16), sorted(f16)
    f16["lm_head.weight"] = f16["transformer.wte.weight"].clone()
    save_file(f16, f16_path, metadata={"format": "pt"})

    # The f32 base: GPT2Model names (no prefix), no buffers, no head.
    base = {k[len("transformer."):]: v.detach().clone().contiguous()
            for k, v in model.state_dict().items() if k.startswith("transformer.")}
    base = {k: v for k, v in base.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    save_file(base, os.path.join(OUT, "model.safetensors"), metadata={"format": "pt"})

    # bf16 with the causal-mask buffers of older checkpoints.
    bf16 = {k: v.to(torch.bfloat16).contiguous() for k, v in base.items()}
    mask = torch.tril(torch.ones(N_POSITIONS, N_POSITIONS)).view(1, 1, N_POSITIONS, N_POSITIONS)
    for i in range(N_LAYER):
        bf16[f"h.{i}.attn.bias"] = mask.to(torch.bfloat16)
        bf16[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4, dtype=torch.bfloat16)
    os.makedirs(os.path.join(OUT, "bf16"))
    save_file(bf16, os.path.join(OUT, "bf16", "model.safetensors"), metadata={"format": "pt"})

    for variant in ("f16", "bf16"):
        for f in ("config.json", "tokenizer.json"):
            symlink(os.path.join("..", f), os.path.join(OUT, variant, f))

    # Logits, f32 as the tests compare them, and the f32 rounding they carry.
    sequences = [tok.encode(t).ids for t in LOGIT_TEXTS]
    model64 = transformers.GPT2LMHeadModel(config)
    model64.config._attn_implementation = "eager"
    model64.load_state_dict(model.state_dict())
    model64 = model64.double().eval()
    records, worst = [], 0.0
    with torch.no_grad():
        for ids in sequences:
            x = torch.tensor([ids])
            z32 = model(x).logits[0].float()
            z64 = model64(x).logits[0]
            worst = max(worst, (z32.double() - z64).abs().max().item())
            # 9 significant digits print every f32 exactly (and keep the file small).
            rows = [[float("%.9g" % v) for v in row] for row in z32.numpy()]
            records.append({"ids": ids, "logits": rows})
    logits = {
        "about": "Hugging Face GPT2LMHeadModel logits [T, vocab_size] in f32 (eager attention, CPU) "
                 "for model.safetensors; f32_vs_f64_max_abs is the largest difference from the same "
                 "model run in f64",
        "versions": {k: v[1] for k, v in PINNED.items()},
        "f32_vs_f64_max_abs": worst,
        "max_abs_logit": max(abs(v) for r in records for row in r["logits"] for v in row),
        "sequences": records,
    }
    with open(os.path.join(OUT, "logits.json"), "w") as f:
        json.dump(logits, f, separators=(",", ":"))

    cases = []
    for s in TOKENIZER_STRINGS:
        enc = tok.encode(s)
        cases.append({"text": s, "ids": enc.ids, "tokens": enc.tokens, "decoded": tok.decode(enc.ids)})
    with open(os.path.join(OUT, "tokenizer_ids.json"), "w") as f:
        json.dump({"about": "ids HF tokenizers gives for tokenizer.json (no special tokens added); "
                            "decoded = tok.decode(ids)",
                   "versions": {k: v[1] for k, v in PINNED.items()},
                   "cases": cases}, f, ensure_ascii=False, indent=1)

    total = 0
    for root, _, files in os.walk(OUT):
        for name in files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    print(f"vocab {vocab}; f32 vs f64 logits max |diff| {worst:.3g}; wrote {OUT} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
