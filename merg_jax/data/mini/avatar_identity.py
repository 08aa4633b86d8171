"""The 65 procedural avatar identities of AvaMERG-mini: one `Identity` (face geometry, colours, hair, extras) per id.

Feature positions (eyes, brows, mouth) vary only by a pixel or two between identities, as in most avatar sets:
identities differ by face shape, colours, hair, glasses and beards, and an expression moves the same features in
the same places on every face.

Everything derives deterministically from the avatar id: age and gender come from `labels.avatar_profile` (so a
face matches the profile's age and sex), the rest from a PCG64 stream seeded by the id, read only through
`Generator.random()` (raw uniform doubles, whose values numpy keeps stable across versions — `integers` and
`choice` have changed algorithms before). Discrete traits are picked from palettes by those uniforms.

Coordinates are normalised to the image: x and y in [0, 1], y pointing down, so one identity renders at any size.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from merg_jax.data import labels

Colour = tuple[float, float, float]  # sRGB in [0, 1]


def _rgb(r: int, g: int, b: int) -> Colour:
    return (r / 255.0, g / 255.0, b / 255.0)


# Light to dark, roughly the Fitzpatrick range.
SKIN_TONES: tuple[Colour, ...] = tuple(_rgb(*c) for c in (
    (255, 226, 200), (243, 204, 172), (232, 185, 150), (214, 160, 120), (190, 135, 95),
    (160, 108, 72), (128, 84, 56), (98, 64, 44),
))
NATURAL_HAIR: tuple[Colour, ...] = tuple(_rgb(*c) for c in (
    (28, 24, 24), (55, 38, 28), (95, 62, 40), (135, 84, 48), (150, 64, 36), (205, 170, 110), (230, 205, 150),
    (170, 75, 40),
))
GREY_HAIR: tuple[Colour, ...] = tuple(_rgb(*c) for c in ((150, 148, 145), (200, 198, 192), (232, 230, 225)))
EYE_COLOURS: tuple[Colour, ...] = tuple(_rgb(*c) for c in (
    (55, 32, 20), (95, 58, 30), (120, 95, 50), (70, 115, 70), (70, 115, 185), (115, 130, 150),
))
SHIRT_COLOURS: tuple[Colour, ...] = tuple(_rgb(*c) for c in (
    (40, 70, 140), (160, 40, 50), (40, 120, 80), (230, 230, 225), (50, 50, 55), (200, 150, 40),
    (110, 60, 140), (60, 140, 160), (220, 120, 90), (120, 120, 125),
))
BACKGROUNDS: tuple[tuple[Colour, Colour], ...] = tuple((_rgb(*a), _rgb(*b)) for a, b in (
    ((196, 214, 232), (150, 172, 200)), ((226, 214, 196), (190, 170, 150)), ((206, 226, 206), (160, 190, 165)),
    ((232, 206, 214), (200, 165, 178)), ((215, 215, 220), (170, 170, 180)), ((236, 226, 190), (205, 190, 140)),
    ((200, 222, 226), (140, 180, 190)), ((222, 206, 236), (180, 160, 205)),
))

MALE_HAIR = ("short", "crew", "side_part", "curly_short", "spiky", "long")
FEMALE_HAIR = ("long", "bob", "bun", "curly_long", "ponytail", "fringe")
BEARDS = ("stubble", "full", "moustache", "goatee")


@dataclasses.dataclass(frozen=True)
class Identity:
    """One avatar's appearance. Lengths are fractions of the image side; colours sRGB in [0, 1]."""

    avatar_id: int
    age: str
    gender: str
    # face: centre, half width, half height, jaw taper (0 = ellipse, larger = narrower chin)
    cx: float
    cy: float
    face_a: float
    face_b: float
    jaw: float
    skin: Colour
    # eyes: vertical position, half distance between the eye centres, half width, upper/lower lid heights, slant
    eye_y: float
    eye_dx: float
    eye_w: float
    eye_hu: float
    eye_hl: float
    eye_slant: float
    iris_frac: float
    eye_colour: Colour
    # brows: rest height above the eyes, half length, thickness, arch
    brow_gap: float
    brow_len: float
    brow_t: float
    brow_arch: float
    brow_colour: Colour
    nose_y: float
    nose_w: float
    # mouth: centre height, half width, lip thickness (upper, lower), colour
    mouth_y: float
    mouth_w: float
    lip_u: float
    lip_l: float
    lip_colour: Colour
    hair_style: str
    hair_colour: Colour
    hair_volume: float
    hair_phase: float
    beard: str | None
    glasses: str | None
    glasses_colour: Colour
    earrings: bool
    shirt: Colour
    background: tuple[Colour, Colour]
    wrinkles: float  # 0 = none .. 1 = strong


def _pick(u: float, options: tuple):
    return options[min(int(u * len(options)), len(options) - 1)]


def _mix(a: Colour, b: Colour, t: float) -> Colour:
    return tuple(float(x + (y - x) * t) for x, y in zip(a, b))  # type: ignore[return-value]


def _brow_colour(hair: Colour, skin: Colour, elderly: bool) -> Colour:
    """Brows a bit darker than the hair, and always clearly darker than the skin so expressions read."""
    brow = _mix(hair, _rgb(90, 85, 80), 0.4) if elderly else tuple(float(c * 0.8) for c in hair)
    limit = 0.55 * float(np.mean(skin))
    scale = min(1.0, limit / max(float(np.mean(brow)), 1e-6))
    return tuple(float(c * scale) for c in brow)  # type: ignore[return-value]


def check_avatar_id(avatar_id) -> int:
    """`avatar_id` as a Python int if it is an integer (numpy ones too) in 0..64; a ValueError names it otherwise."""
    if isinstance(avatar_id, np.integer):
        avatar_id = int(avatar_id)
    return labels.avatar_index(avatar_id)


def identity(avatar_id: int) -> Identity:
    """The appearance of avatar `avatar_id` (0..64); a ValueError names a bad id."""
    return _identity(check_avatar_id(avatar_id))


@functools.lru_cache(maxsize=None)
def _identity(avatar_id: int) -> Identity:
    age, gender, _ = labels.avatar_profile(avatar_id)
    rng = np.random.default_rng(np.random.SeedSequence([0xA7A7A, avatar_id]))
    u = lambda lo=0.0, hi=1.0: float(lo + (hi - lo) * rng.random())  # noqa: E731
    child, elderly, female = age == "child", age == "elderly", gender == "female"

    # Spread the big discrete traits by the id itself (consecutive ids with the same profile look different),
    # then jitter. 65 ids over 8 skin tones x 6 styles x 8 hair colours.
    skin = SKIN_TONES[(avatar_id * 3 + int(u(0, 2))) % len(SKIN_TONES)]
    styles = FEMALE_HAIR if female else MALE_HAIR
    style = styles[(avatar_id * 5 + int(u(0, 2))) % len(styles)]
    if elderly and not female and u() < 0.5:
        style = "bald"
    if elderly:
        hair = _pick(u(), GREY_HAIR)
    elif age == "middle-aged" and u() < 0.3:
        hair = _mix(_pick(u(), NATURAL_HAIR), GREY_HAIR[0], 0.5)
    else:
        hair = NATURAL_HAIR[(avatar_id * 7 + int(u(0, 2))) % len(NATURAL_HAIR)]
    # Dark skin with dark-brown hair still needs a visible hairline: push the hair darker than the skin.
    if abs(float(np.mean(hair)) - float(np.mean(skin))) < 0.12 and np.mean(skin) < 0.45:
        hair = tuple(float(c * 0.45) for c in hair)  # type: ignore[assignment]

    face_a = u(0.255, 0.295) * (1.03 if child else 1.0)
    face_b = face_a * (u(1.12, 1.22) if child else u(1.22, 1.42))
    eye_scale = 1.1 if child else 1.0
    eye_w = u(0.056, 0.068) * eye_scale
    lip_base = _mix(skin, _rgb(176, 62, 66), u(0.3, 0.45) if not female else u(0.45, 0.6))
    lip_colour = tuple(float(c * 0.88) for c in lip_base)
    cy = u(0.505, 0.52)
    beard = None
    if not female and not child and u() < 0.55:
        beard = _pick(u(), BEARDS)
    glasses = None
    if u() < (0.55 if elderly else 0.25):
        glasses = "round" if u() < 0.5 else "square"
    return Identity(
        avatar_id=avatar_id, age=age, gender=gender,
        cx=0.5 + u(-0.01, 0.01), cy=cy, face_a=face_a, face_b=face_b, jaw=u(0.05, 0.3) if not child else u(0.0, 0.1),
        skin=skin,
        eye_y=cy - u(0.026, 0.036) + (0.006 if child else 0.0), eye_dx=u(0.105, 0.118), eye_w=eye_w,
        eye_hu=eye_w * u(0.42, 0.55), eye_hl=eye_w * u(0.25, 0.35), eye_slant=u(-0.08, 0.15),
        iris_frac=u(0.42, 0.5), eye_colour=_pick(u(), EYE_COLOURS),
        brow_gap=u(0.052, 0.06), brow_len=eye_w * u(1.05, 1.25),
        brow_t=u(0.012, 0.018) * (0.8 if female else 1.0), brow_arch=u(0.004, 0.012),
        brow_colour=_brow_colour(hair, skin, elderly),
        nose_y=cy + u(0.1, 0.112), nose_w=u(0.03, 0.044),
        mouth_y=cy + u(0.19, 0.202), mouth_w=u(0.088, 0.105) * (0.9 if child else 1.0),
        lip_u=u(0.01, 0.015), lip_l=u(0.013, 0.019), lip_colour=lip_colour,  # type: ignore[arg-type]
        hair_style=style, hair_colour=hair, hair_volume=u(0.6, 1.4),  # type: ignore[arg-type]
        hair_phase=u(0, 2 * np.pi), beard=beard, glasses=glasses,
        glasses_colour=_pick(u(), (_rgb(30, 30, 30), _rgb(120, 80, 40), _rgb(150, 150, 160))),
        earrings=female and u() < 0.5,
        shirt=SHIRT_COLOURS[(avatar_id * 3 + avatar_id // 8) % len(SHIRT_COLOURS)],
        background=BACKGROUNDS[(avatar_id + avatar_id // 8) % len(BACKGROUNDS)],
        wrinkles={"elderly": 1.0, "middle-aged": 0.45}.get(age, 0.0),
    )


__all__ = ["Identity", "check_avatar_id", "identity"]
