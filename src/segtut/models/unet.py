"""U-Net (Ronneberger, Fischer and Brox, 2015) in plain PyTorch.

Chapter 03 (``notebooks/03_unet_from_scratch.ipynb``) shows this code cell by cell; a test keeps
the notebook and this file identical, so edit both together.

Differences from the paper, and why:

* padded 3x3 convolutions, so the output has the input's size and no crop is needed;
* optional normalisation (BatchNorm or GroupNorm) and dropout, which the 2015 network lacks but
  which make training from scratch on a small dataset much steadier;
* a ``base_channels`` width (64 in the paper) and a ``depth`` (4 in the paper) to fit a CPU budget.

Input ``(N, in_channels, H, W)`` float; output logits ``(N, num_classes, H, W)`` for any H, W.
"""

import torch
import torch.nn.functional as F
from torch import nn

# %% notebook-copy starts here


def norm_layer(kind: str, channels: int) -> nn.Module:
    """A normalisation layer by name: "batch", "group" (8 groups) or "none"."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"Unknown norm {kind!r}; choose 'batch', 'group' or 'none'.")


class DoubleConv(nn.Sequential):
    """(3x3 conv -> norm -> ReLU) twice. ``(N, C_in, H, W) -> (N, C_out, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch",
                 dropout: float = 0.0):
        bias = norm == "none"  # a conv bias right before a norm layer is wasted
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias),
            norm_layer(norm, out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout) if dropout else nn.Identity(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias),
            norm_layer(norm, out_channels),
            nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    """2x2 max-pool then DoubleConv. ``(N, C_in, H, W) -> (N, C_out, H // 2, W // 2)``."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch",
                 dropout: float = 0.0):
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels, norm, dropout))


class Up(nn.Module):
    """Upsample x2, concatenate the skip connection, DoubleConv.

    ``x``: ``(N, C_in, h, w)``; ``skip``: ``(N, C_skip, H, W)`` with ``H >= 2h``;
    returns ``(N, C_out, H, W)``.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int,
                 norm: str = "batch", dropout: float = 0.0):
        super().__init__()
        # The paper's "up-convolution": a learned 2x2 transposed conv that halves the channels.
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_channels // 2 + skip_channels, out_channels, norm, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)  # (N, C_in // 2, 2h, 2w)
        # An odd input size loses a row or column at each pooling: pad back to the skip's size.
        dy, dx = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
        x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))  # (N, C_out, H, W)


class UNet(nn.Module):
    """U-Net: an encoder of ``depth`` Down blocks, a mirrored decoder of Up blocks with skips.

    Args:
        num_classes: number of output channels (classes, void not included).
        in_channels: image channels.
        base_channels: width of the first block; each Down doubles it (64 in the paper).
        depth: number of poolings (4 in the paper).
        norm: "batch", "group" or "none".
        dropout: Dropout2d probability inside the two deepest blocks (0 disables it).

    Shapes: ``(N, in_channels, H, W)`` float -> logits ``(N, num_classes, H, W)``.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, base_channels: int = 64,
                 depth: int = 4, norm: str = "batch", dropout: float = 0.0):
        super().__init__()
        widths = [base_channels * 2 ** i for i in range(depth + 1)]  # e.g. 64, 128, 256, 512, 1024
        deep = lambda i: dropout if i >= depth - 1 else 0.0  # noqa: E731 - dropout only deep down
        self.stem = DoubleConv(in_channels, widths[0], norm)
        self.downs = nn.ModuleList(
            Down(widths[i], widths[i + 1], norm, deep(i)) for i in range(depth))
        self.ups = nn.ModuleList(
            Up(widths[i + 1], widths[i], widths[i], norm, deep(i)) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem(images)  # (N, base, H, W)
        skips = [x]
        for down in self.downs:
            x = down(x)  # (N, 2C, H / 2, W / 2)
            skips.append(x)
        skips.pop()  # the bottleneck output is x itself, not a skip
        for up in self.ups:
            x = up(x, skips.pop())  # (N, C / 2, 2h, 2w)
        return self.head(x)  # (N, num_classes, H, W)
