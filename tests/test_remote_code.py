"""Saved folders and the metric folder work where seeyou_ml cannot be imported (remote code, Hub metric).

One child process, in which `import seeyou_ml` fails, loads a saved folder with `trust_remote_code=True`, runs the
model card's usage snippet, the zero-shot pipeline, `AutoTokenizer` and the `retrieval_recall` metric; the tests
compare what it computed with the package's results here.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from seeyou_ml import SeeYouModel
from seeyou_ml.evaluation import RETRIEVAL_METRIC_PATH, retrieval_recall
from seeyou_ml.hub import render_model_card
from seeyou_ml.presets import tiny_config, tiny_processor

TEXTS = ["a red circle left", "ein blaue Kreis", "un cercle rouge", "a green star"]
LABELS = ["red circle", "blue square", "green star", "yellow triangle"]
TEMPLATE = "a photo of a {}"
TOKENIZER_WARNING = "to instantiate a model of type"

CHILD = r'''
import sys
sys.modules["seeyou_ml"] = None  # `import seeyou_ml` (and of any submodule) raises ImportError from here on

import contextlib, io, json, logging
import numpy as np
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor, AutoTokenizer, pipeline

folder, metric_folder, snippet, texts, labels, template = sys.argv[1:7]
texts, labels = json.loads(texts), json.loads(labels)
out = {}
try:
    import seeyou_ml
    out["package_importable"] = True
except ImportError:
    out["package_importable"] = False

printed = io.StringIO()
with contextlib.redirect_stdout(printed):
    exec(compile(open(snippet).read(), "card-snippet", "exec"), {})
out["snippet_output"] = printed.getvalue()

model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
image = Image.new("RGB", (40, 40), (200, 30, 30))
batch = processor(text=texts, images=[image, image, image, image], return_tensors="pt")
with torch.no_grad():
    output = model(**batch)
out["classes"] = [type(model).__module__, type(processor).__module__]
out["text_embeds"] = output.text_embeds.tolist()
out["image_embeds"] = output.image_embeds.tolist()

classifier = pipeline("zero-shot-image-classification", model=folder, trust_remote_code=True)
out["pipeline"] = classifier(image, candidate_labels=labels, hypothesis_template=template)

records = []
handler = logging.Handler()
handler.emit = lambda record: records.append(record.getMessage())
logging.getLogger("transformers").addHandler(handler)
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
out["tokenizer_warnings"] = records
out["tokenizer_ids"] = tokenizer(texts[0])["input_ids"]

import evaluate
rng = np.random.default_rng(0)
images, captions = rng.normal(size=(7, 5)), rng.normal(size=(12, 5))
owners = [i % 7 for i in range(12)]
out["metric"] = evaluate.load(metric_folder).compute(image_embeds=images.tolist(), text_embeds=captions.tolist(),
                                                   text_to_image=owners, ks=(1, 3))
out["seeyou_modules"] = sorted(k for k, v in sys.modules.items() if k.split(".")[0] == "seeyou_ml" and v is not None)
print("RESULT " + json.dumps(out))
'''


def metric_inputs():
    """The child's metric inputs (same generator and seed)."""
    rng = np.random.default_rng(0)
    return rng.normal(size=(7, 5)), rng.normal(size=(12, 5)), np.array([i % 7 for i in range(12)])


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory, tiny_tokenizer):
    """A tiny model and processor saved with save_pretrained, with the metric folder copied as a Hub push has it."""
    torch.manual_seed(0)
    config = tiny_config(vocab_size=len(tiny_tokenizer), projection_dim=16, vision_widths=(8, 16),
                         vision_depths=(1, 1), text_hidden_size=32, max_text_length=32)
    model = SeeYouModel(config).eval()
    folder = tmp_path_factory.mktemp("remote") / "tiny-seeyou"
    model.save_pretrained(folder)
    tiny_processor(tiny_tokenizer, image_size=32).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def child(saved_folder, tmp_path_factory):
    """What the child process without seeyou_ml computed."""
    work = tmp_path_factory.mktemp("child")
    # As uploaded: links resolved, no package marker.
    metric = shutil.copytree(RETRIEVAL_METRIC_PATH, work / "retrieval_recall",
                             ignore=shutil.ignore_patterns("__pycache__", "__init__.py"))
    card = render_model_card(saved_folder)
    (snippet,) = re.findall(r"```python\n(.*?)```", card.text, flags=re.S)
    (work / "snippet.py").write_text(snippet)
    (work / "child.py").write_text(textwrap.dedent(CHILD))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(work / "modules"),
           "HF_HOME": str(work / "hf-home"), "PYTHONPATH": ""}
    run = subprocess.run(
        [sys.executable, str(work / "child.py"), str(saved_folder), str(metric), str(work / "snippet.py"),
         json.dumps(TEXTS), json.dumps(LABELS), TEMPLATE],
        capture_output=True, text=True, env=env, cwd=work, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    (line,) = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(line[len("RESULT "):])


def package_outputs(saved_folder):
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(saved_folder).eval()
    processor = AutoProcessor.from_pretrained(saved_folder)
    return model, processor, Image.new("RGB", (40, 40), (200, 30, 30))


def test_child_cannot_import_the_package(child):
    assert child["package_importable"] is False and child["seeyou_modules"] == []
    assert all(module.startswith("transformers_modules.") for module in child["classes"])


def test_remote_code_gives_the_packages_embeddings(child, saved_folder):
    model, processor, image = package_outputs(saved_folder)
    batch = processor(text=TEXTS, images=[image] * 4, return_tensors="pt")
    with torch.no_grad():
        output = model(**batch)
    torch.testing.assert_close(torch.tensor(child["text_embeds"]), output.text_embeds, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.tensor(child["image_embeds"]), output.image_embeds, rtol=0, atol=1e-6)


def ranked_by_logits(model, processor, image):
    batch = processor(text=[TEMPLATE.format(label) for label in LABELS], images=[image], return_tensors="pt")
    with torch.no_grad():
        probs = model(**batch).logits_per_image[0].softmax(-1)  # (labels,)
    order = probs.argsort(descending=True)
    return [LABELS[i] for i in order], probs[order]


def test_zero_shot_pipeline_ranks_labels_as_the_logits_do(child, saved_folder):
    from transformers import pipeline

    model, processor, image = package_outputs(saved_folder)
    labels, probs = ranked_by_logits(model, processor, image)
    assert len(set(probs.tolist())) == len(LABELS)  # no ties: the ranking is defined
    with_package = pipeline("zero-shot-image-classification", model=str(saved_folder))
    for result in (with_package(image, candidate_labels=LABELS, hypothesis_template=TEMPLATE), child["pipeline"]):
        assert [r["label"] for r in result] == labels
        torch.testing.assert_close(torch.tensor([r["score"] for r in result]), probs, rtol=0, atol=1e-5)


def test_card_snippet_runs_without_the_package(child):
    lines = child["snippet_output"].splitlines()
    assert lines[0].startswith("tensor([[") and "'label': 'circle'" in child["snippet_output"]


def test_tokenizer_loads_without_the_model_type_warning(child, saved_folder, tiny_tokenizer):
    from transformers import AutoTokenizer

    assert child["tokenizer_warnings"] == []
    assert child["tokenizer_ids"] == tiny_tokenizer(TEXTS[0])["input_ids"]
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger("transformers").addHandler(handler)
    try:
        AutoTokenizer.from_pretrained(saved_folder)
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert not [message for message in records if TOKENIZER_WARNING in message]


def test_saved_folder_names_its_remote_code(saved_folder):
    config = json.loads((saved_folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration.SeeYouConfig",
        "AutoModel": "modeling.SeeYouModel",
        "AutoModelForZeroShotImageClassification": "modeling.SeeYouModel",
    }
    processor = json.loads((saved_folder / "processor_config.json").read_text())
    assert processor["auto_map"] == {"AutoProcessor": "processing.SeeYouProcessor"}
    for name in ("configuration.py", "modeling.py", "losses.py", "towers.py", "processing.py"):
        source = (saved_folder / name).read_text()
        # The dynamic-module cache holds the folder's files flat: only `from .module import` of a sibling works.
        assert not re.search(r"^\s*from \.\.", source, flags=re.M), name
        for module in re.findall(r"^\s*from \.(\w+) import", source, flags=re.M):
            assert (saved_folder / f"{module}.py").is_file(), (name, module)


def test_metric_module_without_the_package_equals_retrieval_recall(child):
    images, captions, owners = metric_inputs()
    assert child["metric"] == pytest.approx(retrieval_recall(images.astype(np.float32), captions.astype(np.float32),
                                                             owners, ks=(1, 3)))
