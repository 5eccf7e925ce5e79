"""Built-in classifier: gore and graphic violence."""

from classifiers.labels import Label, LabelSet

GORE = LabelSet(
    name="gore",
    kind="exclusive",
    description="Graphic injury, blood and dead bodies, or violence in progress, or neither.",
    labels=(
        Label("graphic", (
            "graphic gore with blood and open wounds",
            "a mutilated body",
            "a dead body covered in blood",
            "a severe bloody injury",
        )),
        Label("violence", (
            "people fighting and hitting each other",
            "a person pointing a gun at someone",
            "a violent attack on a person",
        )),
        Label("none", (
            "a peaceful everyday scene",
            "people talking or smiling",
            "a landscape, a building or an object",
            "food with red sauce",
        )),
    ),
    unsafe=("graphic", "violence"),
    threshold=0.6,
)
