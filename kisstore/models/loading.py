"""Load a causal LM and its tokenizer from an alias, a Hub id, a local directory or a GGUF file.

Safety: ``trust_remote_code`` is off unless asked; weights load from safetensors (or GGUF)
only, pickle checkpoints are refused unless ``allow_pickle``. A GGUF file is dequantised
once and cached as safetensors, so later loads take seconds.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kisstore.errors import InputError
from kisstore.hashing import file_sha256
from kisstore.models.aliases import ALIASES, family_of
from kisstore.models.embedded import smollm2_gguf
from kisstore.models.registry import KeySite, key_site, n_layers_of


@dataclass
class ModelSource:
    """Where a model comes from, decided without loading weights."""

    name: str  # what the user typed
    kind: str  # "gguf", "dir" or "hub"
    location: str  # file, directory or Hub id
    family: str = ""
    revision: str | None = None


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    source: ModelSource
    key_site: KeySite
    n_layers: int
    d_ff: int
    n_params: int
    device: str
    dtype: str
    provenance: dict[str, Any] = field(default_factory=dict)


def cache_dir() -> Path:
    base = os.environ.get("KISSTORE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "kisstore"
    )
    return Path(base)


def resolve_source(name: str) -> ModelSource:
    """Decide what ``--model NAME`` refers to (alias, GGUF file, local directory or Hub id)."""
    if not isinstance(name, str) or not name.strip():
        raise InputError("--model is empty")
    if name in ALIASES:
        alias = ALIASES[name]
        if alias.hub_id is None:
            return ModelSource(name, "gguf", str(smollm2_gguf()), alias.family)
        return ModelSource(name, "hub", alias.hub_id, alias.family)
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise InputError(f"GGUF file {name} does not exist")
        with open(path, "rb") as fh:
            magic = fh.read(4)
        if magic != b"GGUF":
            raise InputError(f"GGUF file {name} is not a GGUF file (it does not start with the magic bytes 'GGUF')")
        return ModelSource(name, "gguf", str(path.resolve()), family_of(path.name, ""))
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise InputError(f"{name} is not a model directory (no config.json in it)")
        return ModelSource(name, "dir", str(path.resolve()), "")
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise InputError(f"model {name!r} not found: no such directory or file")
    if any(c in name for c in " \\:*?\"<>|") or name.strip("/") != name:
        raise InputError(
            f"unknown model {name!r}: not an alias ({', '.join(ALIASES)}), a local path or a Hub id"
        )
    if "/" not in name and not hub_cached(name) and (offline := hub_offline()):
        # not an alias, not a path, not a file, and no Hub to ask: most likely a typo of an
        # alias. Refused now, with the close matches, rather than after the Hub client's
        # retries. Online, a bare name goes to the Hub (legacy ids such as gpt2-xl live there)
        import difflib

        close = difflib.get_close_matches(name.lower(), list(ALIASES), n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}?" if close else f"aliases: {', '.join(ALIASES)}"
        raise InputError(f"unknown model {name!r}: not an alias, a local path or an owner/name Hub id, "
                         f"and the Hub cannot be asked ({offline}); {hint}")
    return ModelSource(name, "hub", name, "")


def hub_cached(repo_id: str, revision: str | None = None, filename: str = "config.json") -> bool:
    """Whether the local Hugging Face cache holds ``filename`` of ``repo_id`` (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, filename, revision=revision), str)
    except Exception:  # a malformed id, an unreadable cache: not cached
        return False


_OFFLINE: dict[str, str | None] = {}


def hub_offline(timeout: float = 1.0) -> str | None:
    """Why the Hugging Face Hub cannot be reached now (a short sentence), or None when it can.

    Cheap: ``HF_HUB_OFFLINE``, else one TCP connect to the endpoint's port with a ``timeout``
    (a DNS failure or a refused connection fails at once), remembered for the process. Checked
    before the Hub client, whose retry loop takes ~30 s to give up."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    import socket
    from urllib.parse import urlsplit

    endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    key = f"{host}:{port}"
    if key not in _OFFLINE:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            _OFFLINE[key] = None
        except OSError as e:
            _OFFLINE[key] = f"offline: cannot reach {key} ({type(e).__name__}: {e})"
    return _OFFLINE[key]



def _gguf_cached(gguf: Path, progress: bool = True) -> tuple[Path, str]:
    """Dequantise a GGUF file once into a safetensors directory; return (dir, sha256)."""
    digest = file_sha256(gguf)
    target = cache_dir() / "gguf" / digest[:20]
    if (target / "config.json").is_file() and (target / "kisstore-complete").is_file():
        return target, digest
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if progress:
        print(f"converting {gguf.name} to a cached float32 copy (once; ~30 s)…", flush=True)
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except (InputError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:  # a truncated or damaged file: the gguf reader's own errors vary
        text = (str(e).strip().splitlines() or [""])[0][:200]
        raise InputError(f"GGUF file {gguf} cannot be read: truncated or damaged? ({type(e).__name__}: {text})") \
            from None
    model.hf_quantizer = None  # the weights are already dequantised to float32
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "kisstore-complete").write_text(f"{gguf}\n{digest}\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)  # atomic: a killed conversion leaves only a .tmp- folder
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target, digest


def _has_pickle_only(directory: Path) -> bool:
    files = {p.name for p in directory.iterdir()}
    has_safe = any(n.endswith(".safetensors") or n.endswith(".safetensors.index.json") for n in files)
    has_pickle = any(n.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl")) for n in files)
    return has_pickle and not has_safe


def pick_device(device: str) -> str:
    import torch

    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise InputError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked for, but no CUDA device is available here")
    return device


def pick_dtype(dtype: str, device: str, n_params: int | None = None):
    import torch

    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype == "auto":
        if device == "cpu":
            return torch.float32  # bfloat16 is ~5x slower on these CPUs
        return torch.float32 if (n_params or 0) < 3_000_000_000 else torch.bfloat16
    if dtype not in table:
        raise InputError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16")
    return table[dtype]


def load_config(source: ModelSource, trust_remote_code: bool = False):
    """The model's config, cheap; errors for unreachable models are raised here."""
    from transformers import AutoConfig

    if source.kind == "gguf":
        directory, _ = _gguf_cached(Path(source.location))
        return AutoConfig.from_pretrained(directory)
    if source.kind == "dir" and not trust_remote_code:
        import json

        try:
            declared = json.loads((Path(source.location) / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"{source.location}/config.json is not valid JSON") from e
        if not isinstance(declared, dict) or "model_type" not in declared:
            raise InputError(f"{source.location}/config.json has no model_type")
    if source.kind == "hub" and not hub_cached(source.location, source.revision) and (why := hub_offline()):
        raise InputError(
            f"model {source.name!r} could not be loaded from the Hugging Face Hub or its local cache: it is "
            f"not in the cache and the Hub cannot be reached ({why}); download it first or pass a local path"
        )
    try:
        return AutoConfig.from_pretrained(
            source.location, revision=source.revision, trust_remote_code=trust_remote_code
        )
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise InputError(
                f"model {source.name!r} needs custom code from its repository; pass --trust-remote-code "
                "only if you trust it"
            ) from e
        raise InputError(f"model {source.name!r}: {str(e).splitlines()[0]}") from e
    except OSError as e:
        raise InputError(
            f"model {source.name!r} is not a local directory or file and could not be loaded from the "
            "Hugging Face Hub or its local cache (offline?). Download it first or pass a local path."
        ) from e


def load_model(
    name: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    module: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> LoadedModel:
    """Load model + fast tokenizer, find the key modules, and describe where it all came from."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()  # kisstore shows its own progress
    source = resolve_source(name)
    dev = pick_device(device)
    config = load_config(source, trust_remote_code)
    site = key_site(config.model_type, module)
    n_layers = n_layers_of(config)

    revision = source.revision
    load_from = source.location
    if source.kind == "gguf":
        load_from, digest = _gguf_cached(Path(source.location))
        revision = f"sha256:{digest}"
    if source.kind in ("dir", "gguf") and not allow_pickle and _has_pickle_only(Path(load_from)):
        raise InputError(
            f"{name}: only pickle-based weights (.bin/.pt) found; they can run arbitrary code when "
            "loaded. Convert to safetensors or pass --allow-pickle if you trust the file."
        )
    tdtype = pick_dtype(dtype, dev, None)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            load_from,
            revision=None if source.kind != "hub" else revision,
            dtype=tdtype,
            trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True,
        )
        tokenizer = AutoTokenizer.from_pretrained(
            load_from, revision=None if source.kind != "hub" else revision, trust_remote_code=trust_remote_code
        )
    except OSError as e:
        msg = str(e).splitlines()[0]
        if "safetensors" in msg.lower() and not allow_pickle:
            raise InputError(
                f"{name}: no safetensors weights found; pickle checkpoints are refused unless --allow-pickle"
            ) from e
        raise InputError(f"model {name!r} could not be loaded: {msg}") from e
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(f"{name}: a fast tokenizer is needed (token offsets locate the subject)")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = "right"
    model.eval()
    model.to(dev)

    d_ff = _key_width(model, config, site)
    n_params = sum(p.numel() for p in model.parameters())
    provenance = {
        **model_provenance(source, config, site, revision, n_params, n_layers, d_ff),
        "dtype": str(tdtype).replace("torch.", ""),
        "device": dev if dev == "cpu" else f"{dev} ({torch.cuda.get_device_name(0)})",
        "trust_remote_code": bool(trust_remote_code),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    if source.kind == "gguf":
        provenance["note"] = "weights dequantised from a Q4_1 GGUF file: an approximation of the original model"
    return LoadedModel(model, tokenizer, source, site, n_layers, d_ff, int(n_params), dev,
                       provenance["dtype"], provenance)


@dataclass
class ModelShape:
    """A model's layer count, key width and key module, read from its config and a weightless
    (meta-device) copy: what `kisstore import-rome` checks files against."""

    name: str
    name_or_path: str
    architecture: str
    n_layers: int
    d_ff: int
    hooked_module: str
    provenance: dict[str, Any]


def inspect_model(name: str, module: str | None = None, trust_remote_code: bool = False) -> ModelShape:
    """Layer count, key width and key module of a model, without loading its weights."""
    import torch
    from transformers import AutoModelForCausalLM

    source = resolve_source(name)
    config = load_config(source, trust_remote_code)
    site = key_site(config.model_type, module)
    n_layers = n_layers_of(config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    d_ff = _key_width(model, config, site)
    provenance = model_provenance(source, config, site, source.revision,
                                  sum(p.numel() for p in model.parameters()), n_layers, d_ff)
    return ModelShape(name, provenance["name_or_path"], config.model_type, int(n_layers), int(d_ff), site.template,
                      provenance)


def model_provenance(source: ModelSource, config, site: KeySite, revision: str | None, n_params: int,
                     n_layers: int, d_ff: int) -> dict[str, Any]:
    """Where a model came from and its shape, as every store records it (the one place it is built)."""
    return {
        "model_id": source.location if source.kind != "gguf" else Path(source.location).name,
        "model_name": source.name,
        "model_source": source.kind,
        "model_revision": revision or getattr(config, "_commit_hash", None) or "unknown",
        "name_or_path": getattr(config, "_name_or_path", "") if source.kind == "hub" else source.name,
        "architecture": config.model_type,
        "family": source.family or family_of(source.location, config.model_type),
        "n_params": int(n_params),
        "n_layers": int(n_layers),
        "d_ff": int(d_ff),
        "hooked_module": site.template,
    }


def _key_width(model, config, site: KeySite) -> int:
    """The key width at layer 0's key module; a one-line error where the module is not there."""
    try:
        module = site.find(model, 0)
    except InputError:
        raise InputError(f"module {site.module(0)!r} not found in this {config.model_type} model; pass --module with "
                         "the MLP down-projection path") from None
    return key_dim(module)


def key_dim(module) -> int:
    """Input width of the down-projection: nn.Linear.in_features or GPT-2 Conv1D's weight rows."""
    if hasattr(module, "in_features"):
        return int(module.in_features)
    weight = getattr(module, "weight", None)
    if weight is not None and weight.ndim == 2:
        # transformers' Conv1D stores (in, out); nn.Linear stores (out, in)
        return int(weight.shape[0] if type(module).__name__ == "Conv1D" else weight.shape[1])
    raise InputError(f"cannot tell the input width of {type(module).__name__}")
