"""The design this project replaces: one FastAPI/uvicorn process, the `transformers` processor
per request and a batch-1 fp32 forward pass (``uvicorn bench.naive_server:app``).

The checkpoint comes from NAIVE_MODEL; threads from NAIVE_THREADS. Text embeddings for the
nudity labels are computed once, so the comparison is about the image path only.
"""

import io
import os

import torch
from fastapi import FastAPI, File, UploadFile
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

torch.set_num_threads(int(os.environ.get("NAIVE_THREADS", "2")))
MODEL_DIR = os.environ["NAIVE_MODEL"]
model = CLIPModel.from_pretrained(MODEL_DIR).eval()
processor = AutoImageProcessor.from_pretrained(MODEL_DIR)
tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
LABELS = ["explicit nudity", "a person in lingerie", "a fully clothed person"]
with torch.no_grad():
    text = model.get_text_features(**tokenizer(LABELS, padding=True, return_tensors="pt")).pooler_output
    text = text / text.norm(dim=-1, keepdim=True)

app = FastAPI()


@app.post("/classify")
def classify(file: UploadFile = File(...)) -> dict:
    image = Image.open(io.BytesIO(file.file.read())).convert("RGB")
    inputs = processor(images=image, return_tensors="pt")
    with torch.no_grad():
        emb = model.get_image_features(**inputs).pooler_output
    emb = emb / emb.norm(dim=-1, keepdim=True)
    probs = (model.logit_scale.exp() * emb @ text.T).softmax(dim=-1)[0]
    return {label: float(p) for label, p in zip(LABELS, probs)}
