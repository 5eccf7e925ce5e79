import pytest

from classifiers.errors import ModerationError
from classifiers.labels import Label, LabelSet, custom_label_set
from classifiers.registry import BUILTIN_CLASSIFIERS, select_builtins


def test_builtins_are_the_four_documented_classifiers():
    assert list(BUILTIN_CLASSIFIERS) == ["nudity", "gore", "offensive", "face_attributes"]


@pytest.mark.parametrize("label_set", BUILTIN_CLASSIFIERS.values(), ids=lambda s: s.name)
def test_every_builtin_is_prompt_ensembled_with_a_neutral_label(label_set):
    assert len(label_set.templates) >= 3
    assert all(len(label.prompts) >= 2 for label in label_set.labels)
    if label_set.kind == "exclusive":
        assert "none" in label_set.label_names and "none" not in label_set.unsafe


def test_face_attributes_are_independent_and_flag_nothing():
    faces = BUILTIN_CLASSIFIERS["face_attributes"]
    assert faces.kind == "attributes"
    assert faces.unsafe == ()
    assert {"face", "several_faces", "smiling", "glasses", "facial_hair", "child"} <= set(
        faces.label_names
    )


@pytest.mark.parametrize(
    "kwargs, problem",
    [
        (dict(kind="exclusive", labels=(Label("a", ("a",)),)), "at least two labels"),
        (dict(kind="exclusive", labels=(Label("a", ("a",)), Label("b", ("b",)), Label("c", ("c",))),
              unsafe=("a", "a")), "unsafe labels must be unique"),
        (dict(kind="exclusive", labels=(Label("a", ("a",)), Label("a", ("b",)))), "unique"),
        (dict(kind="exclusive", labels=(Label("a", ("a",)), Label("b", ("b",))), unsafe=("c",)),
         "not labels"),
        (dict(kind="exclusive", labels=(Label("a", ("a",)), Label("b", ("b",))),
              unsafe=("a", "b")), "safe label"),
        (dict(kind="attributes", labels=(Label("a", ("a",)),)), "negative prompts"),
        (dict(kind="exclusive", labels=(Label("a", ("a",)), Label("b", ("b",))), threshold=0),
         "threshold"),
        (dict(kind="exclusive", labels=(Label("a", ("a",)), Label("b", ("b",))),
              templates=("no placeholder",)), "template"),
    ],
)
def test_label_set_validation_names_the_problem(kwargs, problem):
    with pytest.raises(ValueError, match=problem):
        LabelSet(name="x", **kwargs)


def test_custom_label_set_normalises_whitespace_and_keeps_order():
    s = custom_label_set(["  a   cat ", "a dog"], unsafe=["a dog"], threshold=0.7)
    assert s.label_names == ("a cat", "a dog")
    assert s.kind == "exclusive" and s.unsafe == ("a dog",) and s.threshold == 0.7


def test_custom_unsafe_labels_are_normalised_and_counted_once():
    s = custom_label_set(["a  cat", "a dog", "a car"], unsafe=["a cat ", "a  cat"])
    assert s.unsafe == ("a cat",)


@pytest.mark.parametrize(
    "labels, unsafe",
    [
        (["only one"], []),
        ([f"l{i}" for i in range(101)], []),
        (["a", "a"], []),
        (["a", ""], []),
        (["a", "x" * 201], []),
        (["a", "b"], ["c"]),
        (["a", "b"], ["a", "b"]),
    ],
)
def test_bad_custom_labels_are_invalid_requests(labels, unsafe):
    with pytest.raises(ModerationError) as info:
        custom_label_set(labels, unsafe)
    assert info.value.code == "invalid_request" and info.value.status == 400


def test_select_builtins_defaults_to_all_and_rejects_unknown():
    assert select_builtins(None) == tuple(BUILTIN_CLASSIFIERS)
    assert select_builtins(["gore", "nudity", "gore"]) == ("gore", "nudity")
    assert select_builtins([]) == ()
    with pytest.raises(ModerationError) as info:
        select_builtins(["gore", "violence"])
    assert info.value.code == "unknown_classifier" and "violence" in info.value.message
