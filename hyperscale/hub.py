"""The Hugging Face hub, asked at most once per process whether it can be reached.

Offline, ``from_pretrained`` and ``load_dataset`` retry for half a minute and end in a traceback. hyperscale
first tries the local caches; when they do not hold what is asked for, it checks once (3 s) that the hub
answers, and otherwise raises one :class:`~hyperscale.errors.ConfigError` that names the offline alternative.
``HF_HUB_OFFLINE=1`` (or ``HF_DATASETS_OFFLINE=1`` for data) means: never try the network.
"""
from __future__ import annotations

import contextlib
import functools
import os
import socket
from typing import Iterator
from urllib.parse import urlparse

from .errors import ConfigError

HUB_URL = os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def offline(*variables: str) -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", *variables))


@functools.lru_cache(maxsize=1)
def reachable(timeout_s: float = 3.0) -> bool:
    """Whether a TCP connection to the hub opens within ``timeout_s`` (asked once per process)."""
    url = urlparse(HUB_URL)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def require(what: str, alternative: str, *offline_variables: str) -> None:
    """Raise a one-line :class:`ConfigError` when ``what`` would need the hub and the hub cannot be used."""
    if offline(*offline_variables):
        raise ConfigError(f"{what} is not in the local cache and HF_HUB_OFFLINE is set; {alternative}")
    if not reachable():
        raise ConfigError(f"{what} needs the Hugging Face hub ({HUB_URL}), which cannot be reached from here; "
                          f"{alternative}")


@contextlib.contextmanager
def cache_only(enabled: bool = True) -> Iterator[None]:
    """While open, ``datasets`` and ``huggingface_hub`` read their caches only (their offline switches are read
    at import time; this flips the module constants they consult)."""
    if not enabled:
        yield
        return
    import datasets.config  # lazy: only hub users import datasets
    import huggingface_hub.constants

    saved = (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved
