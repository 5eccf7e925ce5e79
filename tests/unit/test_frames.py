import io
import time

import numpy as np
from PIL import Image

from classifiers.heads import Head
from classifiers.labels import Label, LabelSet
from classifiers.preprocess import ImageSpec, decode_frames
from classifiers.scoring import LogitRule, score

SPEC = ImageSpec(size=32)


def gif(colours) -> bytes:
    frames = [Image.new("RGB", (48, 48), c) for c in colours]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=10)
    return buf.getvalue()


def test_first_frame_only_by_default():
    frames = decode_frames(gif([(255, 0, 0), (0, 0, 255)]), SPEC)
    assert frames.shape == (1, 32, 32, 3) and frames[0, ..., 0].mean() > 200


def test_evenly_spaced_frames_when_asked():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    frames = decode_frames(gif(colours), SPEC, max_frames=3)
    means = frames.reshape(3, -1, 3).mean(axis=1)
    assert np.allclose(means[0], colours[0], atol=10)   # frame 0
    assert np.allclose(means[1], colours[2], atol=10)   # frame 2
    assert np.allclose(means[2], colours[4], atol=10)   # frame 4


def test_thousands_of_frames_are_never_all_decoded():
    data = gif([(i % 256, 0, 0) for i in range(3000)])
    start = time.perf_counter()
    frames = decode_frames(data, SPEC, max_frames=4)
    assert frames.shape[0] == 4
    assert time.perf_counter() - start < 2.0
    # sampled from the bounded scan (first 100 frames), evenly
    assert frames[-1, ..., 0].mean() < 110


def test_each_label_takes_its_worst_frame():
    label_set = LabelSet(name="n", kind="exclusive", labels=(Label("bad", ("b",)), Label("ok", ("o",))),
                         unsafe=("bad",), threshold=0.6)
    head = Head(label_set, np.eye(2, dtype=np.float32))
    frames = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)  # safe frame, then unsafe frame
    result = score(head, frames, LogitRule(10.0))
    alone = score(head, frames[0], LogitRule(10.0))
    assert not alone.flagged and result.flagged
    assert result.scores["bad"] == score(head, frames[1], LogitRule(10.0)).scores["bad"]
