"""The report of a run: ``report.json`` (every number) and ``report.md`` (for people)."""

from __future__ import annotations

import json
from pathlib import Path


def _f(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _per_class(summary: dict) -> list[str]:
    rows = [[f"`{name}`", _f(c["precision"]), _f(c["recall"]), _f(c["f1"]), c["support"]]
            for name, c in summary["per_class"].items()]
    macro = summary["macro"]
    rows.append(["**macro**", _f(macro["precision"]), _f(macro["recall"]), _f(macro["f1"]), summary["samples"]])
    return _table(["label", "precision", "recall", "F1", "images"], rows)


def _confusion(summary: dict) -> list[str]:
    names = summary["labels"]
    rows = [[f"**{name}**", *counts] for name, counts in zip(names, summary["confusion_matrix"])]
    return _table(["true \\ predicted", *names], rows)


def _binary(binary: dict) -> list[str]:
    lines = [(f"Unsafe = {', '.join(f'`{u}`' for u in binary['unsafe_labels'])} "
              f"({binary['positives']} unsafe, {binary['negatives']} safe images); score = `unsafe_score`, "
              "flagged when `unsafe_score >= threshold`."), "",
             f"- ROC-AUC: **{_f(binary['roc_auc'])}**, average precision (PR-AUC): **{_f(binary['average_precision'])}**"]
    return lines + [""] + _operating_points(binary)


def _operating_points(binary: dict) -> list[str]:
    rows = [["threshold in force", binary["at_current_threshold"]]]
    for key, what in (("for_target_precision", "precision"), ("for_target_recall", "recall")):
        if key in binary:
            target = binary[key]
            rows.append([f"{what} ≥ {target['target']:g}", target["result"]])
    table = []
    for name, point in rows:
        if point is None:
            table.append([name, "none reaches it", "", "", "", ""])
        else:
            table.append([name, f"{point['threshold']:.6g}", _f(point["precision"]), _f(point["recall"]),
                          _f(point["false_positive_rate"]), point["flagged"]])
    return _table(["operating point", "threshold", "precision", "recall", "false positive rate", "flagged"], table)


def _calibration(c: dict, applied: float) -> list[str]:
    out = ["## Calibration", "",
           (f"Temperature **{c['temperature']:.4g}** fitted on {c['fit_samples']} of {c['samples']} images "
            f"(a fixed 70 % of each label); ECE and NLL below are measured on the other "
            f"{c['holdout_samples']} images, which the fit did not see. Written to `{c['file']}`; set "
            "`calibration:` in serve_config.yaml to use it."), "",
           *_table(["held-out images", "before", "after"],
                   [["top-label ECE", _f(c["ece_before"], 4), _f(c["ece_after"], 4)],
                    ["NLL", _f(c["nll_before"], 4), _f(c["nll_after"], 4)]]),
           "", f"![reliability]({c['plot']})", ""]
    if c.get("binary"):
        out += ["### Thresholds for calibrated scores", "",
                (f"Once the service loads this file it scores with T = {c['temperature']:.4g}, so its "
                 f"`unsafe_score`s are these, not the ones above (scored at T = {applied:g}): choose the "
                 f"threshold from this table. ROC-AUC {_f(c['binary']['roc_auc'])}, average precision "
                 f"{_f(c['binary']['average_precision'])}; all {c['samples']} images."), "",
                *_operating_points(c["binary"]), ""]
    worse = [name for name, key in (("ECE", "ece"), ("NLL", "nll")) if c[f"{key}_after"] > c[f"{key}_before"]]
    if worse:
        out += [(f"**Held-out {' and '.join(worse)} got worse with this temperature**: it does not carry "
                 "over well beyond the images it was fitted on. Calibrate on more images before deploying it."), ""]
    out += [("Fitted on each image's first frame: with `max_frames` > 1 the service applies T to every "
             "frame and keeps each label's maximum, so scores of animated images may be less well calibrated."), ""]
    return out


def _training(report: dict) -> list[str]:
    """What a training run did and what its head scores on the images it did not see."""
    t = report["training"]
    m = t["metrics"]
    rule = t["threshold_rule"]
    if rule["rule"] == "default":
        how = "the default (no --target-precision/--target-recall)"
    elif rule.get("unreachable"):
        how = (f"the default: no threshold reached {rule['rule'].removeprefix('target_')} "
               f"{rule['target']:g} on the training images")
    else:
        how = (f"the lowest reaching {rule['rule'].removeprefix('target_')} {rule['target']:g} on the "
               "training images' out-of-fold scores")
    out = [f"- Head `{t['name']}` ({t['kind']}, version `{t['version']}`) written to `{t['head_file']}`; "
           f"started from {'`' + t['init'] + '`' if t['init'] else 'zero weights'}, L2 {t['l2']:g} "
           "(chosen by out-of-fold log-loss).",
           f"- Trained on {t['train_images']} images, measured on {t['heldout_images']} held-out images "
           "(a fixed 20 % of each label, never seen in training); labels: "
           + ", ".join(f"`{n}` ({c})" for n, c in t["label_counts"].items()) + ".",
           f"- Held-out accuracy **{_f(m.get('accuracy'))}** (zero-shot on the same images: "
           f"{_f(m.get('zero_shot_accuracy'))}).",
           f"- Flag threshold **{rule['threshold']:.6g}**: {how}."]
    if m.get("at_threshold"):
        a = m["at_threshold"]
        out.append(f"- Held out at that threshold: precision {_f(a['precision'])}, recall {_f(a['recall'])}, "
                   f"false positive rate {_f(a['false_positive_rate'])}; ROC-AUC {_f(m.get('roc_auc'))}.")
    return out


def render_training(report: dict) -> list[str]:
    """report.md of an attribute head: per-label and unsafe-view numbers on held-out images."""
    m = report["training"]["metrics"]
    out = [f"# Training: `{report['classifier']}` on `{report['dataset']}`", "", *_training(report), "",
           "## Per label (held out)", "",
           *_table(["label", "ROC-AUC", "average precision", "zero-shot ROC-AUC"],
                   [[f"`{n}`", _f(v["roc_auc"]), _f(v["average_precision"]), _f(v["zero_shot_roc_auc"])]
                    for n, v in m["per_label"].items()]), ""]
    for name in ("pr_curve", "score_histogram"):
        if name in report["plots"]:
            out += [f"![{name}]({report['plots'][name]})", ""]
    if report["failed"]:
        out += [f"## Images not used ({len(report['failed'])})", ""]
        out += [f"- `{f['source']}`: {f['error']}" for f in report["failed"][:50]]
    return out


def render_markdown(report: dict) -> str:
    base = report["variants"]["baseline"]
    where = (f"in-process, model `{report['model']}`" if report["mode"] == "in-process"
             else f"server {report['server']}, model `{report.get('model')}`")
    cache = report["cache"]
    cache_line = (f"{cache['images_encoded']} images encoded, {cache['images_from_cache']} from the cache"
                  if report["mode"] == "in-process"
                  else f"{cache['requests_sent']} images sent to the server, {cache['answers_from_cache']} answers from the cache")
    training = report.get("training")
    out = [f"# {'Training' if training else 'Evaluation'}: `{report['classifier']}` on `{report['dataset']}`", ""]
    if training:
        out += [*_training(report), "", "The numbers below are the held-out images, scored by the saved head "
                "through the service's own scoring (`baseline`) and zero-shot (`zero-shot`).", ""]
    out += [f"- Scored {report['scored']} of {report['samples']} images ({where}); {cache_line}.",
           "- Labels: " + ", ".join(f"`{n}` ({c})" for n, c in report["label_counts"].items()) + ".",
           (f"- Accuracy (top label): **{_f(base['accuracy'])}**; macro F1: **{_f(base['macro']['f1'])}**; "
            f"top-label ECE: {_f(base['top_label_ece'])}.")]
    if report.get("temperature_applied", 1.0) != 1.0:
        out.append(f"- Calibration temperature applied: {report['temperature_applied']:g}.")
    out += ["", "## Per label", "", *_per_class(base), "", "## Confusion matrix", "",
            *_confusion(base), "", f"![confusion matrix]({report['plots']['confusion_matrix']})", ""]
    if "binary" in base:
        out += ["## Moderation view: unsafe vs safe", "", *_binary(base["binary"]), ""]
        if (report.get("calibration") or {}).get("binary"):
            out += [(f"These are scores at T = {report.get('temperature_applied', 1.0):g}; for the thresholds "
                     "that hold once the calibration fitted below is deployed, see "
                     "[Thresholds for calibrated scores](#thresholds-for-calibrated-scores)."), ""]
        if "pr_curve" in report["plots"]:
            out += [f"![PR curve]({report['plots']['pr_curve']})", ""]
    out += [f"![score histogram]({report['plots']['score_histogram']})", ""]
    if len(report["variants"]) > 1:
        rows = []
        for name, v in sorted(report["variants"].items(), key=lambda kv: -kv[1]["macro"]["f1"]):
            binary = v.get("binary") or {}
            rows.append([f"`{name}`" + (" **(wins)**" if name == report["winner"] else ""),
                         _f(v["macro"]["f1"]), _f(v["accuracy"]), _f(binary.get("roc_auc")),
                         _f(binary.get("average_precision")), len(v["templates"])])
        out += ["## Trained head vs zero-shot" if training else "## Prompt variants", "",
                "Same images, same cached embeddings; ranked by macro F1, then ROC-AUC.", "", *_table(["variant", "macro F1", "accuracy", "ROC-AUC", "AP", "templates"], rows), ""]
    if report.get("calibration"):
        out += _calibration(report["calibration"], report.get("temperature_applied", 1.0))
    if report["failed"]:
        out += [f"## Images not scored ({len(report['failed'])})", ""]
        out += [f"- `{f['source']}`: {f['error']}" for f in report["failed"][:50]]
        if len(report["failed"]) > 50:
            out.append(f"- ... and {len(report['failed']) - 50} more (see report.json)")
        out.append("")
    return "\n".join(out)


def write_report(report: dict, out_dir: Path) -> None:
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")
