import numpy as np
from PIL import Image
from report_run_builders import (
    N_SLIDES,
    SLIDE_H,
    SLIDE_W,
    TILE_PX,
    make_binary_run,
    make_survival_run,
    model_factory,
)

from wsi_mil.io.feature_sources import read_slide_bag
from wsi_mil.reports.heatmaps import make_heatmaps, plot_heatmap, score_overlay, select_slides
from wsi_mil.reports.runs import read_run
from wsi_mil.reports.tile_scores import (
    compute_tile_scores,
    load_fold_model,
    read_thumbnail,
    tile_size_level0_px,
)


def test_overlay_paints_each_tile_score_at_its_level0_position():
    thumb = np.zeros((100, 200, 3), np.uint8)   # slide 2000 x 1000 -> 10x downsample
    coords = np.array([[0, 0], [1000, 500]])
    overlay, norm = score_overlay(thumb.shape, coords, 200, np.array([0.0, 1.0]), (2000, 1000))
    assert overlay[:20, :20, 3].min() == 0.5 and overlay[50:70, 100:120, 3].min() == 0.5
    assert overlay[30:50, 30:90, 3].max() == 0           # no tile there
    assert (norm.vmin, norm.vmax) == (0.0, 1.0)
    low, high = overlay[5, 5, :3], overlay[60, 110, :3]
    assert not np.allclose(low, high)


def test_non_finite_tile_scores_stay_transparent():
    coords = np.array([[0, 0], [100, 0]])
    overlay, _ = score_overlay((10, 20, 3), coords, 100, np.array([np.nan, 2.0]), (200, 100))
    assert overlay[:, :10, 3].max() == 0 and overlay[:, 10:, 3].min() == 0.5


def test_heatmap_figure_draws_thumbnail_and_overlay(tmp_path):
    thumb = np.full((64, 96, 3), 200, np.uint8)
    fig = plot_heatmap(thumb, np.array([[0, 0], [480, 320]]), 160.0, np.array([0.2, 0.9]),
                       (960, 640), title="s0")
    assert len(fig.axes) == 3  # thumbnail, overlay, colour bar


def test_top_and_lowest_scored_slides_are_selected_from_one_repeat(tmp_path, rng):
    run = read_run(make_binary_run(tmp_path / "abmil", rng))
    chosen = select_slides(run.predictions, 2)
    r0 = run.predictions[run.predictions["repeat"] == 0].sort_values("score")
    assert [rank for rank, _ in chosen] == ["top", "top", "bottom", "bottom"]
    assert [row["slide_id"] for _, row in chosen] == (
        list(r0["slide_id"].iloc[::-1][:2]) + list(r0["slide_id"][:2]))


def test_fold_model_tile_scores_on_a_feature_bag(tmp_path, rng, tiling):
    run = read_run(make_binary_run(tmp_path / "abmil", rng))
    model = load_fold_model(run.model_path(0, 1), factory=model_factory())
    bag = read_slide_bag(tiling.features_dir / "s00.h5")
    scores = compute_tile_scores(model, bag.features)
    assert scores.shape == (len(bag.coords_level0),) and np.isfinite(scores).all()
    assert tile_size_level0_px(bag.coords_level0, bag.attrs) == TILE_PX
    assert tile_size_level0_px(bag.coords_level0) == TILE_PX  # from the grid step
    thumb, dims = read_thumbnail(tiling.slide_path, max_px=256)
    assert dims == (SLIDE_W, SLIDE_H) and max(thumb.shape[:2]) <= 256 and thumb.shape[2] == 3


def test_heatmaps_are_written_for_every_head_top_and_bottom(tmp_path, rng, tiling):
    for run_dir, slides in ((make_binary_run(tmp_path / "abmil", rng), tiling.slide_table),
                            (make_survival_run(tmp_path / "os", rng), None)):
        written, skipped = make_heatmaps(
            read_run(run_dir), tiling.features_dir, tmp_path / "figs" / run_dir.name,
            slides=slides, coords_dir=tiling.coords_dir, n_per_end=1,
            model_factory=model_factory(), thumbnail_px=256)
        assert skipped == []
        assert sorted(o.rank for o in written) == ["bottom", "top"]
        for out in written:
            with Image.open(out.path) as image:
                assert image.format == "PNG" and image.size[0] > 100
            assert out.slide_id in {f"s{i:02d}" for i in range(N_SLIDES)}


def test_heatmaps_list_why_a_slide_was_skipped(tmp_path, rng, tiling):
    run = read_run(make_binary_run(tmp_path / "abmil", rng))
    (run.run_dir / "models" / "r0_f0.pt").unlink()
    written, skipped = make_heatmaps(run, tmp_path / "nowhere", tmp_path / "figs",
                                     slides=tiling.slide_table, n_per_end=2,
                                     model_factory=model_factory())
    assert written == [] and len(skipped) == 4
    assert all("no feature file" in s or "no model file" in s for s in skipped)


def test_thumbnail_of_a_slide_without_mpp_still_works(tmp_path):
    from wsi_mil.testing.synthetic_slides import write_synthetic_slide

    slide = write_synthetic_slide(tmp_path / "nompp.tiff", width=512, height=384, tile_px=128,
                                  flavor="generic", with_mpp=False, n_levels=1)
    thumb, dims = read_thumbnail(slide.path, max_px=128)
    assert dims == (512, 384) and thumb.shape == (96, 128, 3)
