"""Omniglot-like few-shot character classification rendered from fonts.

Nothing is downloaded: glyphs are rendered with Pillow from the TrueType
fonts that ship with matplotlib (DejaVu Sans/Serif/Mono and STIXGeneral in
their styles) plus any ``.ttf``/``.otf`` found under ``/usr/share/fonts``
(``system_fonts=True``; the bank then depends on the machine's fonts, so pass
``system_fonts=False`` for a bank that is identical wherever matplotlib is).
Fonts with non-Unicode or placeholder charmaps (matplotlib's ``cm*`` TeX
fonts, ``STIXNonUni*``, ``STIXSiz*``, ``LastResort*``) are skipped, and fonts
are de-duplicated by (family, style).

**Alphabets and classes.** Each alphabet is one or more Unicode blocks
(:data:`ALPHABETS`); each character is a class. A character is kept when it
is a letter, number or symbol (Unicode category ``L*``/``N*``/``S*``), has no
Unicode decomposition (so no precomposed accented variants or compatibility
forms like circled digits), renders with visible ink in at least
``min_fonts`` distinct fonts (default 2; coverage is read from each font's
charmap with ``matplotlib.ft2font.FT2Font``, i.e. ``get_char_index != 0``), and
does not render identically (binarised, in its first font) to an earlier
class (homoglyphs such as Latin ``A``, Greek ``Alpha`` and Cyrillic ``A`` are
kept once, in the first alphabet listed).
Each class keeps at most ``max_fonts_per_char`` fonts (default 8), taken in
the order: the regular style of every family, then italics, bolds, bold
italics, then the rest (condensed, light, display).

**Examples.** An example of a class is one of its fonts under a fresh random
affine jitter (rotation ``U[-10, 10]`` deg, scale ``U[0.9, 1.1]``, shift
``U[-2, 2]`` px per axis at 28 px, proportionally at other sizes), so any
number of distinct examples exists once a class has ``min_fonts`` fonts.
Within an episode a class's examples cycle through a random permutation of
its fonts: support and query use different fonts whenever the class has more
than ``k_shot`` of them.

**Splits** are by alphabet (:data:`ALPHABET_SPLITS`), so meta-test
characters come from scripts never seen in meta-training:

- train: Latin, IPA, Greek, Cyrillic, Arabic, Canadian Syllabics, Lao,
  Currency, Letterlike, Math Operators, Misc Technical, Box Drawing,
  Geometric Shapes, Misc Symbols, Dingbats
- val: Armenian, NKo, Ogham, Number Forms, Block Elements, Yijing
- test: Georgian, Hebrew, Tifinagh, Lisu, Braille, Arrows

**Rendering.** Glyphs are drawn 3x supersampled (Pillow's basic layout) at
an em size of ``0.8 * image_size``, centred on their ink bounding box, shrunk only if they
overflow 90% of the frame (relative sizes are kept: ``.`` stays small), and
box-filtered down. Images are ``(1, image_size, image_size)`` floats in
``[0, 1]`` with ink = 1. Larger images are supersampled less (2x at 56 px,
1x from 84 px) to bound the render time. The bank is rendered once per
process, lazily on first use, and cached in memory.

**Size.** With matplotlib's fonts plus the DejaVu fonts of a Debian system
(28 fonts after de-duplication) at 28 px: 27 alphabets, 3328 classes (train
2363 / val 232 / test 733), 25.1k renders (20 MB), about 3-5 s to render;
with ``system_fonts=False`` (18 fonts): 3300 classes. Most classes have 8
fonts; the minimum is ``min_fonts``.
"""

from __future__ import annotations

import glob
import os
import re
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hvi.data.base import SPLITS, Split, TaskSource, check_int, check_num_tasks, check_split, register_source, split_index
from hvi.tasks import TaskBatch

__all__ = [
    "ALPHABETS",
    "ALPHABET_SPLITS",
    "GlyphBank",
    "GlyphSource",
    "discover_fonts",
    "glyph_bank",
]

ALPHABETS: dict[str, tuple[tuple[int, int], ...]] = {
    "Latin": (
        (0x0020, 0x007F),
        (0x00A0, 0x024F),
        (0x1E00, 0x1EFF),
        (0x2C60, 0x2C7F),
        (0xA720, 0xA7FF),
    ),
    "IPA": ((0x0250, 0x02AF),),
    "Greek": ((0x0370, 0x03FF), (0x1F00, 0x1FFF)),
    "Cyrillic": ((0x0400, 0x052F), (0xA640, 0xA69F)),
    "Armenian": ((0x0530, 0x058F),),
    "Hebrew": ((0x0590, 0x05FF),),
    "Arabic": ((0x0600, 0x06FF),),
    "NKo": ((0x07C0, 0x07FF),),
    "Lao": ((0x0E80, 0x0EFF),),
    "Georgian": ((0x10A0, 0x10FF), (0x2D00, 0x2D2F)),
    "Canadian Syllabics": ((0x1400, 0x167F),),
    "Ogham": ((0x1680, 0x169F),),
    "Tifinagh": ((0x2D30, 0x2D7F),),
    "Lisu": ((0xA4D0, 0xA4FF),),
    "Currency": ((0x20A0, 0x20CF),),
    "Letterlike": ((0x2100, 0x214F),),
    "Number Forms": ((0x2150, 0x218F),),
    "Arrows": ((0x2190, 0x21FF), (0x27F0, 0x27FF), (0x2900, 0x297F), (0x2B00, 0x2BFF)),
    "Math Operators": ((0x2200, 0x22FF), (0x27C0, 0x27EF), (0x2980, 0x29FF), (0x2A00, 0x2AFF)),
    "Misc Technical": ((0x2300, 0x23FF),),
    "Box Drawing": ((0x2500, 0x257F),),
    "Block Elements": ((0x2580, 0x259F),),
    "Geometric Shapes": ((0x25A0, 0x25FF),),
    "Misc Symbols": ((0x2600, 0x26FF),),
    "Dingbats": ((0x2700, 0x27BF),),
    "Braille": ((0x2800, 0x28FF),),
    "Yijing": ((0x4DC0, 0x4DFF),),
}
"""Alphabet name -> inclusive Unicode code-point ranges; earlier alphabets win homoglyph ties."""

ALPHABET_SPLITS: dict[str, tuple[str, ...]] = {
    "train": (
        "Latin",
        "IPA",
        "Greek",
        "Cyrillic",
        "Arabic",
        "Canadian Syllabics",
        "Lao",
        "Currency",
        "Letterlike",
        "Math Operators",
        "Misc Technical",
        "Box Drawing",
        "Geometric Shapes",
        "Misc Symbols",
        "Dingbats",
    ),
    "val": ("Armenian", "NKo", "Ogham", "Number Forms", "Block Elements", "Yijing"),
    "test": ("Georgian", "Hebrew", "Tifinagh", "Lisu", "Braille", "Arrows"),
}
"""Which alphabets feed each split (disjoint)."""

_SOURCE_TAG = 0x6E1F
_SUPERSAMPLE = 3  # at 28 px; fewer for larger images (see _supersample)
_EM_FRACTION = 0.8  # em size relative to the image
_MAX_FRACTION = 0.9  # glyphs larger than this fraction of the frame are shrunk
_SKIP_FONT = re.compile(r"^(cm|LastResort|STIXNonUni|STIXSiz)", re.IGNORECASE)
_MAX_ROTATION_DEG = 10.0
_SCALE_RANGE = (0.9, 1.1)
_MAX_SHIFT_PX_AT_28 = 2.0


def discover_fonts(system_fonts: bool = True) -> list[str]:
    """Paths of the usable fonts: matplotlib's, then (optionally) system fonts.

    Args:
        system_fonts: Also search ``/usr/share/fonts`` recursively for
            ``.ttf``/``.otf``. Defaults to True.

    Returns:
        Font file paths, de-duplicated by (family, style), in discovery order.
    """
    import matplotlib
    from matplotlib.ft2font import FT2Font

    paths = sorted(glob.glob(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "*.ttf")))
    if system_fonts:
        found = glob.glob("/usr/share/fonts/**/*.ttf", recursive=True)
        found += glob.glob("/usr/share/fonts/**/*.otf", recursive=True)
        paths += sorted(found)
    out, seen = [], set()
    for path in paths:
        if _SKIP_FONT.match(os.path.basename(path)):
            continue
        try:
            ft = FT2Font(path)
        except (OSError, RuntimeError, ValueError):
            continue
        key = (ft.family_name, ft.style_name)
        if key in seen:
            continue
        seen.add(key)
        out.append(path)
    return out


@dataclass(frozen=True)
class GlyphBank:
    """Rendered glyphs of every class, grouped by class.

    Attributes:
        images: uint8 ``(N, S, S)`` renders (255 = ink), one per (class, font).
        offsets: int64 ``(C,)`` first row of each class in ``images``.
        counts: int64 ``(C,)`` number of fonts (rows) of each class.
        chars: The character of each class.
        alphabets: The alphabet of each class.
        font_index: int64 ``(N,)`` index into ``fonts`` of each row.
        fonts: Font file paths used.
        render_seconds: Wall time it took to render the bank.
    """

    images: Tensor
    offsets: Tensor
    counts: Tensor
    chars: tuple[str, ...]
    alphabets: tuple[str, ...]
    font_index: Tensor
    fonts: tuple[str, ...]
    render_seconds: float

    @property
    def num_classes(self) -> int:
        """Number of classes (characters)."""
        return len(self.chars)

    def classes_of(self, alphabets: Sequence[str]) -> Tensor:
        """Indices of the classes that belong to ``alphabets`` (int64, ascending)."""
        keep = set(alphabets)
        return torch.tensor(
            [i for i, a in enumerate(self.alphabets) if a in keep], dtype=torch.int64
        )


_BANKS: dict[tuple, GlyphBank] = {}


def _style_rank(style: str) -> int:
    """0 regular, 1 italic, 2 bold, 3 bold italic, 4 anything else (condensed, light, display)."""
    words = set(style.lower().split())
    if words <= {"book", "regular", "roman", "normal", "medium"}:
        return 0
    if words in ({"italic"}, {"oblique"}):
        return 1
    if words == {"bold"}:
        return 2
    if words in ({"bold", "italic"}, {"bold", "oblique"}):
        return 3
    return 4


def _font_order(paths: Sequence[str]) -> list[int]:
    """Font priority: regular styles of every family, then italics, bolds, bold italics, others."""
    from matplotlib.ft2font import FT2Font

    families: dict[str, int] = {}
    keys = []
    for i, p in enumerate(paths):
        ft = FT2Font(p)
        family = families.setdefault(ft.family_name, len(families))
        keys.append((_style_rank(ft.style_name), family, ft.style_name, i))
    return [k[-1] for k in sorted(keys)]


def _supersample(image_size: int) -> int:
    """Supersampling factor: 3 at 28 px, down to 1 from 84 px (keeps render time bounded)."""
    return max(1, min(_SUPERSAMPLE, round(84 / image_size)))


def _render(font: object, ch: str, image_size: int) -> np.ndarray | None:
    """One glyph as uint8 ``(S, S)``, or ``None`` if it has no ink."""
    from PIL import Image, ImageDraw

    ss = _supersample(image_size)
    big = image_size * ss
    em = _EM_FRACTION * big
    side = int(2.4 * em)
    canvas = Image.new("L", (side, side), 0)
    ImageDraw.Draw(canvas).text((0.7 * em, 1.7 * em), ch, font=font, fill=255, anchor="ls")
    box = canvas.getbbox()
    if box is None:
        return None
    glyph = canvas.crop(box)
    w, h = glyph.size
    limit = _MAX_FRACTION * big
    if max(w, h) > limit:
        scale = limit / max(w, h)
        glyph = glyph.resize(
            (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BOX
        )
        w, h = glyph.size
    frame = Image.new("L", (big, big), 0)
    frame.paste(glyph, ((big - w) // 2, (big - h) // 2))
    out = np.asarray(frame.reduce(ss) if ss > 1 else frame, dtype=np.uint8)
    if int(out.max()) < 64 or int(out.sum(dtype=np.int64)) < 255:
        return None
    return out


def glyph_bank(
    image_size: int = 28,
    fonts: Sequence[str] | None = None,
    max_fonts_per_char: int = 8,
    min_fonts: int = 2,
    system_fonts: bool = True,
) -> GlyphBank:
    """Renders (once per process, then cached) the glyph bank.

    Args:
        image_size: Side of the rendered images in pixels. Defaults to 28.
        fonts: Font file paths; ``None`` (default) discovers them with
            :func:`discover_fonts`.
        max_fonts_per_char: Most fonts kept per class. Defaults to 8.
        min_fonts: Fewest distinct fonts a class needs. Defaults to 2.
        system_fonts: Passed to :func:`discover_fonts` when ``fonts`` is None.
            Defaults to True.

    Returns:
        The :class:`GlyphBank`.
    """
    from matplotlib.ft2font import FT2Font
    from PIL import ImageFont

    paths = tuple(fonts) if fonts is not None else tuple(discover_fonts(system_fonts))
    key = (image_size, paths, max_fonts_per_char, min_fonts)
    if key in _BANKS:
        return _BANKS[key]
    start = time.perf_counter()
    order = _font_order(paths)
    charmaps = [set(FT2Font(p).get_charmap()) for p in paths]
    em = round(_EM_FRACTION * image_size * _supersample(image_size))
    pil_fonts: dict[int, object] = {}
    rows: list[np.ndarray] = []
    offsets, counts, chars, alphabets, font_index = [], [], [], [], []
    seen: set[bytes] = set()
    for alphabet, ranges in ALPHABETS.items():
        for lo, hi in ranges:
            for code in range(lo, hi + 1):
                ch = chr(code)
                if unicodedata.category(ch)[0] not in "LNS" or unicodedata.decomposition(ch):
                    continue
                covering = [i for i in order if code in charmaps[i]]
                if len(covering) < min_fonts:
                    continue
                renders, used = [], []
                for i in covering:
                    if i not in pil_fonts:
                        pil_fonts[i] = ImageFont.truetype(
                            paths[i], em, layout_engine=ImageFont.Layout.BASIC
                        )
                    img = _render(pil_fonts[i], ch, image_size)
                    if img is not None:
                        renders.append(img)
                        used.append(i)
                        if len(renders) == max_fonts_per_char:
                            break
                if len(renders) < min_fonts:
                    continue
                signature = (renders[0] > 127).tobytes()
                if signature in seen:
                    continue
                seen.add(signature)
                offsets.append(len(rows))
                counts.append(len(renders))
                rows.extend(renders)
                chars.append(ch)
                alphabets.append(alphabet)
                font_index.extend(used)
    images = np.stack(rows) if rows else np.zeros((0, image_size, image_size), np.uint8)
    bank = GlyphBank(
        images=torch.from_numpy(images),
        offsets=torch.tensor(offsets, dtype=torch.int64),
        counts=torch.tensor(counts, dtype=torch.int64),
        chars=tuple(chars),
        alphabets=tuple(alphabets),
        font_index=torch.tensor(font_index, dtype=torch.int64),
        fonts=paths,
        render_seconds=time.perf_counter() - start,
    )
    _BANKS[key] = bank
    return bank


@register_source("glyphs")
class GlyphSource(TaskSource):
    """N-way K-shot classification of rendered characters (see module doc).

    An episode takes ``n_way`` classes from the split's alphabets, gives them
    the labels ``0..n_way-1`` in a random order, and holds ``k_shot`` support
    and ``k_query`` query images per class, grouped by class. ``support_x`` is
    ``(B, n_way * k_shot, 1, S, S)`` float32 in ``[0, 1]`` (ink = 1);
    ``support_y`` is ``(B, n_way * k_shot)`` int64.

    Args:
        n_way: Classes per episode. Defaults to 5.
        k_shot: Support images per class. Defaults to 1.
        k_query: Query images per class. Defaults to 5.
        image_size: Image side in pixels (>= 8). Defaults to 28.
        num_tasks: Number of episodes in the (train, val, test) splits.
            Defaults to ``(5000, 500, 500)``.
        seed: Seed of the episode population. Defaults to 0.
        min_fonts: Fewest distinct fonts a character needs to be a class.
            Defaults to 2.
        max_fonts_per_char: Most fonts rendered per character. Defaults to 8.
        system_fonts: Also use fonts under ``/usr/share/fonts``. Defaults to True.
        jitter: Apply the random affine jitter. Defaults to True.

    Raises:
        ValueError: If an argument is out of range, or (on first use, when
            the bank is rendered) a split has fewer than ``n_way`` classes.
    """

    likelihood = "categorical"
    default_model = "conv4"

    def __init__(
        self,
        n_way: int = 5,
        k_shot: int = 1,
        k_query: int = 5,
        image_size: int = 28,
        num_tasks: tuple[int, int, int] = (5000, 500, 500),
        seed: int = 0,
        min_fonts: int = 2,
        max_fonts_per_char: int = 8,
        system_fonts: bool = True,
        jitter: bool = True,
    ) -> None:
        self.n_way = check_int("n_way", n_way, 2, "pass e.g. n_way=5")
        self.num_classes = self.n_way
        self.k_shot = check_int("k_shot", k_shot, 1, "pass e.g. k_shot=1")
        self.k_query = check_int("k_query", k_query, 0, "pass e.g. k_query=5")
        self.image_size = check_int("image_size", image_size, 8, "pass e.g. image_size=28")
        self._num_tasks = check_num_tasks(num_tasks, "(5000, 500, 500)")
        self.seed = check_int("seed", seed, 0, "pass e.g. seed=0")
        self.min_fonts = check_int("min_fonts", min_fonts, 1, "pass e.g. min_fonts=2")
        self.max_fonts_per_char = check_int(
            "max_fonts_per_char", max_fonts_per_char, 1, "pass e.g. max_fonts_per_char=8"
        )
        if self.max_fonts_per_char < self.min_fonts:
            raise ValueError(
                f"max_fonts_per_char={max_fonts_per_char} must be >= min_fonts={min_fonts}; "
                "raise max_fonts_per_char."
            )
        self.system_fonts = bool(system_fonts)
        self.jitter = bool(jitter)
        self._pools: dict[str, Tensor] | None = None
        self._bank: GlyphBank | None = None

    @property
    def x_shape(self) -> tuple[int, ...]:
        """Shape of one input: ``(1, image_size, image_size)``."""
        return (1, self.image_size, self.image_size)

    @property
    def y_shape(self) -> tuple[int, ...]:
        """Shape of one target: ``()`` (an int64 label)."""
        return ()

    @property
    def bank(self) -> GlyphBank:
        """The rendered :class:`GlyphBank` (rendered on first access, then cached)."""
        if self._bank is None:
            self._bank = glyph_bank(
                self.image_size, None, self.max_fonts_per_char, self.min_fonts, self.system_fonts
            )
        return self._bank

    def num_tasks(self, split: Split) -> int:
        """Number of episodes in ``split``."""
        return self._num_tasks[split_index(split)]

    def alphabets(self, split: Split) -> tuple[str, ...]:
        """Names of the alphabets of ``split`` that have at least one class."""
        present = set(self.bank.alphabets)
        return tuple(a for a in ALPHABET_SPLITS[check_split(split)] if a in present)

    def classes(self, split: Split) -> Tensor:
        """Bank class indices available to ``split`` (int64, ascending)."""
        sid = split_index(split)
        if self._pools is None:
            bank = self.bank
            pools = {s: bank.classes_of(ALPHABET_SPLITS[s]) for s in SPLITS}
            for s, pool in pools.items():
                if len(pool) < self.n_way:
                    raise ValueError(
                        f"n_way={self.n_way} exceeds the {len(pool)} glyph classes of split {s!r}; "
                        f"lower n_way or min_fonts={self.min_fonts}."
                    )
            self._pools = pools
        return self._pools[SPLITS[sid]]

    def episode_classes(self, split: Split, index: Tensor | int) -> Tensor:
        """Bank class of each label of episodes ``index``.

        Args:
            split: ``"train"``, ``"val"`` or ``"test"``.
            index: Episode position(s) within the split.

        Returns:
            int64 ``(B, n_way)``; entry ``[b, l]`` is the bank class of label ``l``.
        """
        plan = self._plan(split, torch.as_tensor(index, dtype=torch.int64).reshape(-1))
        out = torch.empty_like(plan[1])
        out.scatter_(1, plan[2], plan[1])
        return out

    def _plan(self, split: Split, index: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Rows into the bank, classes, labels and jitter for each example of each episode."""
        sid = split_index(split)
        m = self._num_tasks[sid]
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= m):
            raise ValueError(
                f"task index out of range for split {split!r} with {m} tasks; "
                f"use indices in [0, {m})."
            )
        pool = self.classes(split).numpy()
        bank = self.bank
        offsets, counts = bank.offsets.numpy(), bank.counts.numpy()
        n, per = self.n_way, self.k_shot + self.k_query
        b = index.numel()
        rows = np.zeros((b, n, per), dtype=np.int64)
        classes = np.zeros((b, n), dtype=np.int64)
        labels = np.zeros((b, n), dtype=np.int64)
        jit = np.zeros((b, n, per, 4), dtype=np.float64)
        for j, i in enumerate(index.tolist()):
            rng = np.random.default_rng(np.random.SeedSequence((self.seed, _SOURCE_TAG, sid, i)))
            cls = pool[rng.choice(len(pool), size=n, replace=False)]
            classes[j] = cls
            labels[j] = rng.permutation(n)
            for c in range(n):
                order = rng.permutation(counts[cls[c]])
                rows[j, c] = offsets[cls[c]] + order[np.arange(per) % len(order)]
            jit[j] = rng.uniform(-1.0, 1.0, size=(n, per, 4))
        return (
            torch.from_numpy(rows),
            torch.from_numpy(classes),
            torch.from_numpy(labels),
            torch.from_numpy(jit),
            index,
        )

    def _jittered(self, images: Tensor, jit: Tensor) -> Tensor:
        """Applies the affine jitter ``jit`` (``(N, 4)`` in ``[-1, 1]``) to ``images``."""
        if not self.jitter or images.shape[0] == 0:
            return images
        jit = jit.to(torch.float32)
        angle = torch.deg2rad(jit[:, 0] * _MAX_ROTATION_DEG)
        lo, hi = _SCALE_RANGE
        scale = lo + (hi - lo) * (jit[:, 1] + 1) / 2
        shift = jit[:, 2:] * (_MAX_SHIFT_PX_AT_28 * self.image_size / 28) * 2 / self.image_size
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        # grid_sample maps output coordinates to input ones: in = R(-angle) / scale (out - shift)
        a = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)
        t = -(a @ shift.unsqueeze(-1)).squeeze(-1)
        theta = torch.cat([a, t.unsqueeze(-1)], dim=-1)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(
            images, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )

    def get_tasks(self, split: Split, index: Tensor) -> TaskBatch:
        """Episodes ``index`` of ``split`` as a :class:`~hvi.tasks.TaskBatch` (see class doc)."""
        index = torch.as_tensor(index, dtype=torch.int64).reshape(-1)
        rows, _, labels, jit, index = self._plan(split, index)
        b, n, per = rows.shape
        s = self.image_size
        imgs = self.bank.images[rows.reshape(-1)].to(torch.float32).div_(255.0).unsqueeze(1)
        imgs = self._jittered(imgs, jit.reshape(-1, 4)).clamp_(0.0, 1.0)
        imgs = imgs.view(b, n, per, 1, s, s)
        lab = labels.view(b, n, 1).expand(b, n, per)
        k = self.k_shot
        return TaskBatch(
            support_x=imgs[:, :, :k].reshape(b, n * k, 1, s, s),
            support_y=lab[:, :, :k].reshape(b, n * k),
            query_x=imgs[:, :, k:].reshape(b, n * self.k_query, 1, s, s),
            query_y=lab[:, :, k:].reshape(b, n * self.k_query),
            task_index=index,
            num_tasks=self.num_tasks(split),
        )
