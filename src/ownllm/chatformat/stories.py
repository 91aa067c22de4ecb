"""Short stories on request: "tell me a story about a cat" answered with a story that has a cat in it.

Most answers are real stories from the bundled TinyStories text (simple, coherent English
that a small model can learn to write), chosen so that every asked-for word is in the
story: the topic word at least twice, other asked-for words at least once. The rest are
built from a few templates, which can put *any* word in a story, so the model also learns
to use words that no TinyStories story happens to contain.
"""

from __future__ import annotations

import functools
import random
import re
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

STORY_FILE = "tinystories-train-prefix.txt"  # in ownllm/resources/corpus/
_WORD = re.compile(r"[a-z]+")
MIN_STORIES = 3  # a topic with fewer stories is asked for with template stories only
EARLY_WORDS = 25  # a story "about" a topic names it within its first 25 words (about two sentences)


def _names_early(word: str, story: str) -> bool:
    """Whether the story names the word (or its plural) within its first EARLY_WORDS words."""
    return re.search(rf"\b{word}(?:s|es)?\b", " ".join(story.split()[:EARLY_WORDS]), re.IGNORECASE) is not None


# Topic nouns that many short TinyStories stories are about, with the article a request uses.
TOPICS = {
    "cat": "a cat",
    "dog": "a dog",
    "bird": "a bird",
    "tree": "a tree",
    "toy": "a toy",
    "garden": "a garden",
    "house": "a house",
    "bear": "a bear",
    "car": "a car",
    "ball": "a ball",
    "box": "a box",
    "forest": "a forest",
    "sun": "the sun",
    "rabbit": "a rabbit",
    "fish": "a fish",
    "rain": "the rain",
    "mouse": "a mouse",
    "truck": "a truck",
    "butterfly": "a butterfly",
    "bug": "a bug",
    "boat": "a boat",
    "flower": "a flower",
    "bunny": "a bunny",
    "puppy": "a puppy",
    "beach": "the beach",
    "frog": "a frog",
    "cake": "a cake",
    "apple": "an apple",
    "lion": "a lion",
    "fox": "a fox",
    "river": "a river",
    "bike": "a bike",
    "rock": "a rock",
    "elephant": "an elephant",
    "squirrel": "a squirrel",
    "hill": "a hill",
    "castle": "a castle",
    "balloon": "a balloon",
    "blanket": "a blanket",
    "candy": "candy",
    "sea": "the sea",
    "spider": "a spider",
    "dragon": "a dragon",
    "bee": "a bee",
    "monkey": "a monkey",
    "owl": "an owl",
    "plane": "a plane",
    "kitten": "a kitten",
    "pizza": "pizza",
    "lake": "a lake",
    "park": "the park",
    "princess": "a princess",
    "book": "a book",
    "duck": "a duck",
    "kite": "a kite",
}
# Words for template stories only: things no short story here is about, so requests for them still work.
TEMPLATE_ONLY = {
    "robot": "a robot",
    "guitar": "a guitar",
    "volcano": "a volcano",
    "pirate": "a pirate",
    "computer": "a computer",
    "snowman": "a snowman",
    "rocket": "a rocket",
    "penguin": "a penguin",
    "giraffe": "a giraffe",
    "treasure": "a treasure",
    "umbrella": "an umbrella",
    "tiger": "a tiger",
    "whale": "a whale",
    "piano": "a piano",
    "lamp": "a lamp",
    "cloud": "a cloud",
    "star": "a star",
    "wizard": "a wizard",
}

_GIRLS = ("Lily", "Mia", "Sue", "Anna", "Zoe", "Lucy")
_BOYS = ("Tom", "Ben", "Max", "Leo", "Sam", "Tim")
# (names to pick from, template): {name} is the child, {x} the asked-for word, {a_x} it with its article.
_TEMPLATES = (
    (
        _GIRLS,
        "Once upon a time, there was a little girl named {name}. One day, {name} found {a_x} in the park. "
        'The {x} was very special. {name} showed the {x} to her mom. Her mom smiled and said, "What a '
        'wonderful {x}!"\n\n{name} thought about the {x} every day. She was happy, and the {x} made her '
        "friends happy too.",
    ),
    (
        _BOYS,
        "There was once a boy named {name} who wanted to see {a_x} more than anything. He asked his dad, "
        '"Can we find {a_x}?" His dad said, "Let\'s go and look."\n\nThey looked everywhere. At last they '
        "saw {a_x} near a big tree. {name} laughed and jumped. He learned that if you keep looking, you can "
        "find what you want.",
    ),
    (
        _GIRLS + _BOYS,
        'One sunny morning, {name} went for a walk and met {a_x}. "Hello," said {name}. The {x} was shy at '
        "first, but soon they became friends.\n\nThey played together all day. When the sun went down, "
        '{name} said goodbye to the {x}. "I will come back tomorrow," said {name}.',
    ),
    (
        _GIRLS + _BOYS,
        '{name} had a dream about {a_x}. In the dream, the {x} could talk. "Come with me," said the {x}, '
        "and they went on a big adventure over hills and rivers.\n\nWhen {name} woke up, {name} smiled and "
        "drew a picture of the {x}, so the dream would never be forgotten.",
    ),
)


@dataclass(frozen=True)
class StoryRequest:
    request: str  # what the user asks
    words: tuple[str, ...]  # the words the story must use (the first is the topic)
    story: str  # the assistant's answer


class StoryIndex:
    """Short stories and the words each uses, to find stories that contain given words."""

    def __init__(self, stories: list[str], max_words: int):
        # ASCII only: about 7% of the short stories carry mojibake ("â€œ" for a quote), the only non-ASCII there.
        self.stories = [s for s in stories if len(s.split()) <= max_words and s.isascii()]
        self._counts = [_word_counts(s) for s in self.stories]
        # topic -> stories that use it at least twice (so the story is about it, not just mentioning it)
        self.about: dict[str, list[int]] = {topic: [] for topic in TOPICS}
        for i, counts in enumerate(self._counts):
            for word, count in counts.items():
                if count >= 2 and word in self.about:
                    self.about[word].append(i)
        # ... of which those that name it in their first EARLY_WORDS words: a story that starts elsewhere
        # teaches a small model to start with Lily and never get to the cat.
        self.about_early = {
            topic: [i for i in found if _names_early(topic, self.stories[i])] for topic, found in self.about.items()
        }

    @classmethod
    @functools.lru_cache(maxsize=4)
    def bundled(cls, max_words: int) -> StoryIndex:
        """The short stories of the bundled TinyStories text (cached: building it takes a moment)."""
        path = Path(str(resources.files("ownllm.resources"))) / "corpus" / STORY_FILE
        return cls(split_stories(path.read_text(encoding="utf-8")), max_words)

    def topics(self, min_stories: int = MIN_STORIES) -> list[str]:
        return [t for t in TOPICS if len(self.about[t]) >= min_stories]

    def uses(self, story_index: int, word: str) -> bool:
        return self._counts[story_index][word] > 0


def split_stories(text: str) -> list[str]:
    """TinyStories train text -> stories, paragraphs joined by one blank line.

    In that file a blank line separates paragraphs and a plain newline separates stories.
    """
    stories: list[str] = []
    paragraphs: list[str] = []
    after_blank = True
    for line in text.split("\n"):
        line = line.strip()
        if not line:
            after_blank = True
            continue
        if not after_blank and paragraphs:  # two text lines in a row: a new story starts
            stories.append("\n\n".join(paragraphs))
            paragraphs = []
        paragraphs.append(line)
        after_blank = False
    if paragraphs:
        stories.append("\n\n".join(paragraphs))
    return stories


def story_request(rng: random.Random, index: StoryIndex, template_rate: float = 0.2) -> StoryRequest:
    """A request for a story and a story that uses every word asked for."""
    topics = index.topics()
    if not topics or rng.random() < template_rate:
        return _template_request(rng, topics)
    topic = rng.choice(topics)
    early = index.about_early[topic]
    story_id = rng.choice(early if len(early) >= MIN_STORIES else index.about[topic])
    story = index.stories[story_id]
    others = [t for t in topics if t != topic and index.uses(story_id, t)]
    extra = rng.sample(others, k=min(len(others), rng.choice((0, 0, 1, 2))))
    words = (topic, *extra)
    return StoryRequest(story_phrase(rng, words), words, story)


def _template_request(rng: random.Random, topics: list[str]) -> StoryRequest:
    word = rng.choice(sorted(set(topics) | set(TEMPLATE_ONLY)))
    a_x = TOPICS.get(word) or TEMPLATE_ONLY[word]
    names, template = rng.choice(_TEMPLATES)
    story = template.format(name=rng.choice(names), x=word, a_x=a_x)
    return StoryRequest(story_phrase(rng, (word,)), (word,), story)


def story_phrase(rng: random.Random, words: tuple[str, ...]) -> str:
    """How a person asks: about one thing, about several, or with a list of words."""
    things = [TOPICS.get(w) or TEMPLATE_ONLY[w] for w in words]
    if len(words) == 1:
        return rng.choice(
            (
                "Tell me a story about {0}.",
                "Can you tell me a story about {0}?",
                "Tell me a short story about {0}.",
                "Write a story about {0}.",
                "Please tell me a story about {0}.",
                "I want a story about {0}.",
            )
        ).format(things[0])
    listed = ", ".join(things[:-1]) + " and " + things[-1]
    if rng.random() < 0.5:
        return rng.choice(("Tell me a story about {0}.", "Can you tell me a story about {0}?")).format(listed)
    words_listed = ", ".join(words[:-1]) + " and " + words[-1]
    return rng.choice(("Tell me a story with the words {0}.", "Write a short story that uses the words {0}.")).format(
        words_listed
    )


def _word_counts(text: str) -> Counter[str]:
    return Counter(_WORD.findall(text.lower()))
