"""The simulated users: what each session wants, how it says it, and how its voice sounds."""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from asr.audio import SAMPLE_RATE_HZ
from asr.corpus.augment import draw_spec
from asr.corpus.build import level_and_augment
from asr.corpus.tts import Voice, all_engines
from serving.simulation.replay import Clip
from serving.simulation.scenarios import CLEAN_SHARE, TEMPLATES, Scenario


@dataclass(frozen=True)
class Want:
    """What one session wants (a catalog item) and how its user asks for it."""

    session: str
    item_id: str
    text: str
    voice: str
    new: bool
    """The item is one of the new places."""
    device: bool
    """The user is on the quiet 8 kHz microphone."""


def draw_want(
    rng: np.random.Generator,
    scenario: Scenario,
    n: int,
    t: float,
    catalog: Sequence[tuple[str, str]],
    popularity: np.ndarray,
    new_items: Sequence[tuple[str, str]],
) -> Want:
    """Session `n`'s wish at traffic time `t`: an item by popularity, or a new place at the
    scenario's share, said with a template in one of the users' voices."""
    new = bool(rng.random() < scenario.new_item_share(t)) and bool(new_items)
    device = bool(rng.random() < scenario.device_share(t))
    item_id, title = (
        new_items[int(rng.integers(len(new_items)))]
        if new
        else catalog[int(rng.choice(len(catalog), p=popularity))]
    )
    text = str(rng.choice(TEMPLATES)).format(title).lower()
    voice = str(rng.choice(scenario.users.voices))
    return Want(f"{scenario.name}-{n}", item_id, text, voice, new, device)


class Speaker:
    """Query audio as production would hear it from these voices: synthesized, at 16 kHz, levelled
    and augmented the way the training corpus is (so the input monitors judge the change a
    scenario makes, not the simulator's voices). Each (text, voice, take) is made once, seeded."""

    def __init__(self, seed: int) -> None:
        self.engines = all_engines()
        self.seed = seed
        self.cache: dict[tuple[str, str, int], Clip] = {}

    def clip(self, text: str, voice_id: str, take: int) -> Clip:
        key = (text, voice_id, take)
        if key not in self.cache:
            rng = np.random.default_rng([self.seed, take, *text.encode(), *voice_id.encode()])
            engine_name, _, name = voice_id.partition(":")
            voice = Voice(engine_name, name, rate=float(rng.uniform(0.9, 1.1)))
            samples, rate = self.engines[engine_name].synthesize(text, voice)
            spec = draw_spec(rng, (), clean=bool(rng.random() < CLEAN_SHARE))
            self.cache[key] = Clip(level_and_augment(samples, rate, spec, rng, None), SAMPLE_RATE_HZ, text)
        return self.cache[key]
