"""The localisation study's measurement on a tiny exported model: every rate is a share of the
held-out images, a hit is also within a cell, and the centre guess does not depend on the model."""

from __future__ import annotations

from bench.studies import localisation


def test_the_rates_are_shares_and_a_hit_is_within_a_cell(tiny_models_dir):
    results = {}
    for name in ("resnet18", "resnet20"):
        result, examples = localisation.measure(tiny_models_dir / name / "model.onnx", images=40)
        assert result["images"] == 40 and len(examples) == 8
        rates = ("top1", "peak_in_box", "peak_in_box_when_correct", "peak_within_a_cell_of_box", "centre_guess_in_box")
        assert all(0.0 <= result[key] <= 1.0 for key in rates)
        assert result["peak_within_a_cell_of_box"] >= result["peak_in_box"]
        results[name] = result
    # Both tiny models take 32 px crops of 37 px renders: the same held-out boxes, the same centre guess.
    assert results["resnet18"]["rendered_at"] == results["resnet20"]["rendered_at"] == 37
    assert results["resnet18"]["centre_guess_in_box"] == results["resnet20"]["centre_guess_in_box"]
    assert results["resnet20"]["map_size"] == [8, 8] and results["resnet18"]["map_size"] == [1, 1]
