"""Pretrained weights: where segtut finds them, and what it does when a machine is offline.

Every segtut model with ``pretrained=True`` (the library models of :mod:`segtut.models.library`,
the MobileNetV2 and DenseNet U-Nets, fastai's U-Net learner) gets its ImageNet weights through
this module, in this order:

1. ``$SEGTUT_WEIGHTS_DIR`` (:func:`weights_dir`): a folder you fill yourself. smp encoders look
   for ``<encoder>.imagenet.safetensors`` (e.g. ``resnet18.imagenet.safetensors``: the
   ``model.safetensors`` of the Hugging Face repository ``smp-hub/resnet18.imagenet``, renamed);
   torchvision networks look for the file name of torchvision's download, e.g.
   ``mobilenet_v3_large-8738ca79.pth``.
2. The standard caches: Hugging Face's (``$HF_HOME``, default ``~/.cache/huggingface``) for smp,
   PyTorch's (``$TORCH_HOME``, default ``~/.cache/torch``) for torchvision.
3. A download, unless the network is switched off (:func:`segtut.config.offline_reason`:
   ``SEGTUT_OFFLINE`` or ``HF_HUB_OFFLINE`` set to ``1``/``true``/``yes``/``on``, the same rule
   as for data) or the server cannot be reached within :data:`DOWNLOAD_TIMEOUT_S` seconds (a
   quick connection test first, so an offline machine does not wait through minutes of
   retries).

When all three fail, :func:`load_pretrained` warns, keeps the random initialisation, and returns
a ``weights_source`` sentence starting with "random initialisation" that gives the reason; print
it in the run card.

Example, loading a torchvision backbone's ImageNet weights into your own module::

    from torchvision.models import MobileNet_V2_Weights
    from segtut.weights import load_pretrained, torchvision_state

    weights = MobileNet_V2_Weights.IMAGENET1K_V1
    model.weights_source = load_pretrained("ImageNet (mobilenet_v2 encoder)",
                                           lambda: torchvision_state(weights),
                                           model.encoder.load_imagenet_state)

This module imports only torch and the standard library (segmentation-models-pytorch,
huggingface_hub and safetensors are imported inside :func:`smp_encoder_state`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import warnings
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from torch import nn

from segtut.config import OFFLINE_ENV_VARS, WEIGHTS_DIR_ENV, offline_reason

__all__ = [
    "OFFLINE_ENV_VARS", "WEIGHTS_DIR_ENV", "DOWNLOAD_TIMEOUT_S", "WeightsUnavailable",
    "offline_reason", "unreachable", "socket_timeout", "weights_dir", "download_blocked",
    "smp_encoder_state", "torchvision_cache_path", "torchvision_state", "torchvision_file",
    "load_pretrained", "adapt_input_channels",
]

#: Seconds allowed for the connection test and for each network operation of a download.
DOWNLOAD_TIMEOUT_S = 10.0
_PROXY_ENV_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


class WeightsUnavailable(RuntimeError):
    """Pretrained weights are neither on disk nor downloadable; the message says why."""


def unreachable(host: str, timeout: float = DOWNLOAD_TIMEOUT_S) -> Optional[str]:
    """None if a TCP connection to ``host:443`` opens within ``timeout`` seconds, else the reason.

    Behind a proxy the test would say nothing useful, so it is skipped (None).
    """
    if any(os.environ.get(name) for name in _PROXY_ENV_VARS):
        return None
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return None
    except OSError as error:
        return f"cannot reach {host} ({error})"


@contextlib.contextmanager
def socket_timeout(seconds: float) -> Iterator[None]:
    """Give every socket opened inside the block a timeout (urllib's downloads have none)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def weights_dir() -> Optional[Path]:
    """The folder named by ``$SEGTUT_WEIGHTS_DIR``, or None when it is not set."""
    folder = os.environ.get(WEIGHTS_DIR_ENV)
    return Path(folder).expanduser() if folder else None


def download_blocked(host: str) -> Optional[str]:
    """Why a download from ``host`` must not be tried (offline switch, no connection), or None.

    Raises:
        ValueError: ``SEGTUT_OFFLINE`` / ``HF_HUB_OFFLINE`` holds neither an on nor an off value.
    """
    return offline_reason() or unreachable(host)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def smp_encoder_state(encoder_name: str, weights: str = "imagenet") -> tuple[dict, str]:
    """The state dict of a segmentation-models-pytorch encoder's pretrained weights, and where it
    came from (``"from <file>"``, ``"from the Hugging Face cache"``, ``"downloaded from ..."``).

    Raises:
        ValueError: the encoder has no such weights.
        WeightsUnavailable: not on disk and not downloadable.
    """
    import segmentation_models_pytorch as smp
    from huggingface_hub import hf_hub_download
    from safetensors.torch import load_file

    available = smp.encoders.encoders[encoder_name]["pretrained_settings"]
    if weights not in available:
        raise ValueError(f"Encoder {encoder_name!r} has no {weights!r} weights; it has: "
                         f"{', '.join(available)}.")
    repo_id, revision = available[weights]["repo_id"], available[weights]["revision"]
    filename = f"{repo_id.split('/')[-1]}.safetensors"  # e.g. resnet18.imagenet.safetensors
    folder = weights_dir()
    if folder is not None and (folder / filename).is_file():
        return load_file(folder / filename, device="cpu"), f"from {folder / filename}"
    try:
        path = hf_hub_download(repo_id, "model.safetensors", revision=revision, local_files_only=True)
        return load_file(path, device="cpu"), "from the Hugging Face cache"
    except Exception:  # noqa: BLE001 - not cached (the exception type varies across versions)
        pass
    reason = download_blocked("huggingface.co")
    if reason:
        looked = f"${WEIGHTS_DIR_ENV}/{filename}, " if folder is not None else ""
        raise WeightsUnavailable(f"{reason}; not found in {looked}the Hugging Face cache")
    with socket_timeout(DOWNLOAD_TIMEOUT_S):
        path = hf_hub_download(repo_id, "model.safetensors", revision=revision)
    return load_file(path, device="cpu"), f"downloaded from huggingface.co/{repo_id}"


def torchvision_cache_path(weights) -> Path:
    """Where PyTorch keeps a torchvision ``WeightsEnum`` member's file once downloaded:
    ``$TORCH_HOME/hub/checkpoints/<file>`` (``~/.cache/torch`` without ``TORCH_HOME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def torchvision_state(weights) -> tuple[dict, str]:
    """The state dict of a torchvision ``WeightsEnum`` member (e.g.
    ``MobileNet_V2_Weights.IMAGENET1K_V1``), and where it came from.

    Raises:
        WeightsUnavailable: not on disk and not downloadable.
    """
    filename = os.path.basename(weights.url)  # e.g. mobilenet_v3_large-8738ca79.pth
    folder = weights_dir()
    cached = torchvision_cache_path(weights)
    for path, where in ((folder / filename if folder else None, f"from {folder}/{filename}"),
                        (cached, "from the PyTorch cache")):
        if path is not None and path.is_file():
            return torch.load(path, map_location="cpu", weights_only=True), where
    reason = download_blocked("download.pytorch.org")
    if reason:
        looked = f"${WEIGHTS_DIR_ENV}/{filename}, " if folder is not None else ""
        raise WeightsUnavailable(f"{reason}; not found in {looked}{cached}")
    with socket_timeout(DOWNLOAD_TIMEOUT_S):
        state = torch.hub.load_state_dict_from_url(weights.url, progress=False, check_hash=True)
    return state, "downloaded from download.pytorch.org"


def torchvision_file(weights, *, download: bool = True,
                     timeout_s: float = DOWNLOAD_TIMEOUT_S) -> tuple[Path, str]:
    """A torchvision weights file in PyTorch's cache (:func:`torchvision_cache_path`),
    downloaded there if it is missing and the network allows: for libraries such as fastai that
    read the cache themselves.

    Returns:
        ``(path, "from torch's cache <path>")`` or ``(path, "downloaded to torch's cache <path>")``.

    Raises:
        WeightsUnavailable: not cached, and ``download`` is False, the machine is offline or
            the download failed; the message says which.
    """
    path = torchvision_cache_path(weights)
    if path.is_file():
        return path, f"from torch's cache {path}"
    reason = "download=False" if not download else download_blocked("download.pytorch.org")
    if reason:
        raise WeightsUnavailable(f"not in torch's cache ({path}) and {reason}")
    try:
        with socket_timeout(timeout_s):
            torch.hub.load_state_dict_from_url(weights.url, progress=False, check_hash=True)
    except Exception as error:  # noqa: BLE001 - no network, a timeout, a bad file: all mean "no"
        raise WeightsUnavailable(f"could not be downloaded to {path}: "
                                 f"{type(error).__name__}: {error}") from error
    return path, f"downloaded to torch's cache {path}"


def load_pretrained(description: str, fetch: Callable[[], tuple[dict, str]],
                    apply: Callable[[dict], None]) -> str:
    """Fetch weights and load them with ``apply``; when they cannot be had, warn and keep the
    random ones.

    Args:
        description: what the weights are, e.g. ``"ImageNet (resnet18 encoder)"``.
        fetch: returns ``(state_dict, where)``, e.g. ``lambda: torchvision_state(weights)``;
            any exception it raises (offline, timeout, HTTP error, corrupt file) means
            "unavailable".
        apply: loads the state dict into the model. A shape or key mismatch there is a bug,
            not an offline problem, so its exceptions propagate.

    Returns:
        The model's ``weights_source`` sentence: ``"<description>, <where>"``, or
        ``"random initialisation (<description> weights unavailable offline: <reason>)"``.
    """
    try:
        state, where = fetch()
    except Exception as error:  # noqa: BLE001 - offline, timeout, HTTP error, corrupt file...
        reason = _first_line(error)
        warnings.warn(f"{description} weights are unavailable ({reason}). The model starts from "
                      "RANDOM initialisation: expect lower scores than with pretrained weights. "
                      f"See the docstring of segtut.weights (set ${WEIGHTS_DIR_ENV} or fill the "
                      "PyTorch / Hugging Face cache) to use weights offline.", stacklevel=3)
        return f"random initialisation ({description} weights unavailable offline: {reason})"
    apply(state)
    return f"{description}, {where}"


def adapt_input_channels(model: nn.Module, in_channels: int) -> Optional[str]:
    """Make a model built for RGB images take ``in_channels`` channels instead.

    The first ``nn.Conv2d`` with 3 input channels (the stem) is replaced by one with
    ``in_channels``, initialised from the RGB filters as timm and smp do, so pretrained weights
    stay useful: for one channel the filters summed over R, G and B (a grey image then gives the
    response the RGB network gave to the same grey in colour); for more channels, R, G, B, R,
    ... repeated and scaled by ``3 / in_channels``.

    Returns:
        None for ``in_channels == 3`` (nothing changed), else a sentence for ``weights_source``.

    Raises:
        ValueError: ``in_channels < 1``, or the model has no 3-channel convolution.
    """
    if in_channels == 3:
        return None
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}.")
    for qualified, conv in model.named_modules():  # in forward order for these models
        if not (isinstance(conv, nn.Conv2d) and conv.in_channels == 3 and conv.groups == 1):
            continue
        parent_name, _, name = qualified.rpartition(".")
        parent = model.get_submodule(parent_name)
        new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                        conv.padding, conv.dilation, 1, conv.bias is not None, conv.padding_mode,
                        device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            rgb = conv.weight  # (C_out, 3, k, k)
            if in_channels == 1:
                new.weight.copy_(rgb.sum(dim=1, keepdim=True))
            else:
                repeat = rgb[:, torch.arange(in_channels) % 3]  # (C_out, in_channels, k, k)
                new.weight.copy_(repeat * 3 / in_channels)
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        setattr(parent, name, new)
        return f"stem convolution {qualified} adapted from 3 to {in_channels} input channels"
    raise ValueError(f"{type(model).__name__} has no 3-channel input convolution to adapt to "
                     f"in_channels={in_channels}.")
