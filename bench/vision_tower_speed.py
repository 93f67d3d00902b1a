"""Seconds per training epoch when the image tower is fine-tuned by its last stages and the frozen text tower is read
from the cache.

    MVSA_SINGLE_DIR=... python bench/vision_tower_speed.py [--steps 12] [--cpu_threads 2]

With MiniLM-L6 + EfficientNet-Lite0 (backbones/): the whole image tower trained on augmented images; its last stage
(`--vision_trainable_blocks 1`: `blocks.5`, `blocks.6`, the head convolution) trained, running the whole tower at
each step on the eval transform (`--cache_vision_hidden_states false`, the training transform swapped for the eval
one so that both routes see the same pixels) and then from the cached feature maps entering it. Timed as in
bench/text_tower_speed.py (`time_steps`), one setting after the other in one process, so their ratios are side by
side. Results go to bench/results/vision_tower_speed.json.
"""

import argparse
import json
import os
import sys
from pathlib import Path

from text_tower_speed import ROOT, time_steps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--cpu_threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "vision_tower_speed.json")
    args = parser.parse_args()
    if not os.environ.get("MVSA_SINGLE_DIR"):
        parser.error("set MVSA_SINGLE_DIR to the raw MVSA-Single folder")
    from mmsa.processing_mmsa import MmsaImageProcessor

    augmenting = MmsaImageProcessor.train_transform
    towers = ["--freeze_text_backbone", "true", "--freeze_vision_backbone", "false", "--vision_learning_rate", "1e-4"]
    results = []
    for blocks, cached in ((None, False), (1, False), (1, True)):
        flags = [*towers, "--cache_vision_hidden_states", str(cached).lower()]
        if blocks is not None:
            flags += ["--vision_trainable_blocks", str(blocks)]
            MmsaImageProcessor.train_transform = property(lambda self: self.eval_transform)
        try:
            timing = time_steps(flags, args.steps, args.cpu_threads)
        finally:
            MmsaImageProcessor.train_transform = augmenting
        results.append(
            {
                "towers": "MiniLM-L6 + EfficientNet-Lite0",
                "trained_image_stages": "all" if blocks is None else f"last {blocks} of 5",
                "feature_maps_cached": cached,
                **timing,
            }
        )
        print(json.dumps(results[-1]), flush=True)
    command = "python bench/vision_tower_speed.py " + " ".join(sys.argv[1:])
    args.output.write_text(json.dumps({"command": command, "results": results}, indent=2) + "\n")
    print(f"-> {args.output}")


if __name__ == "__main__":
    main()
