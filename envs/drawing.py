"""Small NumPy drawing helpers for the games' ``render()``: cell grids, heat maps, borders, dots."""
from __future__ import annotations

import numpy as np

BACKGROUND = (24, 24, 32)
GRID_LINE = (60, 60, 72)
WHITE = (255, 255, 255)
YELLOW = (250, 210, 40)
RED = (220, 60, 60)
BLUE = (60, 120, 230)
GREEN = (60, 190, 90)
GREY = (120, 120, 130)
PALETTE = ((60, 120, 230), (230, 120, 40), (160, 80, 200), (40, 180, 180), (200, 200, 60), (230, 90, 160))


def canvas(rows: int, cols: int, cell: int) -> np.ndarray:
    """A ``[rows*cell, cols*cell, 3]`` uint8 image with background and grid lines."""
    img = np.empty((rows * cell, cols * cell, 3), dtype=np.uint8)
    img[:] = BACKGROUND
    img[::cell, :] = GRID_LINE
    img[:, ::cell] = GRID_LINE
    return img


def fill_cell(img: np.ndarray, r: int, c: int, cell: int, color: tuple[int, int, int], margin: int = 1) -> None:
    """Fill cell ``(r, c)`` leaving ``margin`` pixels on each side."""
    img[r * cell + margin : (r + 1) * cell - margin + 1, c * cell + margin : (c + 1) * cell - margin + 1] = color


def dot(img: np.ndarray, r: int, c: int, cell: int, color: tuple[int, int, int], frac: float = 0.6) -> None:
    """A filled disc in cell ``(r, c)`` with diameter ``frac * cell``."""
    yy, xx = np.mgrid[0:cell, 0:cell]
    centre = (cell - 1) / 2.0
    disc = (yy - centre) ** 2 + (xx - centre) ** 2 <= (frac * cell / 2.0) ** 2
    block = img[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell]
    block[disc[: block.shape[0], : block.shape[1]]] = color


def border(img: np.ndarray, r: int, c: int, cell: int, color: tuple[int, int, int], width: int = 2) -> None:
    """An outline of ``width`` pixels around cell ``(r, c)``."""
    y0, y1, x0, x1 = r * cell, (r + 1) * cell, c * cell, (c + 1) * cell
    img[y0 : y0 + width, x0:x1] = color
    img[y1 - width : y1, x0:x1] = color
    img[y0:y1, x0 : x0 + width] = color
    img[y0:y1, x1 - width : x1] = color


def heat_colors(values: np.ndarray) -> np.ndarray:
    """Diverging colours ``[..., 3]`` uint8: red below zero, green above, dark at zero (scaled by max |v|)."""
    v = np.asarray(values, dtype=np.float64)
    scale = float(np.max(np.abs(v))) or 1.0
    x = np.clip(v / scale, -1.0, 1.0)[..., None]  # [..., 1]
    dark = np.array(BACKGROUND, np.float64)
    pos = dark + x.clip(0, 1) * (np.array(GREEN, np.float64) - dark)
    neg = dark + (-x).clip(0, 1) * (np.array(RED, np.float64) - dark)
    return np.where(x >= 0, pos, neg).round().astype(np.uint8)


def heat_map(values_RC: np.ndarray, cell: int) -> np.ndarray:
    """A ``[R*cell, C*cell, 3]`` image of a 2-D array of values."""
    colors = heat_colors(values_RC)  # [R, C, 3]
    img = np.repeat(np.repeat(colors, cell, axis=0), cell, axis=1)
    img[::cell, :] = GRID_LINE
    img[:, ::cell] = GRID_LINE
    return img
