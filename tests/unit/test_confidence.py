"""Confidence from temperature-scaled softmax, computed the cheap way, equals the full one."""

import numpy as np

from edgeserve.wire.confidence import softmax, top_class_confidence


def test_top_class_confidence_equals_the_max_of_the_full_softmax():
    logits = np.random.default_rng(0).normal(size=(32, 10)).astype(np.float32) * 4
    for temperature in (1.0, 0.5, 2.5):
        top, confidence = top_class_confidence(logits, temperature)
        probs = softmax(logits, temperature)
        np.testing.assert_array_equal(top, probs.argmax(axis=1))
        np.testing.assert_allclose(confidence, probs.max(axis=1), rtol=1e-12)


def test_higher_temperature_lowers_confidence():
    logits = np.array([[4.0, 1.0, 0.0]])
    assert top_class_confidence(logits, 2.0)[1][0] < top_class_confidence(logits, 1.0)[1][0]


def test_huge_logits_do_not_overflow():
    _, confidence = top_class_confidence(np.array([[1e4, -1e4, 0.0]]))
    assert confidence[0] == 1.0
