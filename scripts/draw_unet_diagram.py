"""Draw book/images/unet.svg, the U-Net diagram of chapter 3 (run once; the SVG is committed)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, Rectangle  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "book" / "images" / "unet.svg"
plt.rcParams["svg.fonttype"] = "none"  # keep text as text
DEPTH, BASE = 4, 16
fig, axis = plt.subplots(figsize=(11, 5.4))
axis.set_xlim(0, 23)
axis.set_ylim(-0.8, 10.3)
axis.axis("off")


def block(x, y, width, height, colour, label, below=None):
    axis.add_patch(Rectangle((x, y), width, height, facecolor=colour, edgecolor="black", lw=0.8))
    axis.text(x + width / 2, y + height + 0.12, label, ha="center", va="bottom", fontsize=8)
    if below:
        axis.text(x + width / 2, y - 0.12, below, ha="center", va="top", fontsize=7, color="#555")


def arrow(start, end, colour="black", style="-|>", ls="-"):
    axis.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=10, color=colour,
                                   lw=1.2, ls=ls))


sizes = [(180, 240), (90, 120), (45, 60), (22, 30), (11, 15)]
encoder, decoder = [], []
for level in range(DEPTH + 1):
    y = 8.6 - 2.0 * level
    height = 1.3 - 0.18 * level
    width = 0.35 + 0.18 * level
    channels = BASE * 2 ** level
    x = 1.0 + 1.2 * level
    name = "stem" if level == 0 else ("bottleneck" if level == DEPTH else f"down {level}")
    block(x, y, width, height, "#9ecae1" if level < DEPTH else "#fdae6b",
          f"{name}\n{channels} ch", f"{sizes[level][0]}x{sizes[level][1]}")
    encoder.append((x, y, width, height))
    if level:
        px, py, pw, ph = encoder[level - 1]
        arrow((px + pw / 2, py - 0.45), (x + width / 2, y + height + 0.55), "#d62728")
for level in reversed(range(DEPTH)):
    y = 8.6 - 2.0 * level
    height = 1.3 - 0.18 * level
    width = 0.35 + 0.18 * level
    channels = BASE * 2 ** level
    x = 20.2 - 1.2 * level - width
    block(x, y, width, height, "#a1d99b", f"up {DEPTH - level}\n{channels} ch",
          f"{sizes[level][0]}x{sizes[level][1]}")
    decoder.append((level, x, y, width, height))
    ex, ey, ew, eh = encoder[level]
    arrow((ex + ew + 0.1, ey + eh / 2), (x - 0.1, y + eh / 2), "#777777", ls="--")
    deeper = encoder[level + 1] if level + 1 == DEPTH else None
    if deeper:
        dx, dy, dw, dh = deeper
        arrow((dx + dw + 0.1, dy + dh / 2), (x + width / 2, y - 0.45), "#2ca02c")
for (l1, x1, y1, w1, h1), (l2, x2, y2, w2, h2) in zip(decoder, decoder[1:]):
    arrow((x1 + w1 / 2, y1 + h1 + 0.55), (x2 + w2 / 2, y2 - 0.45), "#2ca02c")
last = decoder[-1]
axis.add_patch(Rectangle((21.8, last[2]), 0.35, last[4], facecolor="#bcbddc", edgecolor="black", lw=0.8))
axis.text(21.97, last[2] + last[4] + 0.12, "1x1 conv\n11 logits", ha="center", va="bottom", fontsize=8)
arrow((last[1] + last[3] + 0.05, last[2] + last[4] / 2), (21.75, last[2] + last[4] / 2))
legend = [("#d62728", "2x2 max-pool, then DoubleConv"), ("#2ca02c", "2x2 transposed conv (x2), concat, DoubleConv"),
          ("#777777", "skip connection (copy and concatenate)")]
for i, (colour, text) in enumerate(legend):
    axis.plot([6.5, 7.3], [0.6 - 0.55 * i] * 2, color=colour, lw=2, ls="--" if colour == "#777777" else "-")
    axis.text(7.5, 0.6 - 0.55 * i, text, va="center", fontsize=9)
axis.text(11, 10.1, "U-Net (depth 4, base width 16, input 180x240)", ha="center", fontsize=11, weight="bold")
OUT.parent.mkdir(parents=True, exist_ok=True)
fig.savefig(OUT, bbox_inches="tight")
print("wrote", OUT)
