"""Generated app names (``adjective-noun-NNNN``), used when an app is created without a name."""

from __future__ import annotations

import secrets

ADJECTIVES = (
    "amber", "bold", "brave", "bright", "calm", "clever", "cosmic", "crisp", "dapper", "eager",
    "fancy", "fuzzy", "gentle", "glad", "golden", "happy", "hidden", "jolly", "keen", "lively",
    "lucky", "mellow", "merry", "misty", "nimble", "noble", "polite", "proud", "quiet", "rapid",
    "rustic", "shiny", "silent", "snowy", "solid", "sunny", "swift", "tidy", "vivid", "witty",
)  # fmt: skip
NOUNS = (
    "anchor", "badger", "beacon", "breeze", "brook", "canyon", "cedar", "comet", "coral", "delta",
    "ember", "falcon", "fern", "fjord", "glacier", "harbor", "heron", "island", "lagoon", "lantern",
    "maple", "meadow", "meteor", "otter", "pebble", "pine", "planet", "prairie", "quartz", "raven",
    "reef", "river", "summit", "thunder", "tiger", "tundra", "valley", "willow", "wombat", "zephyr",
)  # fmt: skip


def generate() -> str:
    return f"{secrets.choice(ADJECTIVES)}-{secrets.choice(NOUNS)}-{secrets.randbelow(10000):04d}"
