"""Policies: conditions over classifier results and faces, and how their actions meet the banks'."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from banks.index import Match
from classifiers.policies import Policy, evaluate
from classifiers.results import Classification, ClassifierResult, Face, PolicyHit
from deployments.settings import AppArgs, RuntimeConfig

MINOR_AND_NUDITY = {"name": "minor_and_nudity", "action": "block",
                    "when": [{"face": "minor"}, {"classifier": "nudity"}]}


def result(name: str, flagged: bool, unsafe: float = 0.0, **scores: float) -> ClassifierResult:
    return ClassifierResult(name, "exclusive", scores or {"safe": 1 - unsafe, "unsafe": unsafe}, "safe", 0.5,
                            ("unsafe",), unsafe, 0.5, flagged)


def face(**attributes: float) -> Face:
    return Face((0, 0, 10, 10), 0.9, {"minor": 0.1, "smiling": 0.1, "glasses": 0.1, "facial_hair": 0.1, **attributes})


def policies(*specs: dict) -> tuple[Policy, ...]:
    return RuntimeConfig.model_validate({"policies": list(specs)}).policies


def test_minor_and_nudity_needs_both():
    rules = policies(MINOR_AND_NUDITY)
    nude = [result("nudity", True, 0.9)]
    assert evaluate(rules, nude, [face(minor=0.8)]) == (PolicyHit("minor_and_nudity", "block"),)
    assert evaluate(rules, nude, [face(minor=0.2)]) == ()
    assert evaluate(rules, [result("nudity", False, 0.1)], [face(minor=0.8)]) == ()
    assert evaluate(rules, nude, []) == ()
    assert evaluate(rules, nude, None) == ()  # faces not looked for: a face condition cannot hold
    assert evaluate(rules, [], [face(minor=0.8)]) == ()  # nudity not run


def test_condition_kinds():
    rules = policies(
        {"name": "crowd", "action": "review", "when": [{"min_faces": 3}]},
        {"name": "two_minors", "action": "review", "when": [{"face": "minor", "min_score": 0.7, "min_faces": 2}]},
        {"name": "explicit_label", "action": "block",
         "when": [{"classifier": "nudity", "label": "explicit", "min_score": 0.3}]},
        {"name": "unsafe_score", "action": "review", "when": [{"classifier": "gore", "min_score": 0.2}]},
    )
    hits = evaluate(rules, [result("nudity", False, explicit=0.35, safe=0.65), result("gore", False, 0.25)],
                    [face(minor=0.75), face(minor=0.8), face()])
    assert [h.name for h in hits] == ["crowd", "two_minors", "explicit_label", "unsafe_score"]
    assert evaluate(rules, [result("nudity", False, explicit=0.2, safe=0.8), result("gore", False, 0.1)],
                    [face(minor=0.75), face()]) == ()


@pytest.mark.parametrize("bad, message", [
    ({"name": "p", "action": "block", "when": [{"face": "kid"}]}, "unknown face attribute"),
    ({"name": "p", "action": "block", "when": [{"classifier": "Not A Name"}]}, "unknown classifier"),
    ({"name": "p", "action": "block", "when": [{"classifier": "nudity", "label": "explict"}]}, "has no label"),
    ({"name": "p", "action": "block", "when": [{"classifier": "face_attributes"}]}, "flags nothing"),
    ({"name": "p", "action": "block", "when": [{"classifier": "face_attributes", "min_score": 0.5}]},
     "flags nothing"),
    ({"name": "p", "action": "block", "when": [{}]}, "names one of"),
    ({"name": "p", "action": "block", "when": [{"classifier": "nudity", "face": "minor"}]}, "names one of"),
    ({"name": "p", "action": "block", "when": [{"classifier": "nudity", "min_faces": 2}]}, "min_faces"),
    ({"name": "p", "action": "block", "when": [{"face": "minor", "label": "explicit"}]}, "label"),
    ({"name": "p", "action": "flag", "when": [{"min_faces": 2}]}, "block"),
    ({"name": "p", "action": "block", "when": []}, "at least 1"),
    ({"name": "Bad name", "action": "block", "when": [{"min_faces": 2}]}, "pattern"),
])
def test_bad_policies_are_refused_at_start(bad, message):
    with pytest.raises(ValidationError, match=message):
        AppArgs.model_validate({"policies": [bad]})


def test_duplicate_policy_names_are_refused():
    with pytest.raises(ValidationError, match="duplicate"):
        AppArgs.model_validate({"policies": [MINOR_AND_NUDITY, MINOR_AND_NUDITY]})


def test_trained_head_names_are_accepted():
    assert policies({"name": "p", "action": "review", "when": [{"classifier": "weapons"}]})


def classification(flagged: bool, banks: tuple[str, ...] = (), hits: tuple[str, ...] = ()) -> Classification:
    matches = tuple(Match(bank=f"b{i}", action=a, kind="sha256", distance=0, entry_id=None, pk=i)
                    for i, a in enumerate(banks))
    return Classification("m", (result("nudity", flagged),), 1.0, 1.0, matches=matches,
                          policies=tuple(PolicyHit(f"p{i}", a) for i, a in enumerate(hits)))


@pytest.mark.parametrize("flagged, banks, hits, action, decision", [
    (False, (), ("block",), "block", True),  # a block policy flags
    (False, (), ("review",), "review", False),  # review asks for a person, flags nothing
    (True, (), ("review",), "review", True),
    (True, ("allow",), (), "allow", False),  # a person allowed an image like this one
    (False, ("allow",), ("block",), "block", True),  # ... but a near match does not lift a policy's block
    (False, ("allow",), ("review",), "allow", False),
    (True, ("block",), ("review",), "block", True),
    (False, ("review",), ("block",), "block", True),
    (False, ("allow", "block"), (), "block", True),
])
def test_policy_actions_meet_bank_actions(flagged, banks, hits, action, decision):
    c = classification(flagged, banks, hits)
    assert (c.action, c.flagged) == (action, decision)


def test_policies_change_through_user_config_as_the_replica_lays_it_over_args():
    """``ClipModel.reconfigure`` validates ``{**args, **user_config}``: policies round-trip."""
    base = AppArgs.model_validate({"policies": [MINOR_AND_NUDITY]}).runtime_config()
    changed = RuntimeConfig.model_validate({**base.model_dump(), "policies": [
        {"name": "crowd", "action": "review", "when": [{"min_faces": 5}]}]})
    assert [p.name for p in changed.policies] == ["crowd"]
    assert RuntimeConfig.model_validate(base.model_dump()).policies == base.policies


@pytest.mark.parametrize("faces, policy, message", [
    ({"enabled": False}, {"name": "p", "action": "block", "when": [{"min_faces": 1}]}, "faces.enabled is false"),
    ({"attributes": False}, MINOR_AND_NUDITY, "faces.attributes is false"),
    ({"max_faces": 4}, {"name": "p", "action": "review", "when": [{"min_faces": 5}]}, "faces.max_faces"),
])
def test_policies_the_faces_settings_would_silence_are_refused(faces, policy, message):
    with pytest.raises(ValidationError, match=message):
        AppArgs.model_validate({"faces": faces, "policies": [policy]})


def test_boxes_only_allows_counting_faces():
    args = AppArgs.model_validate({"faces": {"attributes": False},
                                   "policies": [{"name": "p", "action": "review", "when": [{"min_faces": 3}]}]})
    assert args.runtime_config().policies[0].name == "p"


def test_needs_lists_what_policies_run_on_every_image():
    from classifiers.policies import needs

    wanted = needs(policies(MINOR_AND_NUDITY, {"name": "c", "action": "review", "when": [{"min_faces": 3}]}))
    assert wanted.classifiers == {"nudity"} and wanted.faces and wanted.attributes
    assert not needs(policies({"name": "g", "action": "review", "when": [{"classifier": "gore"}]})).faces
