"""Cost of routing a mixed-language batch to six language adapters against one single-adapter batch of the same size.

The text tower of the flickr8k-multi recipe (tiny XLM-R: hidden 128, 2 layers, 16k vocabulary) with six LoRA
adapters (r 16 on the word embeddings, attention and feed-forward matrices), in inference mode on the CPU. Side by
side, interleaved round by round so that slow spells of a shared machine hit every mode, the median time of one
`get_text_features` call on the same (B, T) batch:

- base: no adapter (every row `__base__`);
- single: every row through one adapter with peft's ordinary forward (`set_language`, no per-row routing);
- mixed: rows of six languages in turn, each through its own adapter in one call (`lang=[...]`).

Prints a table with mixed / single per batch size (the goal is at most 1.3) and checks that the mixed batch equals
the per-language batches row by row.

    python benchmarks/adapter_routing.py [--batch-sizes 64,256] [--seq-len 32] [--rounds 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

LANGUAGES = ["es", "id", "ja", "ru", "tr", "zh"]


def build_model(vocab_size: int, seed: int = 0):
    from peft import LoraConfig

    from seeyou_ml import SeeYouModel
    from seeyou_ml.adapters import add_language_adapter
    from seeyou_ml.presets import tiny_config

    torch.manual_seed(seed)
    config = tiny_config(vocab_size=vocab_size, projection_dim=128, vision_widths=(8, 16), vision_depths=(1, 1),
                         text_hidden_size=128, text_layers=2, text_heads=4, max_text_length=64)
    model = SeeYouModel(config).eval()
    for lang in LANGUAGES:
        # Random B matrices: a trained adapter's update is not zero, and zero would hide a routing mistake.
        add_language_adapter(model, lang, LoraConfig(r=16, lora_alpha=32, init_lora_weights=False,
                                                     target_modules=["word_embeddings", "query", "key", "value",
                                                                     "dense"]))
    return model


def timed(fn, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="64,256")
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=16001)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from seeyou_ml.adapters import BASE_ADAPTER, set_language
    from seeyou_ml.towers import encode_text

    model = build_model(args.vocab_size)
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{args.threads} threads, T={args.seq_len}, {args.rounds} rounds, median ms per call")
    print(f"{'batch':>6} {'base':>9} {'single':>9} {'mixed':>9} {'mixed/single':>13} {'single/base':>12} "
          f"{'max |mixed - per-language|':>27}")
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        generator = torch.Generator().manual_seed(batch)
        input_ids = torch.randint(3, args.vocab_size, (batch, args.seq_len), generator=generator)
        mask = torch.ones_like(input_ids)
        lang = [LANGUAGES[i % len(LANGUAGES)] for i in range(batch)]

        def single():
            # peft's own forward with its active adapter (set_language made it "es"): no per-row routing at all.
            pooled, _ = encode_text(model.text_model, input_ids, mask, model.config.text_pooling)
            return F.normalize(model.text_projection(pooled), dim=-1)

        set_language(model, "es")
        modes = {
            "base": lambda: model.get_text_features(input_ids, mask, lang=[BASE_ADAPTER] * batch).pooler_output,
            "single": single,
            "mixed": lambda: model.get_text_features(input_ids, mask, lang=lang).pooler_output,
        }
        times = {name: [] for name in modes}
        with torch.inference_mode():
            for fn in modes.values():
                timed(fn, 2)  # warm-up
            for _ in range(args.rounds):
                for name, fn in modes.items():
                    times[name] += timed(fn, 1)
            mixed = modes["mixed"]()
            es = model.get_text_features(input_ids, mask, lang="es").pooler_output
            error = float((single() - es).abs().max())  # the baseline computes what routing to "es" computes
            for code in LANGUAGES:
                rows = [i for i, c in enumerate(lang) if c == code]
                alone = model.get_text_features(input_ids[rows], mask[rows], lang=code).pooler_output
                error = max(error, float((mixed[rows] - alone).abs().max()))
        median = {name: 1000 * statistics.median(values) for name, values in times.items()}
        print(f"{batch:>6} {median['base']:>9.2f} {median['single']:>9.2f} {median['mixed']:>9.2f} "
              f"{median['mixed'] / median['single']:>13.2f} {median['single'] / median['base']:>12.2f} "
              f"{error:>27.2e}")


if __name__ == "__main__":
    main()
