"""Where a re-ranking head stands on the scenes corpus: what it tells apart, and whether its words find their objects.

    python benchmarks/rerank_diagnosis.py --model outputs/scenes-tiny-rerank [--split val] [--num-images 500]
        [--languages en ja] [--image-size 64]

For a model with a grounding head trained on the scenes corpus (e.g. by `recipes/scenes-tiny-rerank.yaml`), on the
split's images (val by default: settings are chosen there):
- per kind of counterfactual caption (two objects' positions swapped; the corpus's `negative_captions`, whose first is
  always that kind), how often the head's matching logit and the dual encoder's cosine score the image's own caption
  above it (50 % is chance);
- where the words of each object a caption names look (the first fusion layer's attention, `mention_attention`): how
  often its peak cell lies inside the object's box, and how often the attention centroids of two objects named one
  after the other lie in the order of the objects' boxes along the axis on which those boxes differ most.

When the words find their objects and their centroids keep the caption's order, a head that still scores position
twins at chance has the information in its first layer and fails to read it out into the matching logit.
"""

from __future__ import annotations

import argparse

import torch

from seeyou_ml import SeeYouModel, SeeYouProcessor
from seeyou_ml.data.collator import SeeYouCollator
from seeyou_ml.data.scenes import load_scenes
from seeyou_ml.geometry import box_cell_coverage, box_cxcywh_to_xyxy, cell_centres


def _scores(out) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pair's matching logit and the dual encoder's cosine, (B,) each."""
    return out.itm_logits.float(), (out.image_embeds * out.text_embeds).sum(-1).float()


@torch.no_grad()
def diagnose(model, collator, plain_collator, records) -> tuple[int, ...]:
    """Counts over the records: `(head prefers the own caption, the dual encoder does, captions, peaks inside the box,
    named objects, consecutive pairs in order, consecutive pairs)`. The own captions run once, with their mention
    masks; their position-swapped twins (the first negative caption) without, as their spans are the own caption's."""
    batch = collator(list(records))
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                pixel_values=batch["pixel_values"], mention_token_mask=batch["mention_token_mask"])
    twins = plain_collator([dict(r, caption=r["negative_captions"][0]) for r in records])
    twin_out = model(input_ids=twins["input_ids"], attention_mask=twins["attention_mask"],
                     pixel_values=batch["pixel_values"])
    (own_logit, own_cosine), (twin_logit, twin_cosine) = _scores(out), _scores(twin_out)
    head, dual = int((own_logit > twin_logit).sum()), int((own_cosine > twin_cosine).sum())

    attention = out.mention_attention.float()  # (n, M, L)
    height, width = out.region_size
    named = batch["mention_token_mask"].any(-1)  # (n, M)
    gold = batch["mention_boxes"].float()  # (n, M, 4) cx, cy, w, h
    coverage = box_cell_coverage(box_cxcywh_to_xyxy(gold.flatten(0, 1)), height, width).view(*gold.shape[:2], -1)
    inside = coverage.gather(-1, attention.argmax(-1, keepdim=True))[..., 0] > 0  # (n, M)
    centroids = attention @ cell_centres(height, width, attention.device, attention.dtype)  # (n, M, 2)
    in_order = pairs = 0
    for row in range(attention.shape[0]):
        slots = named[row].nonzero().flatten().tolist()
        for first, second in zip(slots[:-1], slots[1:]):
            step = gold[row, second, :2] - gold[row, first, :2]
            axis = int(step.abs().argmax())
            in_order += int(step[axis] * (centroids[row, second, axis] - centroids[row, first, axis]) > 0)
            pairs += 1
    return head, dual, len(records), int((inside & named).sum()), int(named.sum()), in_order, pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a saved model with a grounding head")
    parser.add_argument("--split", default="val")
    parser.add_argument("--num-images", type=int, default=500)
    parser.add_argument("--languages", nargs="+", default=["en", "ja"])
    parser.add_argument("--image-size", type=int, default=64, help="the corpus's image size the model trained on")
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args()
    model = SeeYouModel.from_pretrained(args.model).eval()
    if model.grounding_head is None:
        parser.error(f"{args.model} has no grounding head; train one (e.g. recipes/scenes-tiny-rerank.yaml).")
    processor = SeeYouProcessor.from_pretrained(args.model)
    collator, plain_collator = SeeYouCollator(processor, return_mentions=True), SeeYouCollator(processor)
    print(f"{args.model}: {args.split}, {args.num_images} images per language")
    print(f"{'language':<10}{'head > twin':>12}{'dual > twin':>12}{'peak in box':>13}{'pairs in order':>16}")
    for language in args.languages:
        records = load_scenes(split=args.split, num_images=args.num_images, languages=[language],
                              image_size=args.image_size)
        totals = [0] * 7
        for start in range(0, len(records), args.batch_size):
            chunk = records.select(range(start, min(start + args.batch_size, len(records))))
            for i, value in enumerate(diagnose(model, collator, plain_collator, chunk)):
                totals[i] += value
        head, dual, count, inside, named, in_order, pairs = totals
        print(f"{language:<10}{100 * head / count:>11.1f}%{100 * dual / count:>11.1f}%{100 * inside / named:>12.1f}%"
              f"{100 * in_order / max(pairs, 1):>15.1f}%")


if __name__ == "__main__":
    main()
