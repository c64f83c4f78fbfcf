"""Tiny randomly initialised encoders saved in the on-disk format of the real weights.

Each ``save_tiny_*`` writes into ``folder`` and returns ``dict(name=..., weights=...)``
so that ``create_encoder(**info)`` loads it through the real loading code:

- timm families (uni, uni2_h, virchow2, h_optimus_0, gigapath, timm:<name>):
  a state-dict file (``model.safetensors`` or ``pytorch_model.bin``) and a
  ``wsi_mil_arch.json`` beside it with the small architecture;
- ``ctranspath``: ``ctranspath.pth`` = ``{'model': state_dict}`` in the published
  (timm 0.5.4) key layout, head included;
- ``phikon`` (iBOT): ``ibot_vit_base_pancan.pth`` = ``{'teacher': {'backbone.*': ...}}``;
- transformers (phikon, phikon_v2, plip, hf:<folder>): a ``save_pretrained`` folder;
- open_clip (biomedclip, open_clip:hf-hub:...): ``open_clip_config.json`` +
  ``open_clip_pytorch_model.bin`` (+ tokenizer files); unimed_clip: a bare checkpoint;
- resnet50 / resnet50_trunc: a torchvision-layout state dict (narrow bottlenecks,
  same 1024 / 2048 output widths).

``save_hub_cache(cache_dir, repo_id, folder)`` turns any such folder into a
Hugging Face hub cache entry (``models--org--name/snapshots/<hash>/`` +
``refs/main``); use it with ``HF_HUB_OFFLINE=1`` and ``HF_HUB_CACHE=cache_dir``.
``TINY_SAVERS`` maps every registered encoder name to its saver.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

TINY_VIT = dict(embed_dim=32, depth=2, num_heads=2)
TINY_SWIN = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2))
TINY_RESNET = dict(layers=[1, 1, 1, 1], width_per_group=8)
_BERT_WORDS = ("tumor", "normal", "tissue", "an", "image", "of", "a", "photo", "stroma",
               "lymphocytes", "adipose", "mucosa", "debris", "muscle", "background", "h", "&", "e")


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1))


def _save_state(state: dict[str, torch.Tensor], path: Path) -> Path:
    state = {k: v.detach().clone().contiguous() for k, v in state.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def _seed(seed: int) -> None:
    torch.manual_seed(seed)


# --- timm families ------------------------------------------------------------------
def save_tiny_timm(folder: str | Path, name: str = "uni", fmt: str = "safetensors",
                   seed: int = 0) -> dict[str, str]:
    """A tiny model of the registered timm encoder ``name`` (uni, virchow2, ...)."""
    from wsi_mil.encoders.timm_vit import SPECS, build_timm_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spec = SPECS[name]
    _seed(seed)
    model = build_timm_model(spec.arch, {**spec.model_args, **TINY_VIT})
    filename = "model.safetensors" if fmt == "safetensors" else "pytorch_model.bin"
    path = _save_state(model.state_dict(), folder / filename)
    _write_json(folder / "wsi_mil_arch.json", TINY_VIT)
    return dict(name=name, weights=str(path))


def save_tiny_timm_generic(folder: str | Path, arch: str = "vit_small_patch16_224",
                           seed: int = 0) -> dict[str, str]:
    """``timm:<arch>`` with a tiny ViT state dict (with a 10-class head, dropped on load)."""
    import timm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _seed(seed)
    model = timm.create_model(arch, pretrained=False, num_classes=10, **TINY_VIT)
    path = _save_state(model.state_dict(), folder / "model.safetensors")
    _write_json(folder / "wsi_mil_arch.json", TINY_VIT)
    return dict(name=f"timm:{arch}", weights=str(path))


def tiny_ctranspath_model(seed: int = 0) -> torch.nn.Module:
    from wsi_mil.encoders.ctranspath import build_ctranspath

    _seed(seed)
    model = build_ctranspath(TINY_SWIN)
    for m in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def to_old_ctranspath_layout(model: torch.nn.Module, n_classes: int = 1000) -> dict[str, Any]:
    """The timm 0.5.4 layout of the published ctranspath.pth, from a timm >= 0.9 model."""
    state: dict[str, torch.Tensor] = {}
    pattern = re.compile(r"^layers\.(\d+)\.downsample\.")
    for key, value in model.state_dict().items():
        state[pattern.sub(lambda m: f"layers.{int(m.group(1)) - 1}.downsample.", key)] = value
    for name, buf in model.named_buffers():  # persistent in the old layout
        if name.endswith(("relative_position_index", "attn_mask")):
            state[name] = buf
    state["head.weight"] = torch.randn(n_classes, model.num_features) * 0.01
    state["head.bias"] = torch.zeros(n_classes)
    return {"model": state}


def save_tiny_ctranspath(folder: str | Path, seed: int = 0) -> dict[str, str]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = tiny_ctranspath_model(seed)
    torch.save(to_old_ctranspath_layout(model), folder / "ctranspath.pth")
    _write_json(folder / "wsi_mil_arch.json", {k: list(v) if isinstance(v, tuple) else v
                                               for k, v in TINY_SWIN.items()})
    return dict(name="ctranspath", weights=str(folder / "ctranspath.pth"))


def save_tiny_resnet(folder: str | Path, name: str = "resnet50_trunc",
                     seed: int = 0) -> dict[str, str]:
    from torchvision.models.resnet import Bottleneck, ResNet

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _seed(seed)
    args = dict(TINY_RESNET)
    model = ResNet(Bottleneck, args.pop("layers"), **args)
    _save_state(model.state_dict(), folder / "model.safetensors")  # hub timm/resnet50.tv_in1k
    path = _save_state(model.state_dict(), folder / "resnet50-tiny.pth")  # a torchvision file
    _write_json(folder / "wsi_mil_arch.json", TINY_RESNET)
    return dict(name=name, weights=str(path))


# --- phikon: iBOT teacher checkpoint and transformers folders -------------------------
def tiny_ibot_vit(seed: int = 0) -> torch.nn.Module:
    from wsi_mil.encoders.hf_vit import IBOT_ARCH, IBOT_ARGS
    from wsi_mil.encoders.timm_vit import build_timm_model

    _seed(seed)
    return build_timm_model(IBOT_ARCH, {**IBOT_ARGS, **TINY_VIT}).eval()


def save_tiny_ibot(folder: str | Path, seed: int = 0) -> dict[str, str]:
    """The reference's ``ibot_vit_base_pancan.pth`` layout: teacher/student, ``backbone.`` keys."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = tiny_ibot_vit(seed)
    dim = TINY_VIT["embed_dim"]
    teacher = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    teacher["backbone.masked_embed"] = torch.zeros(1, dim)
    teacher["head.mlp.0.weight"] = torch.randn(64, dim)
    teacher["head.last_layer.weight_g"] = torch.ones(100, 1)
    student = {f"module.{k}": v + 0.5 for k, v in teacher.items()}
    torch.save({"teacher": teacher, "student": student, "epoch": 100},
               folder / "ibot_vit_base_pancan.pth")
    _write_json(folder / "wsi_mil_arch.json", TINY_VIT)
    return dict(name="phikon", weights=str(folder / "ibot_vit_base_pancan.pth"))


def _preprocessor_config(folder: Path, mean, std, resample: int = 3) -> None:
    _write_json(folder / "preprocessor_config.json", {
        "do_normalize": True, "do_resize": True, "image_mean": list(mean), "image_std": list(std),
        "resample": resample, "size": {"height": 224, "width": 224},
    })


def save_tiny_hf_vit(folder: str | Path, name: str = "phikon", seed: int = 0) -> dict[str, str]:
    """``save_pretrained`` folder of a tiny ViTModel (phikon, or ``hf:<folder>``)."""
    from transformers import ViTConfig, ViTModel

    folder = Path(folder)
    _seed(seed)
    cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, image_size=224, patch_size=16)
    ViTModel(cfg, add_pooling_layer=False).save_pretrained(str(folder))
    _preprocessor_config(folder, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), resample=2)
    return dict(name=name if name != "hf" else f"hf:{folder}", weights=str(folder))


def save_tiny_dinov2(folder: str | Path, seed: int = 0) -> dict[str, str]:
    """``save_pretrained`` folder of a tiny Dinov2Model (phikon_v2 layout)."""
    from transformers import Dinov2Config, Dinov2Model

    folder = Path(folder)
    _seed(seed)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                       image_size=224, patch_size=16)
    Dinov2Model(cfg).save_pretrained(str(folder))
    _preprocessor_config(folder, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    return dict(name="phikon_v2", weights=str(folder))


# --- text towers and CLIP-style models ------------------------------------------------
def save_bert_tokenizer(folder: str | Path) -> dict[str, int]:
    """A WordPiece tokenizer of ~100 tokens (pathology words, letters, digits)."""
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_BERT_WORDS,
             *"abcdefghijklmnopqrstuvwxyz0123456789.,-", *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz")]
    vocab_ids = {tok: i for i, tok in enumerate(dict.fromkeys(vocab))}
    BertTokenizerFast(vocab=vocab_ids).save_pretrained(str(folder))  # transformers >= 5 API
    return vocab_ids


def save_tiny_bert(folder: str | Path, seed: int = 0) -> Path:
    """A tiny BERT (config + weights + WordPiece tokenizer) folder, an HF text tower."""
    from transformers import BertConfig, BertModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = save_bert_tokenizer(folder)
    _seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg, add_pooling_layer=False).save_pretrained(str(folder))
    return folder


def _tiny_open_clip_cfg(text_folder: Path) -> dict[str, Any]:
    return {
        "embed_dim": 24,
        "vision_cfg": {"image_size": 224, "layers": 1, "width": 32, "head_width": 16,
                       "patch_size": 16},
        "text_cfg": {"hf_model_name": str(text_folder), "hf_tokenizer_name": str(text_folder),
                     "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                     "context_length": 32},
    }


def save_tiny_open_clip(folder: str | Path, name: str = "biomedclip", seed: int = 0) -> dict[str, str]:
    """open_clip folder (BiomedCLIP layout): config json, checkpoint, tokenizer files."""
    from wsi_mil.encoders.clip import build_open_clip

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text_folder = save_tiny_bert(folder / "text_tower", seed)
    for f in text_folder.iterdir():  # tokenizer files beside the config, as on the hub
        if f.name.startswith(("tokenizer", "vocab", "special_tokens")):
            shutil.copy(f, folder / f.name)
    model_cfg = _tiny_open_clip_cfg(text_folder)
    _write_json(folder / "open_clip_config.json", {
        "model_cfg": model_cfg,
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                           "std": [0.26862954, 0.26130258, 0.27577711]},
    })
    _seed(seed)
    model = build_open_clip(model_cfg)
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return dict(name=name, weights=str(folder))


def save_tiny_unimed_clip(folder: str | Path, seed: int = 0) -> dict[str, str]:
    """UniMed-CLIP as a bare checkpoint file + ``wsi_mil_arch.json`` (tiny towers)."""
    from wsi_mil.encoders.clip import UNIMED_CLIP_CFG, _deep_merge, build_open_clip

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text_folder = save_tiny_bert(folder / "text_tower", seed)
    overrides = _tiny_open_clip_cfg(text_folder)
    overrides["embed_dim"] = 512
    _seed(seed)
    model = build_open_clip(_deep_merge(UNIMED_CLIP_CFG, overrides))
    torch.save(model.state_dict(), folder / "unimed_clip_vit_b16.pt")
    _write_json(folder / "wsi_mil_arch.json", overrides)
    return dict(name="unimed_clip", weights=str(folder / "unimed_clip_vit_b16.pt"))


def save_tiny_open_clip_builtin(folder: str | Path, model_name: str = "ViT-B-16",
                                seed: int = 0) -> dict[str, str]:
    """``open_clip:<built-in name>`` with a checkpoint file and tiny towers."""
    import open_clip

    from wsi_mil.encoders.clip import _deep_merge, build_open_clip

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    overrides = {"embed_dim": 24, "vision_cfg": {"layers": 1, "width": 32, "head_width": 16},
                 "text_cfg": {"layers": 1, "width": 32, "heads": 2}}
    _seed(seed)
    model = build_open_clip(_deep_merge(open_clip.get_model_config(model_name), overrides))
    _save_state(model.state_dict(), folder / "open_clip_model.safetensors")
    _write_json(folder / "wsi_mil_arch.json", overrides)
    return dict(name=f"open_clip:{model_name}", weights=str(folder / "open_clip_model.safetensors"))


def _byte_unicode() -> list[str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def save_clip_tokenizer(folder: str | Path) -> dict[str, int]:
    """A byte-level BPE CLIP tokenizer without merges (514 tokens; <|startoftext|> = 512)."""
    from transformers import CLIPTokenizer

    chars = _byte_unicode()
    vocab = {tok: i for i, tok in enumerate(chars + [c + "</w>" for c in chars]
                                            + ["<|startoftext|>", "<|endoftext|>"])}
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(str(folder))  # transformers >= 5 API
    return vocab


def save_tiny_plip(folder: str | Path, seed: int = 0) -> dict[str, str]:
    """transformers CLIPModel folder (PLIP layout) with a byte-level BPE tokenizer."""
    from transformers import CLIPConfig, CLIPModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = save_clip_tokenizer(folder)
    _seed(seed)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77,
                         bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                         pad_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=224, patch_size=32),
        projection_dim=24,
    )
    CLIPModel(cfg).save_pretrained(str(folder))
    _preprocessor_config(folder, (0.48145466, 0.4578275, 0.40821073),
                         (0.26862954, 0.26130258, 0.27577711))
    return dict(name="plip", weights=str(folder))


# --- hub cache --------------------------------------------------------------------------
def save_hub_cache(cache_dir: str | Path, repo_id: str, folder: str | Path,
                   revision: str | None = None) -> Path:
    """Copy ``folder``'s files into a hand-built HF hub cache; return the snapshot folder.

    Layout: ``<cache_dir>/models--<org>--<name>/snapshots/<hash>/<files>`` and
    ``refs/main`` holding ``<hash>``, as ``huggingface_hub`` writes it.
    """
    cache_dir, folder = Path(cache_dir), Path(folder)
    commit = revision or hashlib.sha1(repo_id.encode()).hexdigest()
    repo_dir = cache_dir / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        if f.is_file():
            shutil.copy(f, snapshot / f.name)
        elif f.is_dir():
            shutil.copytree(f, snapshot / f.name, dirs_exist_ok=True)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return snapshot


def _timm_saver(name: str) -> Callable[..., dict[str, str]]:
    return lambda folder, **kw: save_tiny_timm(folder, name, **kw)


TINY_SAVERS: dict[str, Callable[..., dict[str, str]]] = {
    "uni": _timm_saver("uni"),
    "uni2_h": _timm_saver("uni2_h"),
    "virchow2": _timm_saver("virchow2"),
    "h_optimus_0": _timm_saver("h_optimus_0"),
    "gigapath": _timm_saver("gigapath"),
    "ctranspath": save_tiny_ctranspath,
    "resnet50_trunc": lambda folder, **kw: save_tiny_resnet(folder, "resnet50_trunc", **kw),
    "resnet50": lambda folder, **kw: save_tiny_resnet(folder, "resnet50", **kw),
    "phikon": save_tiny_hf_vit,
    "phikon_v2": save_tiny_dinov2,
    "plip": save_tiny_plip,
    "biomedclip": save_tiny_open_clip,
    "unimed_clip": save_tiny_unimed_clip,
}


def save_tiny_encoder(name: str, folder: str | Path, **kw: Any) -> dict[str, str]:
    """Tiny weights for registered encoder ``name``; ``create_encoder(**result)`` loads them."""
    return TINY_SAVERS[name](folder, **kw)


# short aliases named in the issue
save_tiny_vit = save_tiny_timm
save_tiny_clip = save_tiny_open_clip


# --- official checkpoint layouts (manifests) ---------------------------------------------
MANIFEST_DIR = Path(__file__).parent / "manifests"
TINY_BERT_FOLDER = "<TINY_BERT_FOLDER>"  # placeholder in manifests, replaced by a local folder


def manifest_names() -> list[str]:
    """Encoders with a checked-in official-layout manifest."""
    return sorted(p.stem for p in MANIFEST_DIR.glob("*.json"))


def load_manifest(name: str) -> dict[str, Any]:
    """The manifest of ``name`` (see ``dev_tools/make_encoder_manifests.py``)."""
    return json.loads((MANIFEST_DIR / f"{name}.json").read_text())


def random_state(layout: dict[str, list], seed: int = 0,
                 device: str | None = None) -> dict[str, torch.Tensor]:
    """Random tensors with exactly ``layout``'s names, shapes and dtypes.

    Floats ~ N(0, 0.02) (BatchNorm variances in [0.5, 1.5]); integer buffers are
    0 / ``arange`` (positions). ``device="meta"``: shapes only, no memory.
    """
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, (shape, dtype_name) in layout.items():
        dtype = getattr(torch, dtype_name)
        if device == "meta":
            out[key] = torch.empty(shape, dtype=dtype, device="meta")
        elif dtype.is_floating_point:
            value = torch.randn(shape, generator=gen) * 0.02
            if key.endswith("running_var"):
                value = torch.rand(shape, generator=gen) + 0.5
            out[key] = value.to(dtype)
        elif key.endswith("position_ids") and shape:
            out[key] = torch.arange(shape[-1]).expand(shape).clone().to(dtype)
        else:
            out[key] = torch.zeros(shape, dtype=dtype)
    return out


def nest_official(manifest: dict[str, Any], state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Wrap ``state`` as the released file does (``{"state_dict": ...}``, ``{"model": ...}``)."""
    obj: dict[str, Any] = state
    for key in reversed(manifest.get("nesting", [])):
        obj = {key: obj}
    if manifest.get("extra_top_level"):
        import argparse

        extra = {k: argparse.Namespace(**v["__namespace__"])
                 if isinstance(v, dict) and "__namespace__" in v else v
                 for k, v in manifest["extra_top_level"].items()}
        obj = {**extra, **obj}
    return obj


def _fill(obj: Any, folder: str) -> Any:
    if isinstance(obj, dict):
        return {k: _fill(v, folder) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fill(v, folder) for v in obj]
    return folder if obj == TINY_BERT_FOLDER else obj


def save_tiny_bert_tower(folder: str | Path, cfg: dict[str, Any]) -> Path:
    """A config-only BERT folder (+ WordPiece tokenizer) for an HF text tower of shape ``cfg``."""
    from transformers import BertConfig

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_bert_tokenizer(folder)
    BertConfig(**cfg).save_pretrained(str(folder))
    return folder


def save_official_tiny(name: str, folder: str | Path, seed: int = 0) -> dict[str, Any]:
    """A random checkpoint in ``name``'s OFFICIAL layout at the manifest's tiny size.

    Key names, nesting and file name are the released checkpoint's (from the
    manifest); widths and depths are the manifest's ``tiny`` ones. Returns
    ``dict(name=..., weights=..., arch_overrides=...)`` for ``create_encoder``.
    """
    manifest = load_manifest(name)
    tiny = manifest["tiny"]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = random_state(tiny["keys"], seed)
    obj = nest_official(manifest, state)
    path = folder / manifest["file"]
    if path.suffix == ".safetensors":
        _save_state(obj, path)
    else:
        torch.save(obj, path)
    for fname, content in tiny.get("files", {}).items():
        _write_json(folder / fname, content)
    arch = tiny.get("wsi_mil_arch")
    text = tiny.get("tiny_kwargs", {}).get("text")
    if text is not None and "vocab_size" in text:  # an HF BERT text tower
        bert = save_tiny_bert_tower(folder / "text_tower", text)
        arch = _fill(arch, str(bert))
    if name == "plip":
        save_clip_tokenizer(folder)
    weights: Path = path
    if name in ("phikon", "phikon_v2", "plip"):
        weights = folder  # a save_pretrained folder
    extra_setup = _EXTRA_SETUP.get(name)
    if extra_setup is not None:
        extra = extra_setup(folder, manifest, arch)
        weights, arch = extra.get("weights", weights), extra.get("arch", arch)
    return dict(name=manifest.get("encoder_name", name), weights=str(weights), arch_overrides=arch)


def _biomedclip_folder(folder: Path, manifest: dict, arch: dict) -> dict[str, Any]:
    """The hub repo layout: open_clip_config.json + tokenizer files beside the weights."""
    bert = folder / "text_tower"
    for f in bert.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "special_tokens")):
            shutil.copy(f, folder / f.name)
    model_cfg = {
        "embed_dim": 512,
        "vision_cfg": {"timm_model_name": "vit_base_patch16_224", "timm_model_pretrained": False,
                       "timm_pool": "", "timm_proj": "linear", "image_size": 224},
        "text_cfg": {"hf_model_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                     "hf_tokenizer_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                     "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                     "context_length": 256},
    }
    tiny_cfg = json.loads(json.dumps(model_cfg))
    tiny_cfg["embed_dim"] = arch["embed_dim"]
    tiny_cfg["vision_cfg"].update(arch["vision_cfg"])
    tiny_cfg["text_cfg"].update(hf_model_name=str(bert), hf_tokenizer_name=str(bert),
                                context_length=arch["text_cfg"]["context_length"])
    _write_json(folder / "open_clip_config.json", {
        "model_cfg": tiny_cfg,
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                           "std": [0.26862954, 0.26130258, 0.27577711]},
    })
    return {"weights": folder, "arch": None}


_SPM_WORDS = ("tumor normal tissue an image of a photo stroma lymphocytes adipose mucosa debris "
              "muscle background histopathology lung adenocarcinoma carcinoma squamous cell h&e")


def save_tiny_spm(path: str | Path) -> Path:
    """A tiny sentencepiece (unigram) model trained on pathology words: MUSK's tokenizer.spm."""
    import os
    import tempfile

    import sentencepiece as spm

    path = Path(path)
    words = _SPM_WORDS.split()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(" ".join(words[i:] + words[:i]) for i in range(len(words))))
        prefix = os.path.join(tmp, "tok")
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=prefix, vocab_size=60, model_type="unigram",
            character_coverage=1.0, bos_id=-1, eos_id=-1, unk_id=0, pad_id=-1,
            hard_vocab_limit=False, minloglevel=2)
        shutil.copy(prefix + ".model", path)
    return path


def save_tiny_conch_tokenizer(path: str | Path) -> Path:
    """A word-level ``tokenizers`` file with CONCH's special tokens and template
    (``<start_of_text> ... <end_of_text>``, ``<pad>`` = 0), lower-casing like CONCH's."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    words = sorted(set(_SPM_WORDS.split()) | set(_BERT_WORDS))
    vocab = {"<pad>": 0, "<start_of_text>": 1, "<end_of_text>": 2, "<unk>": 3}
    vocab.update({w: i + 4 for i, w in enumerate(words)})
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<start_of_text> $A <end_of_text>",
        special_tokens=[("<start_of_text>", 1), ("<end_of_text>", 2)])
    tok.save(str(path))
    return Path(path)


def _musk_folder(folder: Path, manifest: dict, arch: dict) -> dict[str, Any]:
    save_tiny_spm(folder / "tokenizer.spm")
    return {}


def _conch_folder(folder: Path, manifest: dict, arch: dict) -> dict[str, Any]:
    save_tiny_conch_tokenizer(folder / "conch_byte_level_bpe_uncased.json")
    return {}


_EXTRA_SETUP: dict[str, Callable[..., dict[str, Any]]] = {
    "biomedclip": _biomedclip_folder, "musk": _musk_folder, "conch": _conch_folder}
