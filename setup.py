"""wsi_mil: tile, encode and benchmark whole-slide images with MIL heads."""
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = {}
exec((here / "wsi_mil" / "version.py").read_text(), version)

setup(
    name="wsi_mil",
    version=version["__version__"],
    description=(
        "Whole-slide image pipeline: tiling, frozen-encoder feature extraction, "
        "nested cross-validation of MIL heads, results and reports."
    ),
    long_description=(here / "README.md").read_text() if (here / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["wsi_mil", "wsi_mil.*"]),
    package_data={"wsi_mil": ["conf/*.yaml", "conf/**/*.yaml", "testing/manifests/*.json"]},
    include_package_data=True,
    install_requires=[
        # torch 2.13 CPU wheels break torchvision (needed by timm / open_clip):
        # pin the pair that installs together.
        "torch==2.14.1",
        "torchvision==0.29.1",
        "numpy>=1.24",
        "openslide-python>=1.4",
        "openslide-bin>=4.0",
        "tifffile>=2023.7",
        "imagecodecs>=2023.7",
        "simplejpeg>=1.7",  # strict libjpeg-turbo decoding of stored tiles (warnings are errors)
        "scikit-image>=0.21",
        "scipy>=1.10",
        "h5py>=3.9",
        "pandas>=2.0",
        "scikit-learn>=1.3",
        "lifelines>=0.27",
        "scikit-survival>=0.23",
        "hydra-core>=1.3",
        "hydra-joblib-launcher>=1.2",
        "omegaconf>=2.3",
        "loguru>=0.7",
        "tqdm>=4.65",
        "einops>=0.7",
        "nystrom-attention>=0.0.11",
        "timm>=1.0",
        "transformers>=4.40",
        "open_clip_torch>=2.24",
        "safetensors>=0.4",
        "sentencepiece>=0.2",  # MUSK text side (XLM-R sentencepiece tokenizer)
        "huggingface_hub>=0.23",
        "matplotlib>=3.7",
        "pillow>=10",
    ],
    extras_require={
        "dev": ["pytest>=7.4", "pytest-timeout>=2.2", "ruff>=0.4"],
        "slurm": ["hydra-submitit-launcher>=1.2"],
    },
    entry_points={"console_scripts": ["wsi-mil=wsi_mil.cli.main:main"]},
)
