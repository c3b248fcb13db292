"""Captioning evaluation as MTA/TOD3Cap use it: ground truth as prediction through the evaluator, and the
"names the right class" measure."""

from __future__ import annotations

import math

import pytest
import torch

from bevbridge.data.batch import DETECTION_CLASSES
from bevbridge.data.random_batch import random_batch
from bevbridge.eval.caption_class import named_classes, names_exactly
from bevbridge.eval.evaluators import CaptioningEvaluator
from bevbridge.models.contract import DataNeeds, Prediction

C = DETECTION_CLASSES.index


def test_caption_class_words_ignore_the_ego_car_and_need_whole_words():
    """Would catch: every caption counted as naming 'car' (they all mention the ego car), 'bus' found in
    'business', or a caption naming two classes counted as right."""
    assert named_classes("In the front of the ego car, about 45 meters away, an orange truck is moving.") == \
        {C("truck")}
    assert named_classes("A khaki construction vehicle is parked near the ego vehicle.") == {C("construction_vehicle")}
    assert named_classes("A construction worker in orange, and two traffic cones.") == {C("pedestrian"),
                                                                                       C("traffic_cone")}
    assert named_classes("The business district; carpets.") == set()
    assert named_classes("A bus parked in the car park.") == {C("bus")}
    assert names_exactly("Buses wait.", C("bus")) and not names_exactly("a car and a cone", C("car"))
    assert not names_exactly(None, C("car"))


@pytest.mark.slow
def test_evaluator_scores_ground_truth_as_prediction_at_its_maximum():
    """Would catch: caption boxes ignored in favour of the detections (Prediction.caption_boxes), captions paired
    with the wrong boxes, or labels not reaching class_named (runs the Java scorers: ~10 s)."""
    needs = DataNeeds(images=False, captions=True, tasks=("detection", "captioning"))
    batch = random_batch(needs, batch_size=2, seed=0, num_boxes=5)
    words = {i: CLASS_WORDS_FOR_TEST[i] for i in range(10)}
    batch.captions = [[f"a {words[int(l)]} number {j} on the {['left', 'right'][j % 2]} side, {i} samples in."
                       for j, l in enumerate(labels)] for i, labels in enumerate(batch.gt_labels)]
    ev = CaptioningEvaluator()
    far = torch.tensor([[500.0, 500.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]])
    preds = [Prediction(token=t, boxes=far.repeat(3, 1), scores=torch.ones(3), labels=torch.zeros(3, dtype=torch.long),
                        caption_boxes=b.clone(), captions=list(c))
             for t, b, c in zip(batch.tokens, batch.gt_boxes, batch.captions)]
    ev.update(preds, batch)
    m = ev.compute()
    for k in ("0.25", "0.5"):
        assert m[f"BLEU-4@{k}"] == pytest.approx(1.0, abs=1e-6) and m[f"METEOR@{k}"] == pytest.approx(1.0, abs=1e-6)
        assert m[f"ROUGE-L@{k}"] == pytest.approx(1.0) and m[f"CIDEr@{k}"] == pytest.approx(10.0, rel=1e-6)
        assert m[f"recall@{k}"] == 1.0 and m[f"class_named@{k}"] == 1.0
    assert not math.isnan(m["num_gt"]) and m["num_gt"] == 10


CLASS_WORDS_FOR_TEST = ("car", "truck", "bus", "trailer", "construction vehicle", "pedestrian", "motorcycle",
                        "bicycle", "traffic cone", "barrier")
