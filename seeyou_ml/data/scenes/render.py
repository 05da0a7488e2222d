"""Rendering scenes to PIL images: the shapes' outlines filled, a low-contrast background, anti-aliased compositing.

Shapes are drawn as masks at `SUPERSAMPLE` times the output resolution and box-filtered down, which gives smooth
edges at 64 pixels for the price of a few small PIL draws. Each shape gets a thin darker rim so that light
colours (yellow, orange) stay visible on the light background. The background is a light, low-saturation
gradient with faint noise: it varies per image without competing with the objects.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from .scene import COLOURS, Scene, SceneObject, shape_polygon


SUPERSAMPLE = 4


def object_masks(obj: SceneObject, image_size: int) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """Fill and rim coverage of one object, over the patch of the image that holds it.

    Drawing only the patch (not the whole supersampled canvas) keeps rendering cheap.

    Returns:
        `(rows, cols)` slices of the patch, and two float32 arrays of the patch's shape (h, w) in [0, 1]: the
        fraction of each pixel the shape covers and the fraction its rim covers.
    """
    ss = SUPERSAMPLE
    points = shape_polygon(obj.shape, obj.cx * image_size, obj.cy * image_size, obj.diameter * image_size / 2)
    x0 = max(0, math.floor(min(p[0] for p in points)) - 1)
    y0 = max(0, math.floor(min(p[1] for p in points)) - 1)
    x1 = min(image_size, math.ceil(max(p[0] for p in points)) + 1)
    y1 = min(image_size, math.ceil(max(p[1] for p in points)) + 1)
    local = [((x - x0) * ss, (y - y0) * ss) for x, y in points]
    width, height = x1 - x0, y1 - y0
    fill, rim = Image.new("L", (width * ss, height * ss), 0), Image.new("L", (width * ss, height * ss), 0)
    rim_width = max(1, round(0.8 * ss * image_size / 64))
    ImageDraw.Draw(fill).polygon(local, fill=255)
    ImageDraw.Draw(rim).polygon(local, outline=255, width=rim_width)
    fill = np.asarray(fill.resize((width, height), Image.Resampling.BOX), dtype=np.float32) / 255.0
    rim = np.asarray(rim.resize((width, height), Image.Resampling.BOX), dtype=np.float32) / 255.0
    return (slice(y0, y1), slice(x0, x1)), fill, rim


def background(rng: np.random.Generator, image_size: int) -> np.ndarray:
    """A light, low-contrast background: pale base colour, a soft linear gradient and faint noise.

    Returns:
        float32 array of shape (image_size, image_size, 3) with values in [0, 255].
    """
    base = 214 + rng.uniform(-14, 14) + rng.uniform(-8, 8, size=3)  # (3,) pale, slightly tinted
    angle = rng.uniform(0, 2 * math.pi)
    ramp = np.linspace(-1, 1, image_size, dtype=np.float32)
    gradient = math.cos(angle) * ramp[None, :] + math.sin(angle) * ramp[:, None]  # (H, W)
    image = base[None, None, :] + rng.uniform(6, 14) * gradient[:, :, None]  # (H, W, 3)
    image = image + rng.normal(0, 2.5, size=(image_size, image_size, 1))  # grey noise, (H, W, 1) broadcast
    return np.clip(image, 0, 255).astype(np.float32)


def render_scene(scene: Scene, image_size: int, rng: np.random.Generator) -> Image.Image:
    """Draws `scene` as an RGB image of side `image_size`; `rng` draws the background."""
    canvas = background(rng, image_size)  # (H, W, 3)
    for obj in scene.objects:
        patch, fill, rim = object_masks(obj, image_size)
        colour = np.asarray(COLOURS[obj.colour], dtype=np.float32)
        region = canvas[patch] * (1 - fill[..., None]) + colour * fill[..., None]  # (h, w, 3)
        # A rim at 55 % of the fill colour: dark enough to outline yellow, subtle on black.
        rim_alpha = 0.7 * rim[..., None]
        canvas[patch] = region * (1 - rim_alpha) + 0.55 * colour * rim_alpha
    return Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8))
