"""Image-text retrieval recall@k as an `evaluate` metric.

The folder stands alone (no import of seeyou-ml), so it can be pushed to the Hub as a metric: its tiled recall kernel,
`retrieval.py`, is `seeyou_ml/evaluation/retrieval.py` itself (a link in the repository, a copy in a wheel or on the Hub).
"""

import datasets
import evaluate
import numpy as np

from .retrieval import retrieval_recall

_DESCRIPTION = """
Image→text and text→image recall@k (CLIP_benchmark's definitions) with rsum, in percent. An image is an image→text
hit when any of its captions is among its k best captions; every caption is a text→image query whose hit is its
image among its k best images. Equal scores are ordered by index, lowest first. Scores are computed tile by tile,
so the images × captions matrix is never held in memory.
"""

_KWARGS_DESCRIPTION = """
Each row of the metric is one caption; the images are given whole to `compute`.

Args:
    text_embeds: (M, D) caption embeddings, one row per caption.
    text_to_image: (M,) index of each caption's image in `image_embeds`.
    image_embeds: (N, D) image embeddings, passed to `compute` (not to `add_batch`).
    ks: recall cut-offs, default (1, 5, 10).
    chunk_size: side of the score tiles, default 2048.

Returns:
    `image_to_text/R@k`, `text_to_image/R@k` for every k and `rsum`, in percent.

Example:
    >>> import evaluate
    >>> metric = evaluate.load("retrieval_recall")  # the folder, or its Hub repository
    >>> metric.compute(image_embeds=[[1.0, 0.0], [0.0, 1.0]], text_embeds=[[0.9, 0.1], [0.2, 0.8]],
    ...                text_to_image=[0, 1], ks=(1,))
    {'image_to_text/R@1': 100.0, 'text_to_image/R@1': 100.0, 'rsum': 200.0}
"""

_CITATION = """
@inproceedings{radford2021learning,
  title={Learning Transferable Visual Models From Natural Language Supervision},
  author={Radford, Alec and others},
  booktitle={ICML},
  year={2021}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RetrievalRecall(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "text_embeds": datasets.Sequence(datasets.Value("float32")),
                    "text_to_image": datasets.Value("int64"),
                }
            ),
        )

    def _compute(self, text_embeds, text_to_image, image_embeds=None, ks=(1, 5, 10), chunk_size=2048):
        if image_embeds is None:
            raise ValueError("retrieval_recall needs image_embeds=(N, D) in compute(); add_batch takes captions only.")
        return retrieval_recall(
            np.asarray(image_embeds, dtype=np.float32),
            np.asarray(text_embeds, dtype=np.float32),
            np.asarray(text_to_image, dtype=np.int64),
            ks=ks,
            chunk_size=chunk_size,
        )
