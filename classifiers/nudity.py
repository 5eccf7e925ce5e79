"""Built-in classifier: nudity and sexual content."""

from classifiers.labels import Label, LabelSet

NUDITY = LabelSet(
    name="nudity",
    kind="exclusive",
    description="Explicit nudity or sexual activity, suggestive content, or neither.",
    labels=(
        Label("explicit", (
            "explicit nudity",
            "a naked person with exposed genitals",
            "a nude person with bare breasts",
            "pornographic sexual activity",
        )),
        Label("suggestive", (
            "a person in lingerie",
            "a person in revealing underwear",
            "a person in a skimpy bikini",
            "a sexually suggestive pose",
        )),
        Label("none", (
            "a fully clothed person",
            "people wearing everyday clothes",
            "a landscape with no people",
            "an everyday object, food or an animal",
        )),
    ),
    unsafe=("explicit",),
    threshold=0.5,
)
