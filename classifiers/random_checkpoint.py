"""Random-weight checkpoints of the real `transformers` architectures, for tests and speed.

``tiny``: a few layers, 32-pixel images (tests). ``base``: the full shape of
``openai/clip-vit-base-patch32``, ``google/siglip-base-patch16-224`` or
``google/siglip2-base-patch16-naflex`` (benchmarks: speed does not depend on weight values).
Each comes with its family's own tokenizer class, its vocabulary learned here from a small
corpus since the real ones cannot be downloaded everywhere: CLIP's byte-level BPE, SigLIP's
SentencePiece model, SigLIP 2's Gemma BPE. Everything is saved with ``save_pretrained``, in
either layout transformers reads: ``processor`` (``processor_config.json``, what
``CLIPProcessor.save_pretrained`` writes in transformers 5) or ``preprocessor`` (a separate
``preprocessor_config.json``, as hub checkpoints have it). So the service loads them through
the code it uses for real weights. Scores from these checkpoints are meaningless.
``python -m classifiers.random_checkpoint DIR [tiny|base] [clip|siglip|siglip2|siglip2-naflex]``.
"""

from __future__ import annotations

import collections
from pathlib import Path

CORPUS = (
    "a photo of a person with explicit nudity a suggestive photo a fully clothed person "
    "an ordinary everyday scene graphic gore blood violence a wound a hate symbol an obscene "
    "gesture offensive text a face smiling glasses facial hair a child an adult cat dog car "
    "red green blue image picture of the an with no and or not showing people"
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte to printable-character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def learn_bpe(corpus: str, num_merges: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Learn CLIP-style BPE (words end in ``</w>``) and return (vocab, merges)."""
    base = list(_bytes_to_unicode().values())
    vocab_list = base + [c + "</w>" for c in base]
    words = collections.Counter(corpus.lower().split())
    splits = {w: list(w[:-1]) + [w[-1] + "</w>"] for w in words}
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: collections.Counter[tuple[str, str]] = collections.Counter()
        for word, count in words.items():
            symbols = splits[word]
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += count
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        merges.append((a, b))
        vocab_list.append(a + b)
        for word, symbols in splits.items():
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == a and symbols[i + 1] == b:
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            splits[word] = merged
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab_list)}, merges


LAYOUTS = ("processor", "preprocessor")
FAMILIES = ("clip", "siglip", "siglip2", "siglip2-naflex")
TINY_TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)


def _save(path: Path, model, tokenizer, image_processor, processor_cls, layout: str) -> Path:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    model.save_pretrained(path)
    if layout == "processor":  # processor_config.json holds the image processor's settings
        processor_cls(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    else:
        tokenizer.save_pretrained(path)
        image_processor.save_pretrained(path)  # preprocessor_config.json
    return path


def build_random_clip(path: str | Path, size: str = "tiny", seed: int = 0,
                      layout: str = "processor") -> Path:
    """Write a random-weight CLIP checkpoint (model, tokenizer, processor) to ``path``."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer

    path = Path(path)
    vocab, merges = learn_bpe(CORPUS, num_merges=300)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    special = dict(
        vocab_size=len(vocab), max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"],
    )
    if size == "tiny":
        image_size = 32
        config = CLIPConfig(
            text_config=dict(TINY_TOWER, **special),
            vision_config=dict(TINY_TOWER, image_size=image_size, patch_size=8),
            projection_dim=16,
        )
    elif size == "base":  # openai/clip-vit-base-patch32's shape (CLIPConfig's defaults)
        image_size = 224
        config = CLIPConfig(text_config=special, vision_config=dict(image_size=224, patch_size=32))
    else:
        raise ValueError(f"size must be 'tiny' or 'base', not {size!r}")
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return _save(path, model, tokenizer, processor, CLIPProcessor, layout)


def sentencepiece_tokenizer(folder: Path):
    """SigLIP's tokenizer class on a SentencePiece model learned from ``CORPUS`` (ids as in
    SigLIP's: 0 pad, 1 ``</s>``, which SigLIP also pads with, 2 unk)."""
    import io

    import sentencepiece as spm
    from transformers import SiglipTokenizer

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS.split()), model_writer=model, vocab_size=120,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>",
        eos_piece="</s>", unk_piece="<unk>", hard_vocab_limit=False, minloglevel=2,
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spiece.model").write_bytes(model.getvalue())
    return SiglipTokenizer(vocab_file=str(folder / "spiece.model"))


def gemma_tokenizer():
    """SigLIP 2's tokenizer class (Gemma's byte-fallback BPE), merges learned from ``CORPUS``
    by the tokenizers library's own trainer; right padding, as SigLIP 2 was trained."""
    import json

    from tokenizers import Tokenizer, models, normalizers, trainers
    from transformers import GemmaTokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    learner = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    learner.normalizer = normalizers.Replace(" ", "▁")
    learner.train_from_iterator([CORPUS], trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, show_progress=False))
    learned = json.loads(learner.to_str())["model"]
    vocab = dict(learned["vocab"])
    for byte in range(256):  # what byte fallback spells unknown characters with
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    return GemmaTokenizer(vocab=vocab, merges=merges, padding_side="right")


def _siglip_init(model):
    """The logit scale and bias SigLIP starts training from (log 10 and -10, the paper's
    values), not transformers' random draw: scores then sit where a real SigLIP's do for
    unrelated text (near 0), not around 0.5."""
    import math

    import torch

    with torch.no_grad():
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-10.0)
    return model


def build_random_siglip(path: str | Path, size: str = "tiny", seed: int = 0,
                        layout: str = "processor", version: str = "siglip") -> Path:
    """Write a random-weight SigLIP checkpoint to ``path``. ``version``: ``siglip`` (SigLIP,
    SentencePiece tokenizer), ``siglip2`` (fixed-resolution SigLIP 2: SigLIP's architecture
    with Gemma's tokenizer) or ``siglip2-naflex`` (Siglip2Model, aspect-preserving patches)."""
    import torch
    from transformers import (
        Siglip2Config, Siglip2ImageProcessorPil, Siglip2Model, Siglip2Processor, SiglipConfig,
        SiglipImageProcessorPil, SiglipModel, SiglipProcessor,
    )

    path = Path(path)
    if version not in FAMILIES[1:]:
        raise ValueError(f"version must be one of {FAMILIES[1:]}, not {version!r}")
    tokenizer = sentencepiece_tokenizer(path) if version == "siglip" else gemma_tokenizer()
    text = dict(vocab_size=len(tokenizer), max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if size not in ("tiny", "base"):
        raise ValueError(f"size must be 'tiny' or 'base', not {size!r}")
    tiny = TINY_TOWER if size == "tiny" else {}
    torch.manual_seed(seed)
    if version == "siglip2-naflex":
        patch, grid = (8, 16) if size == "tiny" else (16, 256)
        config = Siglip2Config(text_config=dict(tiny, **text),
                               vision_config=dict(tiny, patch_size=patch, num_patches=grid))
        model = _siglip_init(Siglip2Model(config).eval())
        processor = Siglip2ImageProcessorPil(patch_size=patch, max_num_patches=4 * grid if size == "tiny" else grid)
        return _save(path, model, tokenizer, processor, Siglip2Processor, layout)
    image_size, patch = (32, 8) if size == "tiny" else (224, 16)
    config = SiglipConfig(text_config=dict(tiny, **text),
                          vision_config=dict(tiny, image_size=image_size, patch_size=patch))
    model = _siglip_init(SiglipModel(config).eval())
    processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
    return _save(path, model, tokenizer, processor, SiglipProcessor, layout)


def build_random_checkpoint(path: str | Path, size: str = "tiny", family: str = "clip", seed: int = 0,
                            layout: str = "processor") -> Path:
    """A random checkpoint of any family in ``FAMILIES``."""
    if family == "clip":
        return build_random_clip(path, size, seed, layout)
    return build_random_siglip(path, size, seed, layout, version=family)


if __name__ == "__main__":
    import sys

    target = sys.argv[1] if len(sys.argv) > 1 else "tiny-clip"
    print(build_random_checkpoint(target, size=sys.argv[2] if len(sys.argv) > 2 else "tiny",
                                  family=sys.argv[3] if len(sys.argv) > 3 else "clip"))
