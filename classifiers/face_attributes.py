"""Built-in classifier: faces and face attributes, each scored against its own negation."""

from classifiers.labels import Label, LabelSet

FACE_ATTRIBUTES = LabelSet(
    name="face_attributes",
    kind="attributes",
    description="Whether faces are present and attributes of them; describes, flags nothing.",
    labels=(
        Label("face", ("a person's face", "a portrait of a person"),
              ("a scene with no people", "an object with no face")),
        Label("several_faces", ("a group of people", "several people's faces"),
              ("a single person alone", "one person's face")),
        Label("smiling", ("a smiling person", "a person laughing"),
              ("a person with a neutral expression", "a person who is not smiling")),
        Label("glasses", ("a person wearing glasses", "a person wearing sunglasses"),
              ("a person without glasses",)),
        Label("facial_hair", ("a man with a beard", "a man with a mustache"),
              ("a clean-shaven face",)),
        Label("child", ("a child", "a young kid"),
              ("an adult", "a grown-up person")),
    ),
    unsafe=(),
    threshold=0.5,
)

# Scored on each detected face's crop (``faces`` in a response), not on the whole image:
# the crop shows one person's face, so the prompts describe a face, not a scene.
FACE_CROP_ATTRIBUTES = LabelSet(
    name="face",
    kind="attributes",
    description="Attributes of one detected face, scored on its crop.",
    labels=(
        Label("minor", ("a child's face", "the face of a teenager", "a young kid's face"),
              ("an adult's face", "the face of a grown-up person")),
        Label("smiling", ("a smiling face", "a person laughing"),
              ("a face with a neutral expression", "a face that is not smiling")),
        Label("glasses", ("a face wearing glasses", "a face wearing sunglasses"),
              ("a face without glasses",)),
        Label("facial_hair", ("a face with a beard", "a face with a mustache"),
              ("a clean-shaven face",)),
    ),
    unsafe=(),
    threshold=0.5,
)
