"""Draw the chapter map: which chapter builds which piece of the encoder-decoder Transformer.

Run from anywhere:

    python book/figures/make_chapter_map.py

It writes ``chapter_map.png`` next to this script (1600 x 1000 px at 150 dpi).
No network access, no randomness: the output depends only on this file and matplotlib.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

OUT = Path(__file__).with_name("chapter_map.png")

# The canvas is measured in "units" of 10 px: 160 x 100 units = 1600 x 1000 px at 150 dpi.
W, H = 160, 100
DPI = 150

# One colour per kind of piece; the chapter badges use the same colours.
COLORS = {
    "attn": "#f4a259",  # 01-03 attention
    "pos": "#b39ddb",  # 04 positional encoding
    "enc": "#90caf9",  # 06 residual, LayerNorm, feed-forward
    "mask": "#ef9a9a",  # 07 masked self-attention
    "cross": "#a5d6a7",  # 08 cross-attention
    "model": "#cfd8dc",  # 09 embeddings, generator
    "train": "#ffe082",  # 10-16 training and decoding
    "other": "#eeeeee",  # 05 comparison chapter
}
CHAPTER_COLOR = {
    "01": "attn", "02": "attn", "03": "attn", "04": "pos", "05": "other",
    "06": "enc", "07": "mask", "08": "cross", "09": "model",
}
EDGE = "#37474f"
TEXT = "#212121"


def box(ax, x, y, w, h, label, kind, chapters=(), fontsize=9.5):
    """A rounded box centred at (x, y) with a label and chapter badges on its right edge."""
    ax.add_patch(
        FancyBboxPatch(
            (x - w / 2, y - h / 2), w, h,
            boxstyle="round,pad=0,rounding_size=1.2",
            facecolor=COLORS[kind], edgecolor=EDGE, linewidth=1.0, zorder=3,
        )
    )
    # Keep the label left of the badges so the two never overlap.
    badge_w = 4.6
    text_x = x - (1.2 + len(chapters) * badge_w) / 2 if chapters else x
    ax.text(text_x, y, label, ha="center", va="center", fontsize=fontsize, color=TEXT,
            linespacing=1.0, zorder=4)
    for i, ch in enumerate(chapters):
        bx = x + w / 2 - 1.2 - badge_w * (len(chapters) - i) + badge_w / 2
        badge(ax, bx, y, ch)


def badge(ax, x, y, ch, fontsize=8):
    """A small white tag with a chapter number, outlined in the chapter's colour."""
    ax.text(
        x, y, ch, ha="center", va="center", fontsize=fontsize, fontweight="bold", color=TEXT,
        zorder=6,
        bbox=dict(boxstyle="round,pad=0.25", facecolor="white",
                  edgecolor=darker(COLORS[CHAPTER_COLOR.get(ch, "train")]), linewidth=1.4),
    )


def darker(hex_color, factor=0.6):
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return "#{:02x}{:02x}{:02x}".format(*(int(c * factor) for c in (r, g, b)))


def arrow(ax, x0, y0, x1, y1, style="-|>", connectionstyle="arc3", color=EDGE, lw=1.1):
    ax.add_patch(
        FancyArrowPatch(
            (x0, y0), (x1, y1), arrowstyle=style, mutation_scale=10,
            connectionstyle=connectionstyle, color=color, linewidth=lw, zorder=2,
            shrinkA=0, shrinkB=0,
        )
    )


def residual(ax, cx, x_side, y_from, y_to, x_into):
    """A skip connection: leave the main path (x = cx) at y_from, run up the side at x_side,
    and enter the add & norm box (whose edge is at x_into) at y_to."""
    ax.plot([cx, x_side, x_side], [y_from, y_from, y_to], color=EDGE, lw=0.9, zorder=2)
    ax.plot([cx], [y_from], marker="o", markersize=3, color=EDGE, zorder=3)
    arrow(ax, x_side, y_to, x_into, y_to, lw=0.9)


def frame(ax, x0, y0, x1, y1, title):
    """The grey frame around one repeated block, with its title inside the top-left corner."""
    ax.add_patch(
        FancyBboxPatch(
            (x0, y0), x1 - x0, y1 - y0, boxstyle="round,pad=0,rounding_size=2",
            facecolor="#fafafa", edgecolor="#9e9e9e", linewidth=1.2, zorder=1,
        )
    )
    ax.text(x0 + 1.5, y1 - 2.2, title, ha="left", va="center", fontsize=11.5,
            fontweight="bold", color=TEXT, zorder=4)


def column(ax, cx, title, bottom_label, emb_label, blocks, frame_side):
    """Embedding + positional encoding + a framed stack of sublayers; returns box centres."""
    bw = 38  # box width
    # Inputs and embedding
    ax.text(cx, 3.0, bottom_label, ha="center", va="center", fontsize=9, color=TEXT,
            style="italic")
    arrow(ax, cx, 4.8, cx, 7.5)
    box(ax, cx, 10.0, bw, 5.0, emb_label, "model", ("09",))
    # Positional encoding: a circled plus, with its label beside it
    arrow(ax, cx, 12.5, cx, 16.2)
    ax.add_patch(plt.Circle((cx, 18.0), 1.8, facecolor="white", edgecolor=EDGE, lw=1.0,
                            zorder=3))
    ax.text(cx, 18.0, "+", ha="center", va="center", fontsize=11, zorder=4)
    pe_x = cx - 11.5 if frame_side == "left" else cx + 11.5
    ax.add_patch(
        FancyBboxPatch((pe_x - 7.5, 16.0), 15.0, 4.0, boxstyle="round,pad=0,rounding_size=1.2",
                       facecolor=COLORS["pos"], edgecolor=EDGE, lw=1.0, zorder=3)
    )
    ax.text(pe_x - 2.2, 18.0, "positional\nencoding", ha="center", va="center", fontsize=8,
            linespacing=0.95, zorder=4)
    badge(ax, pe_x + 4.6, 18.0, "04")
    if frame_side == "left":
        arrow(ax, pe_x + 7.5, 18.0, cx - 1.8, 18.0)
    else:
        arrow(ax, pe_x - 7.5, 18.0, cx + 1.8, 18.0)
    # The framed block of sublayers (headroom at the top for the title)
    y_top = blocks[-1][0] + blocks[-1][1] / 2 + 5.5
    frame(ax, cx - bw / 2 - 4.5, 22.5, cx + bw / 2 + 4.5, y_top, title)
    rep_x = cx - bw / 2 - 6.5 if frame_side == "left" else cx + bw / 2 + 6.5
    ax.text(rep_x, (22.5 + y_top) / 2, "N×", ha="center", va="center", fontsize=12,
            fontweight="bold", color="#616161")

    centres = {}
    prev_top = 19.8  # top of the positional-encoding circle
    for y, h, label, kind, chapters, key in blocks:
        arrow(ax, cx, prev_top, cx, y - h / 2)
        box(ax, cx, y, bw, h, label, kind, chapters)
        centres[key] = (cx, y, bw, h)
        prev_top = y + h / 2
    return centres, y_top


def main():
    plt.rcParams.update({"font.family": "DejaVu Sans"})
    fig = plt.figure(figsize=(W * 10 / DPI, H * 10 / DPI), dpi=DPI)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, W)
    ax.set_ylim(0, H)
    ax.axis("off")

    # ---------------- encoder ----------------
    ex = 31
    enc_blocks = [
        # (centre y, height, label, colour, chapters, key)
        (30.0, 5.5, "multi-head\nself-attention", "attn", ("01", "02", "03"), "mhsa"),
        (38.5, 4.0, "add & norm", "enc", ("06",), "an1"),
        (47.0, 5.5, "feed-forward", "enc", ("06",), "ffn"),
        (55.5, 4.0, "add & norm", "enc", ("06",), "an2"),
    ]
    enc, enc_top = column(ax, ex, "Encoder", "source tokens", "input embedding", enc_blocks,
                          "left")
    # residual connections on the right-hand side of the encoder boxes
    side = ex + 19 + 2.3
    residual(ax, ex, side, 25.0, 38.5, ex + 19)
    residual(ax, ex, side, 41.3, 55.5, ex + 19)
    # memory: the encoder's output, read by every decoder layer
    arrow(ax, ex, 57.5, ex, enc_top + 5.5)
    mem_y = enc_top + 8.0
    box(ax, ex, mem_y, 24, 5.0, "memory", "other", ())

    # ---------------- decoder ----------------
    dx = 85
    dec_blocks = [
        (30.0, 5.5, "masked self-attention", "mask", ("07",), "msa"),
        (38.0, 4.0, "add & norm", "enc", ("06",), "an1"),
        (46.5, 5.5, "cross-attention", "cross", ("08",), "xa"),
        (54.5, 4.0, "add & norm", "enc", ("06",), "an2"),
        (63.0, 5.5, "feed-forward", "enc", ("06",), "ffn"),
        (71.0, 4.0, "add & norm", "enc", ("06",), "an3"),
    ]
    dec, dec_top = column(ax, dx, "Decoder", "target tokens, shifted right",
                          "output embedding", dec_blocks, "right")
    side_d = dx - 19 - 2.3
    residual(ax, dx, side_d, 25.0, 38.0, dx - 19)
    residual(ax, dx, side_d, 40.8, 54.5, dx - 19)
    residual(ax, dx, side_d, 57.3, 71.0, dx - 19)

    # memory -> cross-attention (keys and values come from the encoder)
    mx_right = ex + 12
    ax.plot([mx_right, 59.0, 59.0], [mem_y, mem_y, 46.5], color=darker(COLORS["cross"]),
            lw=1.4, zorder=2)
    arrow(ax, 59.0, 46.5, dx - 19, 46.5, color=darker(COLORS["cross"]), lw=1.4)
    ax.text(50.5, mem_y + 1.6, "keys, values", ha="center", va="center", fontsize=8.5,
            color=darker(COLORS["cross"], 0.45))

    # generator on top of the decoder
    arrow(ax, dx, 73.0, dx, dec_top + 2.0)
    box(ax, dx, dec_top + 4.2, 38, 4.4, "linear (generator)", "model", ("09",))
    arrow(ax, dx, dec_top + 6.4, dx, dec_top + 8.2)
    box(ax, dx, dec_top + 10.4, 38, 4.4, "softmax", "model", ("09",))
    arrow(ax, dx, dec_top + 12.6, dx, dec_top + 14.4)
    ax.text(dx, dec_top + 15.8, "next-token probabilities", ha="center", va="center",
            fontsize=9, style="italic", color=TEXT)

    # Title and a note on chapter 09 assembling the whole
    ax.text(2.5, 96.5, "Which chapter builds which piece", ha="left", va="center",
            fontsize=14, fontweight="bold", color=TEXT)
    ax.text(2.5, 90.6, "Each numbered tag names the chapter that builds the piece;\n"
            "chapter 09 assembles the pieces into the full model.",
            ha="left", va="center", fontsize=9.5, color="#424242", linespacing=1.4)

    # ---------------- side strip ----------------
    sx0, sx1 = 114, 157.5
    ax.add_patch(
        FancyBboxPatch((sx0, 3.0), sx1 - sx0, 91.0, boxstyle="round,pad=0,rounding_size=2",
                       facecolor="#fbfbf7", edgecolor="#9e9e9e", lw=1.2, zorder=1)
    )
    model_chapters = [
        ("01", "why attention: scores"),
        ("02", "self-attention"),
        ("03", "multi-head attention"),
        ("04", "positional encoding"),
        ("05", "attention vs CNN / RNN"),
        ("06", "encoder: residual, FFN, LayerNorm"),
        ("07", "masked self-attention"),
        ("08", "cross-attention, decoder"),
        ("09", "the full Transformer"),
    ]
    train_chapters = [
        ("10", "label smoothing"),
        ("11", "warmup"),
        ("12", "training"),
        ("13", "decoding"),
        ("14", "evaluation"),
        ("15", "training tips"),
        ("16", "scaling up"),
    ]
    y = 90.0
    for heading, chapters in [("Building the model", model_chapters), ("Training and using it", train_chapters)]:
        ax.text(sx0 + 2.0, y, heading, ha="left", va="center", fontsize=10.5, fontweight="bold", color=TEXT)
        y -= 5.0
        for ch, title in chapters:
            badge(ax, sx0 + 4.3, y, ch)
            ax.text(sx0 + 7.6, y, title, ha="left", va="center", fontsize=9, color=TEXT)
            y -= 4.4
        y -= 1.8

    fig.savefig(OUT, dpi=DPI, facecolor="white")
    plt.close(fig)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
