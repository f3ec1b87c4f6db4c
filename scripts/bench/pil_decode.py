"""Pillow's side of the decode benchmark: open, convert to RGB, centre-crop-resize to a square
(ImageOps.fit, Lanczos) - what torchlearn's presizing does with sharp. Prints images/s as JSON."""
import json, sys, time
from PIL import Image, ImageOps

size, paths = int(sys.argv[1]), sys.argv[2:]
t = time.perf_counter()
ok = 0
for p in paths:
    try:
        im = Image.open(p).convert('RGB')
        ImageOps.fit(im, (size, size), Image.LANCZOS).tobytes()
        ok += 1
    except Exception:
        pass
dt = time.perf_counter() - t
print(json.dumps({'impl': 'pillow', 'images': ok, 'seconds': dt, 'images_per_s': ok / dt}))
