"""AvaMERG label sets (DESIGN §2) and index helpers.

The order of every tuple is fixed: class indices used by classifiers, datasets and checkpoints are positions in
these tuples, so never reorder them (append only).
"""

from __future__ import annotations

from typing import Sequence

# The 7 multimodal emotions that speech and video carry.
EMOTIONS_7: tuple[str, ...] = ("sad", "happy", "angry", "surprised", "fear", "contempt", "disgusted")

# The 32 EmpatheticDialogues emotions used for text (Rashkin et al. 2019), in the dataset's usual order.
EMOTIONS_32: tuple[str, ...] = (
    "surprised", "excited", "annoyed", "proud", "angry", "sad", "grateful", "lonely",
    "impressed", "afraid", "disgusted", "confident", "terrified", "hopeful", "anxious", "disappointed",
    "joyful", "prepared", "guilty", "furious", "nostalgic", "jealous", "anticipating", "embarrassed",
    "content", "devastated", "sentimental", "caring", "trusting", "ashamed", "apprehensive", "faithful",
)

# Each multimodal emotion -> the EmpatheticDialogues label that names it in text. ED has no "happy", "fear" or
# "contempt": the closest labels are "joyful", "afraid" and "annoyed" (dismissive irritation at someone).
MULTIMODAL_TO_ED: dict[str, str] = {
    "sad": "sad",
    "happy": "joyful",
    "angry": "angry",
    "surprised": "surprised",
    "fear": "afraid",
    "contempt": "annoyed",
    "disgusted": "disgusted",
}
ED_TO_MULTIMODAL: dict[str, str] = {ed: mm for mm, ed in MULTIMODAL_TO_ED.items()}

AGES: tuple[str, ...] = ("child", "young", "middle-aged", "elderly")
GENDERS: tuple[str, ...] = ("male", "female")
TIMBRES: tuple[str, ...] = ("high", "mid", "low")
NUM_AVATARS: int = 65  # avatar identities 0..64 (the JSON profile field "ID")

TOPICS: tuple[str, ...] = (
    "Life Events", "Work", "School", "Family", "Friends",
    "Health", "Hobbies", "Travel", "Money", "Relationships",
)

ROLES: tuple[str, ...] = ("speaker", "listener")


def avatar_profile(avatar_id: int) -> tuple[str, str, str]:
    """The fixed (age, gender, timbre) of an avatar identity, so a face always has the same age, sex and voice.

    Identities cycle through all 4 x 2 x 3 = 24 combinations (age slowest), so each combination has 2-3 of
    the 65 identities. AvaMERG-mini draws profiles through this; the avatar renderer draws faces to match.
    """
    i = avatar_index(avatar_id) % (len(AGES) * len(GENDERS) * len(TIMBRES))
    age, rest = divmod(i, len(GENDERS) * len(TIMBRES))
    gender, timbre = divmod(rest, len(TIMBRES))
    return AGES[age], GENDERS[gender], TIMBRES[timbre]


def index_of(label: str, labels: Sequence[str], *, field: str = "label") -> int:
    """Position of `label` in `labels`; a ValueError names the field and the allowed values otherwise."""
    try:
        return list(labels).index(label)
    except ValueError:
        raise ValueError(f"{field}: {label!r} is not one of {list(labels)}") from None


def emotion7_index(label: str) -> int:
    return index_of(label, EMOTIONS_7, field="emotion (7 multimodal)")


def emotion32_index(label: str) -> int:
    return index_of(label, EMOTIONS_32, field="speaker_emotion (32 EmpatheticDialogues)")


def age_index(label: str) -> int:
    return index_of(label, AGES, field="age")


def gender_index(label: str) -> int:
    return index_of(label, GENDERS, field="gender")


def timbre_index(label: str) -> int:
    return index_of(label, TIMBRES, field="timbre")


def topic_index(label: str) -> int:
    return index_of(label, TOPICS, field="topic")


def avatar_index(avatar_id: int) -> int:
    """Validates an avatar identity (0..NUM_AVATARS-1) and returns it as the class index."""
    if isinstance(avatar_id, bool) or not isinstance(avatar_id, int) or not 0 <= avatar_id < NUM_AVATARS:
        raise ValueError(f"avatar ID: {avatar_id!r} is not an integer in 0..{NUM_AVATARS - 1}")
    return avatar_id


__all__ = [
    "AGES", "ED_TO_MULTIMODAL", "EMOTIONS_32", "EMOTIONS_7", "GENDERS", "MULTIMODAL_TO_ED", "NUM_AVATARS", "ROLES",
    "TIMBRES", "TOPICS", "age_index", "avatar_index", "avatar_profile", "emotion32_index", "emotion7_index",
    "gender_index", "index_of", "timbre_index", "topic_index",
]
