"""CUDA paths (autocast, pinned memory, channels-last): `pytest -m gpu` on a machine with a GPU."""
import numpy as np
import pytest
import torch

from wsi_mil.encoders import create_encoder
from wsi_mil.models import create_model, list_models
from wsi_mil.testing.tiny_models import save_tiny_timm_generic

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_a_tiny_vit_on_cuda_matches_cpu_features(tmp_path, precision):
    info = save_tiny_timm_generic(tmp_path / "vit")
    cpu = create_encoder(info["name"], weights=info["weights"], device="cpu")
    gpu = create_encoder(info["name"], weights=info["weights"], device="cuda", precision=precision)
    tiles = torch.randint(0, 255, (8, 224, 224, 3), dtype=torch.uint8)
    with torch.inference_mode():
        want = cpu(cpu.preprocess(tiles)).numpy()
        got = gpu(gpu.preprocess(tiles.cuda())).float().cpu().numpy()
    tol = 1e-3 if precision == "fp32" else 5e-2
    np.testing.assert_allclose(got, want, atol=tol * np.abs(want).max(), rtol=tol)


@pytest.mark.parametrize("name", list_models())
def test_every_head_runs_masked_batches_on_cuda(name):
    model = create_model(name, in_dim=64, n_outputs=3).cuda().eval()
    x = torch.randn(4, 300, 64, device="cuda")
    mask = torch.ones(4, 300, dtype=torch.bool, device="cuda")
    mask[1, 100:] = False
    with torch.inference_mode():
        out = model(x, mask)
        alone = model(x[1:2, :100], mask[1:2, :100])
    assert out.shape == (4, 3) and torch.isfinite(out).all()
    torch.testing.assert_close(out[1:2], alone, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_batched_cv_on_cuda_agrees_with_cpu(tmp_path, precision):
    """The batched engine's stacked models on the GPU, fp32 and bf16 (autocast), against the CPU fp32 run."""
    import json

    from wsi_mil.cv.engine import CVSettings, run_cv
    from wsi_mil.data.bags import BagStore
    from wsi_mil.data.cohort import read_cohort
    from wsi_mil.data.folds import make_fold_plan
    from wsi_mil.testing.synthetic_cohort import write_synthetic_cohort

    syn = write_synthetic_cohort(tmp_path / "data", n_patients=16, dim=32, n_tiles=(6, 40), seed=2)
    cohort = read_cohort(syn.cohort_csv, "classification")
    store = BagStore.from_dir(syn.features_dir, cohort.slide_ids)
    plan = make_fold_plan(cohort, 3, 0, 1, seed=1)
    scores = {}
    for device, prec in (("cpu", "fp32"), ("cuda", precision)):
        settings = CVSettings("classification", "abmil", mode="kfold", epochs=3, batch_size=4, n_tiles=16,
                              device=device, precision=prec)
        scores[device] = run_cv(cohort, store, plan, settings, tmp_path / device).predictions.score.to_numpy()
        assert json.loads((tmp_path / device / "summary.json").read_text())["precision"] == prec
    np.testing.assert_allclose(scores["cuda"], scores["cpu"], atol=1e-4 if precision == "fp32" else 5e-2)
