"""LoRAs from the Hugging Face hub: a request's ``loras`` may name ``owner/repo`` (its one LoRA file) or
``owner/repo/path/file.safetensors``, where no file of ``--lora-dir`` has that name.

A hub LoRA in the cache resolves at once (the catalog's ``check_loras``); one that is not waits in the
download phase (``studio.downloads``), one download per file however many jobs want it, and then
resolves from the cache like any other (its family checked from its keys). Torch-free: runs in the parent.
"""

from __future__ import annotations

import re
from pathlib import Path

from studio.errors import ModelGated, ModelUnavailable, StudioError
from studio.loras import FIELD, SUFFIX, LoraError

# owner/repo, then optionally the file's path in the repo (a .safetensors; never a pickle)
HUB_NAME = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:/(?P<file>(?:[\w.-]+/)*[\w.-]+\.safetensors))?")
DEFAULT_FILE = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes


def parse(name: str) -> tuple[str, str | None] | None:
    """``(repo, file or None)`` when ``name`` has the shape of a hub LoRA, else None."""
    match = HUB_NAME.fullmatch(name)
    if match is None or ".." in name:
        return None
    return match["repo"], match["file"]


def cached(repo: str, filename: str | None) -> Path | None:
    """The file in the Hugging Face cache, or None (never asks the hub). A bare repo counts as cached only
    through diffusers' file name: which of several files it means takes the hub's listing."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename or DEFAULT_FILE)
    return Path(found) if isinstance(found, str) else None


def download(repo: str, filename: str | None) -> Path:
    """Fetch the file into the cache (resumable; huggingface_hub's own download); ``filename`` None picks
    the repo's one LoRA file (``pytorch_lora_weights.safetensors`` among several)."""
    from huggingface_hub import HfApi, hf_hub_download

    if filename is None:
        files = [name for name in HfApi().list_repo_files(repo) if name.endswith(SUFFIX)]
        if DEFAULT_FILE in files or not files:
            filename = DEFAULT_FILE
        elif len(files) == 1:
            filename = files[0]
        else:
            raise LoraError(f"{FIELD}: {repo} holds several LoRA files; name one: "
                            + ", ".join(f"{repo}/{name}" for name in files[:10]))
    return Path(hf_hub_download(repo, filename))


def offline_error(name: str) -> StudioError:
    return ModelUnavailable(f"{FIELD}: {name} is not in the Hugging Face cache and the studio is offline; download "
                            f"it where the hub is reachable, or put the file in the LoRA folder", field=FIELD)


def explain(exc: BaseException, name: str) -> StudioError:
    """A failed hub LoRA download in words, naming ``loras``."""
    from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, RepositoryNotFoundError
    from huggingface_hub.utils import OfflineModeIsEnabled

    if isinstance(exc, StudioError):
        return exc
    if isinstance(exc, GatedRepoError):
        return ModelGated(f"{FIELD}: {name} is gated on the hub: accept its license on its page, then set HF_TOKEN "
                          "to an access token of that account", field=FIELD)
    if isinstance(exc, (RepositoryNotFoundError, EntryNotFoundError)):
        return LoraError(f"{FIELD}: {name} is not on the hub (no such repo or file; a private one needs HF_TOKEN), "
                         "and no file of the LoRA folder has that name")
    if isinstance(exc, OfflineModeIsEnabled):
        return offline_error(name)
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return ModelUnavailable(f"{FIELD}: {name} could not be downloaded from the hub ({reason})", field=FIELD)
