"""People and garments of the synthetic catalog: build, skin, hair; a top with a texture (solid,
stripes, checks, dots, a logo patch on the chest) and sleeves, bottoms (trousers, shorts,
skirt). Everything is drawn from (seed, person index), so seeds never share a colour."""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

BACKGROUND = (242, 240, 235)  # light, even catalog background (garment colours are drawn to stand out from it)

TEXTURES = ("solid", "stripes", "checks", "dots", "logo")
BOTTOMS_KINDS = ("trousers", "shorts", "skirt")
SLEEVES = ("short", "long")

# RNG streams of a person index: independent of each other and of how many poses are drawn.
PERSON_STREAM, GARMENT_STREAM, POSE_STREAM = 0, 1, 2

Colour = tuple[int, int, int]

SKIN_TONES: tuple[Colour, ...] = (
    (247, 214, 186),
    (234, 192, 160),
    (214, 168, 130),
    (188, 140, 100),
    (150, 104, 72),
    (108, 72, 50),
)
HAIR_COLOURS: tuple[Colour, ...] = (
    (28, 24, 22),
    (58, 40, 28),
    (96, 64, 40),
    (150, 110, 62),
    (196, 160, 96),
    (120, 50, 30),
    (150, 150, 150),
)
SHOE_COLOURS: tuple[Colour, ...] = ((30, 30, 32), (70, 45, 30), (120, 90, 60), (60, 60, 70), (150, 30, 40))
BOTTOMS_COLOURS: tuple[Colour, ...] = (
    (58, 80, 122),
    (34, 34, 40),
    (168, 148, 108),
    (108, 108, 114),
    (40, 50, 82),
    (88, 94, 58),
    (110, 36, 52),
)


@dataclass(frozen=True)
class Person:
    """One model: build and looks, the same in all of their photos (body units: the standing
    figure is about 1 tall)."""

    id: str
    skin: Colour
    hair: Colour
    hair_style: str  # short or long
    shoes: Colour
    shoulder_width: float  # half the distance between the shoulder joints
    hip_width: float  # half the distance between the hip joints
    limb_scale: float  # thickness of arms and legs
    height: float  # share of the picture's height the standing figure takes


@dataclass(frozen=True)
class Garment:
    """The outfit a person wears in all of their photos; `id` is unique across seeds."""

    id: str
    texture: str  # one of TEXTURES
    colours: tuple[Colour, Colour]  # main colour, pattern colour (stripes, checks, dots, logo)
    pattern_size: float  # period of stripes, checks and dots; size of the logo (body units)
    sleeves: str  # short or long
    bottoms: str  # trousers, shorts or skirt
    bottoms_colour: Colour

    def describe(self) -> dict:
        return {
            "garment": self.id,
            "texture": self.texture,
            "top_colour": hex_colour(self.colours[0]),
            "pattern_colour": hex_colour(self.colours[1]),
            "pattern_size": round(self.pattern_size, 4),
            "sleeves": self.sleeves,
            "bottoms": self.bottoms,
            "bottoms_colour": hex_colour(self.bottoms_colour),
        }


def hex_colour(colour: Colour) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour)


def person_id(seed: int, index: int) -> str:
    return f"s{seed}p{index:04d}"


def garment_id(seed: int, index: int) -> str:
    return f"s{seed}g{index:04d}"


def sample_person(seed: int, index: int) -> Person:
    rng = np.random.default_rng([seed, index, PERSON_STREAM])
    return Person(
        id=person_id(seed, index),
        skin=_jitter(rng, SKIN_TONES[rng.integers(len(SKIN_TONES))], 8),
        hair=_jitter(rng, HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))], 10),
        hair_style=("short", "long")[rng.integers(2)],
        shoes=_jitter(rng, SHOE_COLOURS[rng.integers(len(SHOE_COLOURS))], 8),
        shoulder_width=float(rng.uniform(0.098, 0.118)),
        hip_width=float(rng.uniform(0.052, 0.066)),
        limb_scale=float(rng.uniform(0.9, 1.12)),
        height=float(rng.uniform(0.84, 0.9)),
    )


def sample_garment(seed: int, index: int) -> Garment:
    """The outfit of person `index` of dataset `seed`. Textures take turns, so every kind is
    equally common; the colours are drawn from (seed, index), so two seeds share no garment."""
    rng = np.random.default_rng([seed, index, GARMENT_STREAM])
    texture = TEXTURES[(seed + index) % len(TEXTURES)]
    main = _garment_colour(rng)
    pattern = _contrasting_colour(rng, main)
    bottoms = BOTTOMS_KINDS[rng.choice(len(BOTTOMS_KINDS), p=(0.5, 0.25, 0.25))]
    while True:
        if rng.random() < 0.7:
            bottoms_colour = _jitter(rng, BOTTOMS_COLOURS[rng.integers(len(BOTTOMS_COLOURS))], 14)
        else:
            bottoms_colour = _garment_colour(rng)
        if _rgb_distance(bottoms_colour, main) > 70:
            break
    return Garment(
        id=garment_id(seed, index),
        texture=texture,
        colours=(main, pattern),
        pattern_size=float(rng.uniform(0.075, 0.1)),
        sleeves=SLEEVES[rng.integers(len(SLEEVES))],
        bottoms=bottoms,
        bottoms_colour=bottoms_colour,
    )


def _jitter(rng: np.random.Generator, colour: Colour, amount: int) -> Colour:
    values = np.asarray(colour) + rng.integers(-amount, amount + 1, size=3)
    return tuple(int(v) for v in np.clip(values, 0, 255))


def _luma(colour: Colour) -> float:
    r, g, b = colour
    return 0.299 * r + 0.587 * g + 0.114 * b


def _rgb_distance(a: Colour, b: Colour) -> float:
    return float(np.linalg.norm(np.subtract(a, b, dtype=np.float64)))


def _stands_out(colour: Colour) -> bool:
    """Far enough from the background that the garment reads as part of the figure."""
    return _rgb_distance(colour, BACKGROUND) > 60 and _luma(colour) < 215


def _garment_colour(rng: np.random.Generator) -> Colour:
    while True:
        hue, saturation, value = rng.uniform(0, 1), rng.uniform(0.3, 0.95), rng.uniform(0.3, 0.92)
        colour = tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, saturation, value))
        if _stands_out(colour):
            return colour


def _contrasting_colour(rng: np.random.Generator, main: Colour) -> Colour:
    """A pattern colour that shows on `main`: a clearly lighter or darker shade, another hue,
    or a near-neutral."""
    while True:
        if rng.random() < 0.3:
            level = rng.choice([rng.uniform(20, 60), rng.uniform(170, 205)])
            colour = _jitter(rng, (int(level),) * 3, 6)
        else:
            colour = _garment_colour(rng)
        if (
            _luma(colour) < 215
            and _rgb_distance(colour, BACKGROUND) > 45
            and (abs(_luma(colour) - _luma(main)) > 55 or _rgb_distance(colour, main) > 140)
        ):
            return colour
