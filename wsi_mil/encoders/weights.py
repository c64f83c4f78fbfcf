"""Where encoder weights come from, and how they are read.

``resolve_weights`` turns the user's ``weights=`` value into local files:

- ``None``: the model's default Hugging Face hub id;
- ``"hf-hub:org/name"``, ``"hf_hub:org/name"`` or ``"org/name"`` (when no such local
  path exists): a hub id;
- a local file (``.safetensors``, ``.bin``, ``.pth``, ``.pt``);
- a local folder (``save_pretrained`` output, a hub snapshot, an open_clip folder).

Hub downloads go through ``huggingface_hub`` and honour, read at call time,
``HF_TOKEN`` (gated models), ``HF_HUB_OFFLINE=1`` (cache only), ``HF_HOME`` and
``HF_HUB_CACHE`` (cache location). A missing or gated weight raises
:class:`WeightsNotFoundError` naming the model, the hub id and the ways to
supply it. Files are read with safetensors or ``torch.load(weights_only=True)``
and hashed with sha256 (recorded in every feature file).

Architecture overrides (tests, custom checkpoints): a JSON file named
``wsi_mil_arch.json`` next to the weights (in the weights folder, or in the
folder of a weights file) holds keyword arguments merged into the family's
architecture (e.g. ``{"embed_dim": 32, "depth": 2}``); an explicit
``create_encoder(..., arch_overrides=...)`` wins over the file.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from loguru import logger

from wsi_mil.errors import FileFormatError, WeightsNotFoundError

ARCH_FILE = "wsi_mil_arch.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")
DEFAULT_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_PREFERRED_IN_FOLDER = (
    "model.safetensors", "open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
    "pytorch_model.bin", "open_clip_pytorch_model.bin", "model.pth", "pytorch_model.pth",
)


@dataclass(frozen=True)
class ResolvedWeights:
    """Local weights: ``path`` is a file or a folder, ``files`` the hashed weight files."""

    path: Path
    files: tuple[Path, ...]
    source: str  # "local:<path>" or "hub:<repo_id>"
    sha256: str

    @property
    def is_dir(self) -> bool:
        return self.path.is_dir()

    @property
    def folder(self) -> Path:
        return self.path if self.path.is_dir() else self.path.parent

    @property
    def file(self) -> Path:
        """The single weight file (FileFormatError if sharded)."""
        if len(self.files) != 1:
            raise FileFormatError(f"expected one weight file in {self.path}, found {len(self.files)}")
        return self.files[0]


# --- environment ----------------------------------------------------------------
def hub_cache_dir() -> str | None:
    """HF_HUB_CACHE, else HF_HOME/hub, else None (huggingface_hub's default), read now."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return None


def hub_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in ("1", "on", "yes", "true")


def how_to_supply(name: str, hub_id: str | None) -> str:
    hub = (
        f"request access on https://huggingface.co/{hub_id} if it is gated, then log in with "
        f"`huggingface-cli login` (or `hf auth login`) or export HF_TOKEN=<token>; "
        f"unset HF_HUB_OFFLINE or pre-fill the cache (HF_HOME / HF_HUB_CACHE) with hub id {hub_id!r}"
        if hub_id
        else "this model has no default hub id"
    )
    return (
        f"To supply weights for encoder {name!r}: pass weights=/path/to/file_or_folder "
        f"(a local checkpoint or save_pretrained folder), or weights=hf-hub:<org/name>; {hub}."
    )


# --- hashing ----------------------------------------------------------------------
_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | Path) -> str:
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


def sha256_files(files: tuple[Path, ...] | list[Path]) -> str:
    """sha256 of one file, or of the sorted 'name:sha256' lines of several."""
    if len(files) == 1:
        return sha256_file(files[0])
    lines = "\n".join(f"{Path(f).name}:{sha256_file(f)}" for f in sorted(files, key=str))
    return hashlib.sha256(lines.encode()).hexdigest()


# --- reading ------------------------------------------------------------------
def read_state_dict(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint safely: safetensors, else ``torch.load(weights_only=True)``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        # training checkpoints (iBOT / DINO) hold their argparse.Namespace of options
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle of arbitrary objects, truncated file...
        raise FileFormatError(
            f"cannot read weights {path} with torch.load(weights_only=True): {exc}. "
            "Re-save the state_dict alone (torch.save(model.state_dict(), path)) or as safetensors."
        ) from exc
    if not isinstance(obj, dict):
        raise FileFormatError(f"weights {path} hold a {type(obj).__name__}, not a state_dict")
    return obj


def read_state_dicts(files: tuple[Path, ...]) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for f in files:
        state.update(read_state_dict(f))
    return state


def unwrap_state_dict(obj: dict[str, Any], keys: tuple[str, ...] = ("state_dict", "model")) -> dict:
    """Return ``obj[k]`` for the first wrapper key present (checkpoint dicts), else obj."""
    for k in keys:
        if k in obj and isinstance(obj[k], dict):
            return obj[k]
    return obj


def read_arch_overrides(resolved: ResolvedWeights | None, explicit: dict | None) -> dict[str, Any]:
    """``wsi_mil_arch.json`` next to the weights, updated with ``explicit``."""
    out: dict[str, Any] = {}
    if resolved is not None:
        arch_file = resolved.folder / ARCH_FILE
        if arch_file.is_file():
            out.update(json.loads(arch_file.read_text()))
    out.update(explicit or {})
    return out


# --- resolution -------------------------------------------------------------------
def _weight_files_in(folder: Path) -> tuple[Path, ...]:
    for index_name in INDEX_FILES:
        index = folder / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return tuple(folder / s for s in shards)
    for name in _PREFERRED_IN_FOLDER:
        if (folder / name).is_file():
            return (folder / name,)
    found = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    return tuple(found)


HUB_PREFIXES = ("hf-hub:", "hf_hub:")  # timm / open_clip spell it hf-hub:, MUSK / CONCH hf_hub:


def _is_hub_id(value: str) -> bool:
    if value.startswith(HUB_PREFIXES):
        return True
    parts = value.split("/")
    looks_like_file = Path(value).suffix in WEIGHT_SUFFIXES
    return (len(parts) == 2 and all(parts) and not Path(value).exists()
            and not value.startswith((".", "~")) and not looks_like_file)


def resolve_weights(
    name: str,
    weights: str | os.PathLike | None,
    hub_id: str | None,
    filenames: tuple[str, ...] = DEFAULT_WEIGHT_FILES,
    extra_files: tuple[str, ...] = ("config.json",),
) -> ResolvedWeights:
    """Resolve ``weights`` (None = ``hub_id``) to local files; see the module docstring.

    ``filenames``: candidate weight files of a hub repo, first found wins;
    ``extra_files``: optional files fetched beside them (configs, tokenizers).
    """
    if weights is None:
        if hub_id is None:
            raise WeightsNotFoundError(
                f"encoder {name!r} has no default weights. " + how_to_supply(name, None)
            )
        return download_from_hub(name, hub_id, filenames, extra_files)
    value = os.fspath(weights)
    if isinstance(weights, str) and _is_hub_id(value):
        repo = value.removeprefix("hf-hub:").removeprefix("hf_hub:")
        return download_from_hub(name, repo, filenames, extra_files)
    path = Path(value).expanduser()
    if path.is_file():
        return ResolvedWeights(path, (path,), f"local:{path}", sha256_file(path))
    if path.is_dir():
        files = _weight_files_in(path)
        if not files:
            raise WeightsNotFoundError(
                f"no weight file ({', '.join(WEIGHT_SUFFIXES)}) in folder {path} for encoder "
                f"{name!r}. " + how_to_supply(name, hub_id)
            )
        return ResolvedWeights(path, files, f"local:{path}", sha256_files(files))
    raise WeightsNotFoundError(
        f"weights path {value!r} for encoder {name!r} does not exist. " + how_to_supply(name, hub_id)
    )


def download_from_hub(
    name: str,
    repo_id: str,
    filenames: tuple[str, ...] = DEFAULT_WEIGHT_FILES,
    extra_files: tuple[str, ...] = ("config.json",),
) -> ResolvedWeights:
    """Fetch (or find in the cache) a weight file of ``repo_id``; return its snapshot folder."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    kwargs = dict(
        repo_id=repo_id,
        cache_dir=hub_cache_dir(),
        local_files_only=hub_offline(),
        token=os.environ.get("HF_TOKEN") or None,
    )
    mode = "offline (HF_HUB_OFFLINE=1), cache only" if kwargs["local_files_only"] else "online"

    def fetch(filename: str) -> Path | None:
        try:
            return Path(hf_hub_download(filename=filename, **kwargs))
        except GatedRepoError as exc:
            raise WeightsNotFoundError(
                f"weights of encoder {name!r} (hub id {repo_id!r}) are gated and this account "
                f"has no access: {exc.__class__.__name__}. " + how_to_supply(name, repo_id)
            ) from exc
        except RepositoryNotFoundError as exc:
            raise WeightsNotFoundError(
                f"hub repo {repo_id!r} of encoder {name!r} was not found or is private/gated "
                "(no valid token). " + how_to_supply(name, repo_id)
            ) from exc
        except (EntryNotFoundError, LocalEntryNotFoundError):
            return None
        except (OSError, ValueError) as exc:  # network down, bad cache...
            logger.debug("hub fetch {}/{} failed: {}", repo_id, filename, exc)
            return None

    weight_files: tuple[Path, ...] = ()
    for filename in filenames:
        got = fetch(filename)
        if got is not None:
            weight_files = (got,)
            break
    for index_name in () if weight_files else INDEX_FILES:  # sharded checkpoints
        index = fetch(index_name)
        if index is not None:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            fetched = [fetch(s) for s in shards]
            if all(f is not None for f in fetched):
                weight_files = tuple(fetched)  # type: ignore[arg-type]
                break
    if not weight_files:
        raise WeightsNotFoundError(
            f"weights of encoder {name!r} not found on hub id {repo_id!r} ({mode}; looked for "
            f"{', '.join(filenames)}; cache {hub_cache_dir() or 'default'}). "
            + how_to_supply(name, repo_id)
        )
    for extra in extra_files:
        fetch(extra)
    folder = weight_files[0].parent
    logger.info("encoder {}: weights from hub {} ({})", name, repo_id, folder)
    return ResolvedWeights(folder, weight_files, f"hub:{repo_id}", sha256_files(weight_files))


class CheckpointLayoutError(FileFormatError):
    """A checkpoint's keys or shapes do not fit the encoder's architecture.

    The message names the encoder and the weights, lists the first missing,
    unexpected and mis-shaped keys, and says when no key matches at all (a
    checkpoint of another model, or another prefix / nesting).
    """


def _first(keys: list[str], n: int = 8) -> str:
    return f"{keys[:n]}{' ...' if len(keys) > n else ''} ({len(keys)})"


def check_layout(model: torch.nn.Module, state_dict: dict[str, Any], name: str,
                 source: str) -> None:
    """Raise :class:`CheckpointLayoutError` unless ``state_dict`` has exactly the
    model's keys with the model's shapes (meta tensors allowed on both sides)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} != model {tuple(v.shape)}"
              for k, v in expected.items()
              if k in state_dict and hasattr(state_dict[k], "shape")
              and tuple(state_dict[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or shapes):
        return
    hint = ""
    if len(missing) == len(expected) and state_dict:
        hint = (f" None of the {len(state_dict)} checkpoint keys match the model: a checkpoint "
                "of another model, or another key prefix / nesting (e.g. 'module.', "
                "{'state_dict': ...}).")
    raise CheckpointLayoutError(
        f"weights {source} do not fit encoder {name!r}:{hint} missing keys {_first(missing)}, "
        f"unexpected keys {_first(unexpected)}, shape mismatches {_first(shapes, 4)}. Check the "
        f"checkpoint matches the architecture (or pass arch_overrides / {ARCH_FILE})."
    )


def load_strict(model: torch.nn.Module, state_dict: dict[str, Any], name: str, source: str) -> None:
    """``model.load_state_dict(strict=True)``; any mismatch raises :class:`CheckpointLayoutError`
    listing the first missing / unexpected / mis-shaped keys."""
    check_layout(model, state_dict, name, source)
    model.load_state_dict(state_dict, strict=True)


def strip_prefixes(state: dict[str, Any], prefixes: tuple[str, ...] = ("module.",)) -> dict[str, Any]:
    """Drop a leading wrapper prefix (DDP ``module.``...) present on every key."""
    for prefix in prefixes:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state
