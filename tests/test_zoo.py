"""Every model of the zoo trains through the train CLI; starting from torchvision weights works."""

import dataclasses
import json

import numpy as np
import pytest

from strokevision_jax import models, presets, train

TINY_CLIP = dict(num_frames=4, resize=(36, 48), crop=(32, 32))
# Skeleton models: 8 frames; PoseConv3D's heatmaps 24 x 24.
TINY_SKELETON = dict(num_frames=8, compact_size=(24, 24), compact_eval_size=(24, 24))


@pytest.fixture
def tiny_presets(monkeypatch):
    """The real presets with 4 x 32 x 32 clips (or 8-frame skeletons) on synthetic_small, one
    epoch of batch 16."""
    real = presets.recipe

    def tiny(model, preset):
        recipe = real(model, preset)
        if recipe.video is not None and recipe.skeleton is not None:  # two pathways: the heatmaps
            recipe = presets.with_clip(recipe, **TINY_CLIP)          # a quarter of the crop, 2x the frames
            recipe = recipe.replace(skeleton=dataclasses.replace(
                recipe.skeleton, num_frames=8, compact_size=(8, 8), compact_eval_size=(8, 8)))
        elif recipe.video is not None:
            recipe = presets.with_clip(recipe, **TINY_CLIP)
        else:
            recipe = recipe.replace(skeleton=dataclasses.replace(recipe.skeleton, **TINY_SKELETON))
        return recipe.replace(dataset="synthetic_small", epochs=1, batch_size=16)

    monkeypatch.setattr(presets, "recipe", tiny)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_trains_through_the_cli(name, tiny_presets, small_data_dir, tmp_path):
    workdir = tmp_path / name
    code = train.main([f"--model={name}", "--preset=cpu", f"--workdir={workdir}",
                       f"--data_dir={small_data_dir}"])
    assert code == 0
    report = json.loads((workdir / "report.json").read_text())
    assert report["run"]["model"] == name
    assert np.isfinite(report["history"][0]["train_loss"])
    assert sum(map(sum, report["test"]["confusion_matrix"])) == report["test"]["num_examples"] > 0


def test_every_model_has_both_presets():
    for name in models.MODELS:
        for preset in presets.PRESETS:
            recipe = presets.recipe(name, preset)
            assert recipe.model == name and recipe.preset == preset


def test_pretrained_and_init_from(tiny_presets, small_data_dir, tmp_path, capsys):
    torch = pytest.importorskip("torch", reason="needs torch to write a torchvision checkpoint")
    torchvision = pytest.importorskip("torchvision")
    from checkpoints_convert.__main__ import main as convert_main

    source = torchvision.models.video.r3d_18()  # 400 classes, as the Kinetics weights
    src = tmp_path / "r3d_18.pth"
    torch.save(source.state_dict(), src)

    # The model the run starts from: torchvision's weights, a fresh 4-class head.
    recipe = presets.recipe("r3d_18", "cpu")
    model = train.create_model(recipe, 4, seed=0, init=str(src), log=print)
    expected = source.stem[0].weight.detach().numpy().transpose(2, 3, 4, 1, 0)
    np.testing.assert_array_equal(np.asarray(model.stem[0].kernel), expected)
    assert model.fc.kernel.shape == (512, 4)
    out = capsys.readouterr().out
    assert "not applied" in out and "base_width" in out  # the cpu preset's slimming is dropped

    assert train.main(["--model=r3d", "--preset=cpu", f"--workdir={tmp_path / 'a'}",
                       f"--data_dir={small_data_dir}", f"--pretrained={src}"]) == 0
    assert convert_main(["--model=r3d_18", f"--src={src}", f"--out={tmp_path / 'converted'}"]) == 0
    assert train.main(["--model=r3d", "--preset=cpu", f"--workdir={tmp_path / 'b'}",
                       f"--data_dir={small_data_dir}", f"--init_from={tmp_path / 'converted'}"]) == 0
    a = json.loads((tmp_path / "a" / "report.json").read_text())
    b = json.loads((tmp_path / "b" / "report.json").read_text())
    # Same weights, same fresh head (same seed): the two runs are the same run.
    assert a["history"][0]["train_loss"] == pytest.approx(b["history"][0]["train_loss"], rel=1e-4)

    # A converted checkpoint of another model is refused with a message.
    assert train.main(["--model=mc3", "--preset=cpu", f"--workdir={tmp_path / 'c'}",
                       f"--data_dir={small_data_dir}", f"--init_from={tmp_path / 'converted'}"]) == 2
    assert "not 'mc3_18'" in capsys.readouterr().err
