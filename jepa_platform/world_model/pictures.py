"""Trajectory pictures: the rooms, the forbidden regions, the path, the start, the goal and a hierarchical planner's
subgoals (PIL only)."""

from __future__ import annotations

import math
from typing import Any

from PIL import Image, ImageDraw

from jepa_platform.world_model.mpc import Episode

SIDE = 192


def _px(v: float) -> float:
    return v * SIDE


def episode_picture(episode: Episode, geometry: dict[str, Any], success_radius: float, title: str = "") -> Image.Image:
    """A ``SIDE`` x ``SIDE`` picture of one episode in the unit square (two-rooms geometry when given)."""
    image = Image.new("RGB", (SIDE, SIDE + 14), (250, 248, 240))
    draw = ImageDraw.Draw(image, "RGBA")
    for x0, y0, x1, y1 in geometry.get("forbidden", []):
        draw.rectangle([_px(x0), _px(y0), _px(x1), _px(y1)], fill=(230, 60, 60, 70), outline=(200, 40, 40, 255))
    for x0, y0, x1, y1 in geometry.get("walls", []):  # box walls (the maze)
        draw.rectangle([_px(x0), _px(y0), _px(x1), _px(y1)], fill=(70, 70, 80))
    if "random_door" in geometry:  # the door that may close: outlined
        x0, y0, x1, y1 = geometry["random_door"]
        draw.rectangle([_px(x0), _px(y0), _px(x1), _px(y1)], outline=(70, 70, 80), width=1)
    if "wall_position" in geometry:
        w, t = geometry["wall_position"], geometry["wall_thickness"] / 2
        d, h = geometry["door_position"], geometry["door_width"] / 2
        segments = [(0.0, d - h), (d + h, 1.0)]
        for a, b in segments:
            if geometry.get("layout", "vertical") == "vertical":
                draw.rectangle([_px(w - t), _px(a), _px(w + t), _px(b)], fill=(70, 70, 80))
            else:
                draw.rectangle([_px(a), _px(w - t), _px(b), _px(w + t)], fill=(70, 70, 80))
    r = _px(success_radius)
    gx, gy = _px(episode.goal[0]), _px(episode.goal[1])
    draw.ellipse([gx - r, gy - r, gx + r, gy + r], outline=(200, 150, 0), width=2)
    path = [(_px(x), _px(y)) for x, y in episode.states]
    if len(path) > 1:
        draw.line(path, fill=(30, 90, 200), width=2)
    for i, (_step, x, y) in enumerate(episode.subgoals):  # subgoals: numbered orange diamonds where level 2 decodes them
        if math.isfinite(x) and math.isfinite(y):
            cx, cy = _px(x), _px(y)
            draw.polygon([(cx, cy - 5), (cx + 5, cy), (cx, cy + 5), (cx - 5, cy)], fill=(240, 150, 20, 170), outline=(160, 90, 0))
            draw.text((cx + 4, cy - 12), str(i + 1), fill=(120, 60, 0))
    sx, sy = path[0]
    draw.ellipse([sx - 4, sy - 4, sx + 4, sy + 4], fill=(40, 160, 60))
    ex, ey = path[-1]
    draw.ellipse([ex - 3, ey - 3, ex + 3, ey + 3], fill=(30, 90, 200))
    status = "success" if episode.success else "failed"
    caption = f"{title} {status} {episode.steps} steps" + (f" {episode.violations} viol." if episode.violations else "")
    draw.text((3, SIDE + 1), caption, fill=(0, 0, 0))
    return image


def grid(pictures: list[Image.Image], columns: int = 10) -> Image.Image:
    """The pictures tiled ``columns`` wide, at half size."""
    thumbs = [p.resize((p.width // 2, p.height // 2)) for p in pictures]
    w, h = thumbs[0].size
    rows = math.ceil(len(thumbs) / columns)
    sheet = Image.new("RGB", (w * min(columns, len(thumbs)), h * rows), (255, 255, 255))
    for i, thumb in enumerate(thumbs):
        sheet.paste(thumb, ((i % columns) * w, (i // columns) * h))
    return sheet
