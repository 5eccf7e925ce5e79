import os, random
from PIL import Image
random.seed(0)
for label, base in {"red": (200, 40, 40), "blue": (40, 60, 200)}.items():
    os.makedirs(f"colours/{label}", exist_ok=True)
    for i in range(50):
        colour = tuple(min(255, max(0, c + random.randint(-50, 50))) for c in base)
        Image.new("RGB", (random.randint(40, 400), random.randint(40, 400)), colour).save(f"colours/{label}/{i}.png")
