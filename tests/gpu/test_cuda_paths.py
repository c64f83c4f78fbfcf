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
