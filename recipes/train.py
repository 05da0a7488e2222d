"""Train a SeeYou model from a recipe, on one process or many.

    accelerate launch recipes/train.py --config recipes/scenes-tiny.yaml [--key value ...]
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 recipes/train.py --config ...

Writes to the recipe's output_dir: the model and processor (`AutoModel.from_pretrained(output_dir)` loads them),
the resolved `recipe.yaml`, `history.jsonl` (loss per step), `retrieval_results.json`, checkpoints and TensorBoard
logs.
"""

from seeyou_ml.training.launch import main

if __name__ == "__main__":
    main()
