"""Random-weight CLIP checkpoints of the real `transformers` architecture, for tests and speed.

``tiny``: a few layers, 32-pixel images (tests). ``base``: the full ViT-B/32 shape of
``openai/clip-vit-base-patch32`` (benchmarks: speed does not depend on weight values). Both
come with a byte-level BPE tokenizer of CLIP's own class (vocabulary and merges learned here
from a small corpus, since OpenAI's cannot be downloaded everywhere) and a
``preprocessor_config.json`` written by CLIP's own image processor, and are saved with
``save_pretrained``, so the service loads them through the code it uses for real weights.
Scores from these checkpoints are meaningless. ``python -m classifiers.random_checkpoint DIR``.
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


def build_random_clip(path: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a random-weight CLIP checkpoint (model, tokenizer, processor) to ``path``."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

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
            text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, **special),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=2, image_size=image_size, patch_size=8),
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
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    processor.save_pretrained(path)
    return path


if __name__ == "__main__":
    import sys

    target = sys.argv[1] if len(sys.argv) > 1 else "tiny-clip"
    print(build_random_clip(target, size=sys.argv[2] if len(sys.argv) > 2 else "tiny"))
