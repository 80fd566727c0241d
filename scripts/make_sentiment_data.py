#!/usr/bin/env python3
"""Generate the small synthetic sentiment dataset used by the llmkit quickstart.

The sentences are short English reviews of films, restaurants, hotels, gadgets,
books and games, each labelled ``positive`` or ``negative``. They were written
for llmkit: every sentence is composed at random (with a fixed seed) from the
hand-written building blocks in this file, and nothing is copied from an
existing dataset.

The label depends on how the pieces are put together, not on one keyword:
negation ("wasn't bad at all", "was far from impressive"), contrast where the
clause after "but" decides ("the acting was fine but the plot was a mess"),
"although" clauses, two-sentence reviews whose second sentence gives the
verdict, "my only complaint" / "the only thing I liked" sentences and verdict
phrases that share words across classes ("I can't recommend it enough" vs
"I can't recommend it"). About 40 % of the reviews need such composition; the
rest are plain one-clause statements ("the hotel was spotless"). A bag-of-words
model therefore cannot reach 100 %.

Only the standard library is used, so the output is identical everywhere for a
given seed and set of sizes. Regenerate the committed files with:

    python scripts/make_sentiment_data.py --out examples/sentiment

which writes ``train.csv`` (400 rows), ``dev.csv`` (200 rows) and ``test.csv``
(200 rows), each with the header ``text,label``, both classes balanced and no
text repeated within or across the splits.
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "examples" / "sentiment"
DEFAULT_SEED = 13
DEFAULT_SIZES = {"train": 400, "dev": 200, "test": 200}
LABELS = ("positive", "negative")

# --------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------

# Adjectives that fit any subject or aspect.
GENERIC = {
    "positive": [
        "great", "excellent", "wonderful", "fantastic", "superb", "lovely", "impressive",
        "outstanding", "brilliant", "good",
    ],
    "negative": [
        "terrible", "awful", "disappointing", "mediocre", "poor", "dreadful", "bad",
        "horrible", "lousy", "a mess",
    ],
}

# Mild adjectives, typical of the half of a review that the other half
# overrides ("the acting was fine but ..."). They fit any subject or aspect.
MILD = {
    "positive": ["fine", "decent", "okay", "nice enough", "competent", "passable", "pleasant enough",
                 "perfectly fine"],
    "negative": ["a bit dull", "so-so", "nothing special", "a bit rough", "slightly disappointing",
                 "somewhat uneven", "just average", "forgettable"],
}

# Each domain: subjects (what the whole review is about), adjectives that fit
# the subjects, and aspects with adjectives that fit each aspect.
# An aspect is (noun phrase, positive adjectives, negative adjectives).
DOMAINS = {
    "film": {
        "subjects": [
            "the film", "this movie", "the sequel", "the documentary", "the new thriller",
            "this comedy", "the remake", "the animated feature", "the horror movie",
        ],
        "adjs": {
            "positive": ["gripping", "moving", "hilarious", "beautifully shot", "clever", "thrilling"],
            "negative": ["predictable", "overlong", "cliched", "confusing", "boring", "forgettable"],
        },
        "aspects": [
            ("the acting", ["convincing", "natural", "powerful"], ["wooden", "stiff", "overdone"]),
            ("the plot", ["gripping", "clever", "tight"], ["predictable", "thin", "convoluted"]),
            ("the soundtrack", ["haunting", "memorable", "catchy"], ["forgettable", "grating", "intrusive"]),
            ("the pacing", ["brisk", "well judged"], ["sluggish", "uneven", "painfully slow"]),
            ("the ending", ["satisfying", "moving", "surprising"], ["rushed", "flat", "silly"]),
            ("the dialogue", ["sharp", "witty", "natural"], ["clunky", "stilted", "cheesy"]),
            ("the cinematography", ["gorgeous", "striking", "beautiful"], ["murky", "dull", "flat"]),
            ("the special effects", ["stunning", "seamless"], ["cheap", "cheap-looking", "distracting"]),
            ("the lead actor", ["charming", "magnetic", "convincing"], ["wooden", "miscast", "bland"]),
        ],
    },
    "restaurant": {
        "subjects": [
            "the restaurant", "this little bistro", "the new pizza place", "the sushi bar", "the diner",
            "the taco truck", "the steakhouse", "the cafe on the corner", "the noodle shop",
        ],
        "adjs": {
            "positive": ["delicious", "cozy", "welcoming", "charming"],
            "negative": ["overpriced", "greasy", "chaotic", "grimy"],
        },
        "aspects": [
            ("the food", ["delicious", "fresh", "flavorful"], ["bland", "greasy", "cold"]),
            ("the service", ["friendly", "quick", "attentive"], ["slow", "rude", "careless"]),
            ("the dessert", ["heavenly", "delicious", "rich"], ["stale", "soggy", "overly sweet"]),
            ("the pasta", ["perfectly cooked", "delicious", "fresh"], ["mushy", "overcooked", "bland"]),
            ("the staff", ["friendly", "helpful", "warm"], ["rude", "indifferent", "unhelpful"]),
            ("the portions", ["generous", "hearty"], ["tiny", "stingy"]),
            ("the atmosphere", ["relaxed", "cozy", "lively"], ["noisy", "cold", "cramped"]),
            ("the soup", ["hearty", "fragrant", "delicious"], ["watery", "lukewarm", "salty"]),
            ("the coffee", ["strong", "smooth", "excellent"], ["bitter", "watery", "burnt"]),
        ],
    },
    "hotel": {
        "subjects": [
            "the hotel", "this resort", "the guesthouse", "the hostel", "the inn", "our room",
            "the bed and breakfast", "the lodge",
        ],
        "adjs": {
            "positive": ["spotless", "cozy", "comfortable", "quiet", "welcoming"],
            "negative": ["dirty", "noisy", "shabby", "run-down", "cramped"],
        },
        "aspects": [
            ("the room", ["spacious", "spotless", "cozy"], ["cramped", "dirty", "stuffy"]),
            ("the bed", ["comfortable", "soft", "huge"], ["lumpy", "uncomfortable", "hard"]),
            ("the breakfast", ["generous", "delicious", "fresh"], ["stale", "meager", "cold"]),
            ("the front desk", ["helpful", "friendly", "efficient"], ["rude", "unhelpful", "slow"]),
            ("the location", ["perfect", "convenient", "central"], ["inconvenient", "remote", "sketchy"]),
            ("the pool", ["clean", "inviting", "warm"], ["dirty", "freezing", "crowded"]),
            ("the bathroom", ["spotless", "modern", "spacious"], ["moldy", "tiny", "filthy"]),
            ("the view", ["breathtaking", "stunning", "lovely"], ["depressing", "ugly"]),
            ("the housekeeping", ["thorough", "careful", "friendly"], ["careless", "sloppy", "absent"]),
        ],
    },
    "gadget": {
        "subjects": [
            "the phone", "these headphones", "the laptop", "this blender", "the smartwatch",
            "the speaker", "the vacuum cleaner", "the tablet", "this camera", "the e-reader",
        ],
        "adjs": {
            "positive": ["reliable", "sleek", "sturdy", "intuitive", "well made"],
            "negative": ["flimsy", "buggy", "clunky", "unreliable", "cheaply made"],
        },
        "aspects": [
            ("the battery", ["long-lasting", "reliable"], ["weak", "short-lived", "unreliable"]),
            ("the screen", ["bright", "sharp", "crisp"], ["dim", "blurry", "washed out"]),
            ("the sound", ["rich", "clear", "crisp"], ["tinny", "muddy", "distorted"]),
            ("the build quality", ["solid", "sturdy", "premium"], ["flimsy", "cheap", "shoddy"]),
            ("the setup", ["easy", "quick", "painless"], ["confusing", "tedious", "painful"]),
            ("the app", ["intuitive", "fast", "polished"], ["buggy", "sluggish", "confusing"]),
            ("the charger", ["fast", "compact"], ["slow", "flimsy", "bulky"]),
            ("the keyboard", ["comfortable", "responsive", "quiet"], ["mushy", "cramped", "loud"]),
            ("the design", ["sleek", "elegant", "thoughtful"], ["clunky", "ugly", "awkward"]),
        ],
    },
    "book": {
        "subjects": [
            "the novel", "this book", "the memoir", "the short story collection", "the biography",
            "the cookbook", "the mystery novel", "the sequel to her debut",
        ],
        "adjs": {
            "positive": ["engaging", "thoughtful", "well written", "insightful", "absorbing"],
            "negative": ["tedious", "shallow", "long-winded", "confusing", "dull"],
        },
        "aspects": [
            ("the writing", ["elegant", "vivid", "crisp"], ["clumsy", "flat", "overwrought"]),
            ("the prose", ["lyrical", "lovely", "precise"], ["purple", "clumsy", "stiff"]),
            ("the plot", ["gripping", "clever", "tight"], ["predictable", "thin", "meandering"]),
            ("the characters", ["believable", "vivid", "memorable"], ["flat", "forgettable", "unlikable"]),
            ("the ending", ["satisfying", "moving", "surprising"], ["rushed", "abrupt", "silly"]),
            ("the middle section", ["absorbing", "tense"], ["slow", "tedious", "padded"]),
            ("the translation", ["graceful", "faithful", "smooth"], ["awkward", "clumsy", "stilted"]),
        ],
    },
    "game": {
        "subjects": [
            "the game", "this shooter", "the puzzle game", "the new expansion", "this racing game",
            "the board game", "the remaster", "the indie platformer",
        ],
        "adjs": {
            "positive": ["addictive", "polished", "rewarding", "inventive", "fun"],
            "negative": ["repetitive", "glitchy", "unbalanced", "frustrating", "janky"],
        },
        "aspects": [
            ("the controls", ["responsive", "tight", "intuitive"], ["clunky", "sluggish", "awkward"]),
            ("the graphics", ["gorgeous", "stunning", "crisp"], ["dated", "muddy", "ugly"]),
            ("the story", ["gripping", "touching", "clever"], ["thin", "silly", "predictable"]),
            ("the multiplayer", ["smooth", "addictive", "fun"], ["laggy", "broken", "empty"]),
            ("the level design", ["clever", "inventive", "varied"], ["repetitive", "lazy", "confusing"]),
            ("the soundtrack", ["catchy", "memorable", "epic"], ["grating", "repetitive", "forgettable"]),
            ("the boss fights", ["thrilling", "memorable", "fair"], ["cheap", "unfair", "tedious"]),
            ("the tutorial", ["clear", "helpful", "short"], ["confusing", "endless", "useless"]),
            ("the load times", ["short", "quick"], ["long", "painful", "endless"]),
        ],
    },
}

PLURAL = {
    "these headphones", "the special effects", "the portions", "the characters",
    "the controls", "the graphics", "the boss fights", "the load times",
}

INTENSIFIERS = [
    "", "", "", "", "really ", "very ", "truly ", "genuinely ", "pretty ",
    "surprisingly ", "remarkably ", "rather ", "quite ", "incredibly ", "so ",
]

# Extreme adjectives take only these intensifiers ("absolutely superb", not
# "very superb"); adjectives of several words ("a mess", "well made") take none.
EXTREME = {
    "excellent", "wonderful", "fantastic", "superb", "outstanding", "brilliant", "terrible", "awful",
    "dreadful", "horrible", "perfect", "stunning", "breathtaking", "heavenly", "gorgeous", "hilarious",
    "filthy", "delicious",
}
EXTREME_INTENSIFIERS = ["", "", "absolutely ", "truly ", "really ", "simply "]

# Negation patterns that work in both directions: "was not great" is negative
# and "was not terrible" is positive. {be}/{bent} are "was"/"wasn't" etc.
NEGATIONS_BOTH = [
    "{be} not {adj}", "{bent} {adj}", "{bent} {adj} at all", "{be} far from {adj}",
    "{be} never {adj}", "{be} by no means {adj}", "{be} anything but {adj}",
    "{be} not {adj} in the slightest",
]
# Patterns that only read naturally in one direction. The key is the polarity
# of the negated adjective.
NEGATIONS_ONE = {
    "positive": ["{be} hardly {adj}", "{bent} particularly {adj}", "{bent} as {adj} as I had hoped",
                 "{be} not exactly {adj}"],
    "negative": ["{bent} as {adj} as I had feared", "{bent} nearly as {adj} as people said",
                 "{bent} {adj} in any way", "{bent} {adj}, despite the reviews"],
}

# Whole verdict phrases. Many share words across the two classes.
VERDICTS = {
    "positive": [
        "I would recommend it to anyone", "I can't recommend it enough", "I couldn't be happier with it",
        "it was worth every penny", "it was well worth the money", "it exceeded my expectations",
        "it did not disappoint", "I have no complaints", "there was nothing to complain about",
        "it couldn't have been better", "I can't wait to go back to it", "I loved every minute of it",
        "it was a pleasant surprise", "I didn't regret it for a second", "I was not disappointed",
        "I would happily pay for it again", "it was worth the wait", "it never gets old",
        "I had a wonderful time", "I'm glad I gave it a chance",
    ],
    "negative": [
        "I would not recommend it to anyone", "I can't recommend it", "I couldn't wait for it to end",
        "it was hardly worth it", "it was not worth the money", "it fell short of my expectations",
        "it was a real disappointment", "I have plenty of complaints", "there was nothing to enjoy",
        "it could have been much better", "I won't be going back to it", "I regretted every minute of it",
        "it was an unpleasant surprise", "I regretted it almost immediately", "I was disappointed",
        "I want my money back", "it was not worth the wait", "it got old fast",
        "I had a miserable time", "I wish I hadn't given it a chance",
    ],
}

# Neutral filler that carries no sentiment.
PREFIXES = [
    "", "", "", "", "", "", "Honestly, ", "To be honest, ", "I have to say ", "For what it's worth, ",
    "Short version: ", "After two weeks, ", "In my opinion, ", "Frankly, ",
    "As someone who tries everything, I think ", "My partner agrees that ", "I think ", "Well, ",
]

TRANSITIONS = ["Still,", "That said,", "Even so,", "In the end,", "Overall,", "On the whole,", "All in all,",
               "But honestly,", "Having said that,"]

BUT = ["but", "but", ", but", ", but honestly", "yet"]

ALTHOUGH = ["Although", "Even though", "While", "Though"]

# --------------------------------------------------------------------------
# Composition helpers
# --------------------------------------------------------------------------


def other(label: str) -> str:
    return "negative" if label == "positive" else "positive"


def verbs(np: str, tense: str) -> tuple[str, str]:
    plural = np in PLURAL
    if tense == "past":
        return ("were", "weren't") if plural else ("was", "wasn't")
    return ("are", "aren't") if plural else ("is", "isn't")


def pick_adj(rng: random.Random, polarity: str, specific: list[str]) -> str:
    if specific and rng.random() < 0.15:
        return rng.choice(specific)
    return rng.choice(GENERIC[polarity])


def subject_adj(rng: random.Random, domain: dict, polarity: str) -> str:
    return pick_adj(rng, polarity, domain["adjs"][polarity])


def aspect_adj(rng: random.Random, aspect: tuple, polarity: str) -> str:
    return pick_adj(rng, polarity, aspect[1] if polarity == "positive" else aspect[2])


def predicate(rng: random.Random, np: str, tense: str, polarity: str, negate: bool, adj_for,
              mild: float = 0.0) -> str:
    """A predicate of sentiment `polarity` about `np`, e.g. "was not terrible".

    `adj_for(polarity)` picks an adjective of that polarity that fits `np`.
    With `negate` the adjective has the opposite polarity and is negated;
    otherwise, with probability `mild`, a mild adjective is used ("decent").
    """
    be, bent = verbs(np, tense)
    if not negate and mild and rng.random() < mild:
        return f"{be} {rng.choice(MILD[polarity])}"
    if not negate:
        adj = adj_for(polarity)
        if " " in adj:
            intens = ""
        else:
            intens = rng.choice(EXTREME_INTENSIFIERS if adj in EXTREME else INTENSIFIERS)
        return f"{be} {intens}{adj}"
    negated = other(polarity)
    adj = adj_for(negated)
    patterns = NEGATIONS_BOTH + NEGATIONS_ONE[negated]
    if adj.startswith("a "):
        patterns = ["{be} not {adj}", "{bent} {adj}", "{bent} {adj} at all", "{be} far from {adj}"]
    return rng.choice(patterns).format(be=be, bent=bent, adj=adj)


def capitalize(text: str) -> str:
    return text[0].upper() + text[1:]


def finish(text: str) -> str:
    text = text.replace(" , ", ", ")
    if text[-1] not in ".!?":
        text += "."
    return capitalize(text)


def subject_clause(rng, domain, polarity, negate, tense=None, mild=0.0):
    np = rng.choice(domain["subjects"])
    tense = tense or rng.choice(["past", "past", "present"])
    return f"{np} " + predicate(rng, np, tense, polarity, negate, lambda p: subject_adj(rng, domain, p), mild)


def aspect_clause(rng, aspect, polarity, negate, tense, mild=0.0):
    np = aspect[0]
    return f"{np} " + predicate(rng, np, tense, polarity, negate, lambda p: aspect_adj(rng, aspect, p), mild)


def two_aspects(rng, domain):
    a, b = rng.sample(domain["aspects"], 2)
    return a, b


# --------------------------------------------------------------------------
# Sentence templates. Each takes the target label and returns one review.
# --------------------------------------------------------------------------


def t_simple(rng, domain, label):
    """The film was really gripping."""
    if rng.random() < 0.5:
        clause = subject_clause(rng, domain, label, negate=False, mild=0.15)
    else:
        aspect = rng.choice(domain["aspects"])
        clause = aspect_clause(rng, aspect, label, negate=False, tense=rng.choice(["past", "present"]), mild=0.15)
    return finish(rng.choice(PREFIXES) + clause)


def t_negated(rng, domain, label):
    """The hotel wasn't bad at all.  /  The plot was far from clever."""
    if rng.random() < 0.5:
        clause = subject_clause(rng, domain, label, negate=True)
    else:
        aspect = rng.choice(domain["aspects"])
        clause = aspect_clause(rng, aspect, label, negate=True, tense=rng.choice(["past", "present"]))
    return finish(rng.choice(PREFIXES) + clause)


def t_but(rng, domain, label):
    """The acting was fine but the plot was a mess.  (label of the clause after "but")"""
    a, b = two_aspects(rng, domain)
    tense = rng.choice(["past", "past", "present"])
    first = aspect_clause(rng, a, other(label), negate=rng.random() < 0.25, tense=tense, mild=0.8)
    if rng.random() < 0.25:
        np = rng.choice(["it", "overall it", "on the whole it", "all in all it"])
        second = np + " " + predicate(rng, "it", tense, label, rng.random() < 0.3,
                                       lambda p: subject_adj(rng, domain, p))
        but = rng.choice(["but", ", but", "yet"])
    else:
        second = aspect_clause(rng, b, label, negate=rng.random() < 0.3, tense=tense, mild=0.15)
        but = rng.choice(BUT)
    return finish(f"{first} {but} {second}")


def t_although(rng, domain, label):
    """Although the room was cramped, the staff were wonderful.  (label of the main clause)"""
    a, b = two_aspects(rng, domain)
    tense = rng.choice(["past", "present"])
    sub = aspect_clause(rng, a, other(label), negate=rng.random() < 0.2, tense=tense, mild=0.8)
    main = aspect_clause(rng, b, label, negate=rng.random() < 0.25, tense=tense)
    if rng.random() < 0.8:
        return finish(f"{rng.choice(ALTHOUGH)} {sub}, {main}")
    return finish(f"{main}, even though {sub}")


def t_two_sentences(rng, domain, label):
    """The pacing was sluggish. Still, the ending was satisfying."""
    a, b = two_aspects(rng, domain)
    tense = rng.choice(["past", "past", "present"])
    first = finish(aspect_clause(rng, a, other(label), negate=rng.random() < 0.2, tense=tense, mild=0.8))
    r = rng.random()
    if r < 0.4:
        second = aspect_clause(rng, b, label, negate=rng.random() < 0.3, tense=tense)
    elif r < 0.7:
        second = subject_clause(rng, domain, label, negate=rng.random() < 0.3, tense=tense)
    else:
        second = rng.choice(VERDICTS[label])
    return f"{first} {rng.choice(TRANSITIONS)} {second}."


def t_verdict(rng, domain, label):
    """We tried the sushi bar last month. I can't recommend it enough."""
    np = rng.choice(domain["subjects"])
    opener = rng.choice([
        f"We tried {np} last month.", f"I finally got around to {np}.", f"About {np}:",
        f"So, {np}?", f"A friend told me about {np}.", f"A few words about {np}:",
    ])
    verdict = rng.choice(VERDICTS[label])
    if not opener.endswith(":"):
        verdict = capitalize(verdict)
    return f"{capitalize(opener)} {verdict}."


def t_only(rng, domain, label):
    """My only complaint is that the coffee was bitter.  /  The only thing I liked was the view."""
    aspect = rng.choice(domain["aspects"])
    tense = "past"
    if label == "positive":
        lead = rng.choice(["My only complaint is that", "The only problem was that", "The one downside:",
                           "If I had to nitpick,"])
        body = aspect_clause(rng, aspect, "negative", negate=False, tense=tense)
    else:
        lead = rng.choice(["The only good thing was that", "The one thing I liked was that",
                           "The only redeeming feature:", "If I had to say something nice,"])
        body = aspect_clause(rng, aspect, "positive", negate=False, tense=tense)
    return finish(f"{lead} {body}")


def t_expectation(rng, domain, label):
    """I expected the hotel to be awful, but it wasn't.  (label of what it turned out to be)"""
    np = rng.choice(domain["subjects"])
    adj_pol = rng.choice(LABELS)
    adj = subject_adj(rng, domain, adj_pol)
    be, bent = verbs(np, "past")
    it = "they" if np in PLURAL else "it"
    lead = rng.choice(["I expected", "Everyone told me", "The reviews said", "I was told"])
    if lead == "I expected":
        start = f"I expected {np} to be {adj}"
    else:
        start = f"{lead} {np} {be} going to be {adj}"
    if adj_pol == label:
        end = rng.choice([f"and {it} {be}", f"and sure enough, {it} {be}", f"and {it} really {be}"])
    else:
        end = rng.choice([f"but {it} {bent}", f"but {it} {be} not", f"but {it} {be} nothing of the sort"])
    return finish(f"{start}, {end}")


TEMPLATES = [
    (t_simple, 80),
    (t_negated, 16),
    (t_but, 14),
    (t_verdict, 10),
    (t_two_sentences, 8),
    (t_expectation, 3),
    (t_although, 3),
    (t_only, 3),
]


def make_review(rng: random.Random, label: str) -> tuple[str, str]:
    """One review with the given label; returns (text, template name)."""
    fns, weights = zip(*TEMPLATES)
    fn = rng.choices(fns, weights=weights)[0]
    domain = DOMAINS[rng.choice(sorted(DOMAINS))]
    return fn(rng, domain, label), fn.__name__


# --------------------------------------------------------------------------
# Splits and files
# --------------------------------------------------------------------------


def generate_splits(seed: int = DEFAULT_SEED, sizes: dict[str, int] | None = None,
                    with_template: bool = False) -> dict[str, list[tuple]]:
    """Rows per split: {"train": [(text, label), ...], ...}.

    Each split is balanced (half of each label) and no text occurs twice in the
    whole output. With `with_template` each row also carries the template name.
    """
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[tuple]] = {}
    for name, size in sizes.items():
        if size % 2:
            raise ValueError(f"size of {name} must be even to balance the classes, got {size}")
        rows = []
        for i in range(size):
            label = LABELS[i % 2]
            for _ in range(10_000):
                text, template = make_review(rng, label)
                if text not in seen:
                    break
            else:
                raise RuntimeError("could not find a new unique sentence; sizes are too large")
            seen.add(text)
            rows.append((text, label, template) if with_template else (text, label))
        rng.shuffle(rows)
        splits[name] = rows
    return splits


def write_splits(out_dir: Path | str = DEFAULT_OUT, seed: int = DEFAULT_SEED,
                 sizes: dict[str, int] | None = None) -> list[Path]:
    """Write `<split>.csv` files (header `text,label`) into out_dir; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in generate_splits(seed, sizes).items():
        path = out_dir / f"{name}.csv"
        with path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["text", "label"])
            writer.writerows(rows)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (default: %(default)s)")
    parser.add_argument("--train-size", type=int, default=DEFAULT_SIZES["train"])
    parser.add_argument("--dev-size", type=int, default=DEFAULT_SIZES["dev"])
    parser.add_argument("--test-size", type=int, default=DEFAULT_SIZES["test"])
    args = parser.parse_args(argv)
    sizes = {"train": args.train_size, "dev": args.dev_size, "test": args.test_size}
    for path in write_splits(args.out, args.seed, sizes):
        print(path)


if __name__ == "__main__":
    main()
