"""Built-in classifier: hate symbols, obscene gestures and offensive text or imagery."""

from classifiers.labels import Label, LabelSet

OFFENSIVE = LabelSet(
    name="offensive",
    kind="exclusive",
    description="Hate symbols, obscene gestures, offensive text or demeaning imagery, or none.",
    labels=(
        Label("hate_symbol", (
            "a swastika",
            "a nazi flag",
            "a burning cross",
            "a white supremacist hate symbol",
        )),
        Label("obscene_gesture", (
            "a person giving the middle finger",
            "an obscene hand gesture",
        )),
        Label("offensive_text", (
            "a sign with a hateful slur written on it",
            "graffiti with offensive words",
            "an insulting text meme",
        )),
        Label("offensive_imagery", (
            "a racist caricature",
            "a demeaning cartoon mocking a group of people",
        )),
        Label("none", (
            "an ordinary photo",
            "a friendly gesture such as a wave or a thumbs up",
            "a sign with ordinary text",
            "a landscape, a pet or a meal",
        )),
    ),
    unsafe=("hate_symbol", "obscene_gesture", "offensive_text", "offensive_imagery"),
    threshold=0.5,
)
