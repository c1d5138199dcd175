"""Download an exported model from a URL into a local dir, pinned by the manifest's sha256.

The pods' init container for ``--model-source url`` runs ``marlctl deploy fetch-model``: it
downloads ``BASE_URL/manifest.json``, refuses it unless its sha256 is the one rendered into
the pod spec, then downloads the agent files the manifest lists (all, or only this pod's
agent) and refuses any whose sha256 differs. Every file is written to a temp file and
renamed, so a failed fetch never leaves a partial model behind.
"""
from __future__ import annotations

import hashlib
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from marlctl.agents.files import atomic_write_bytes
from marlctl.agents.onnx_io import MANIFEST_NAME
from marlctl.deploy.errors import ModelFetchError
from marlctl.deploy.model_check import ModelInfo, is_sha256_hex, load_model_dir, parse_manifest_bytes

MAX_FILE_BYTES = 1 << 30
"""Largest single file a fetch accepts (1 GiB): a guard against a wrong URL streaming forever."""


def check_model_url(url: str) -> str:
    """Return ``url`` with a trailing slash, or raise unless it is an http(s) URL with a host."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ModelFetchError(f"model URL {url!r} must be an http:// or https:// URL of the model dir")
    if parts.query or parts.fragment:
        raise ModelFetchError(f"model URL {url!r} must not carry a query or fragment (files are fetched below it)")
    return url if url.endswith("/") else url + "/"


def _download(url: str, timeout_s: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - scheme checked above
            data = resp.read(MAX_FILE_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise ModelFetchError(f"GET {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ModelFetchError(f"GET {url} failed: {getattr(exc, 'reason', exc)}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ModelFetchError(f"GET {url} returned more than {MAX_FILE_BYTES} bytes; is this the model dir URL?")
    return data


def fetch_model(
    base_url: str,
    dest: str | Path,
    manifest_sha256: str,
    agents: list[int] | None = None,
    timeout_s: float = 30.0,
) -> ModelInfo:
    """Download the model at ``base_url`` into ``dest`` and verify it; returns the checked model."""
    base = check_model_url(base_url)
    if not is_sha256_hex(manifest_sha256):
        raise ModelFetchError(f"--manifest-sha256 {manifest_sha256!r} is not 64 lowercase hex digits")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    manifest_url = urllib.parse.urljoin(base, MANIFEST_NAME)
    data = _download(manifest_url, timeout_s)
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest_sha256:
        raise ModelFetchError(
            f"{manifest_url} has sha256 {digest}, but this deployment pins {manifest_sha256}: "
            "the URL serves another model than the one the manifests were rendered for"
        )
    manifest = parse_manifest_bytes(data, manifest_url)
    wanted = range(manifest["n_agents"]) if agents is None else agents
    for index in wanted:
        if not 0 <= index < manifest["n_agents"]:
            raise ModelFetchError(f"agent index {index} outside [0, {manifest['n_agents']})")
        entry = manifest["agents"][index]
        file_url = urllib.parse.urljoin(base, urllib.parse.quote(entry["file"]))
        blob = _download(file_url, timeout_s)
        blob_digest = hashlib.sha256(blob).hexdigest()
        if blob_digest != entry["sha256"]:
            raise ModelFetchError(
                f"agent {index}: {file_url} has sha256 {blob_digest}, the manifest pins {entry['sha256']}"
            )
        atomic_write_bytes(dest / entry["file"], blob)
    # The manifest goes last: a dir with a manifest is a complete model.
    atomic_write_bytes(dest / MANIFEST_NAME, data)
    return load_model_dir(dest, agents=list(wanted), manifest_sha256=manifest_sha256)
